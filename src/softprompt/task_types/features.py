"""Prompts for a frozen model used as a feature extractor (`AutoModel`): task_type FEATURE_EXTRACTION.

The output's hidden states are aligned with the input tokens, [B, L, H]: the virtual tokens' states are
dropped (PEFT returns them in front, [B, P+L, H], so a row's first state there is a virtual token's). A
decoder takes the prompt as a causal LM does (run once, shared); a bidirectional encoder sees prompt and
text together: virtual tokens before the text, or per-layer prefixes through the attention hook. A model
with a pooler (BERT) pools its first position, as the model itself does: with prompt or p-tuning that is the
first virtual token (as in PEFT), with prefix tuning the text's [CLS].
"""

from __future__ import annotations

import torch
from transformers import AutoModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .. import registry
from ..core import BASE_ADAPTER, AutoPeftModel, PeftModel


class PeftModelForFeatureExtraction(PeftModel):
    """A frozen backbone and one or more prompts; hidden states [B, L, H] for the input tokens."""

    handles_encoders = True

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        adapter_names: list[str | None] | None = None,
        task_ids=None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        base = self.base_model
        if not self.shape.bidirectional:
            prefix, _ = self.batch_prefix(batch, adapter_names, task_ids=task_ids)
            output = self.run_decoder(
                prefix, adapter_names, task_ids, input_ids, inputs_embeds, attention_mask, position_ids, **kwargs
            )
            return aligned(output, length)
        names = set(adapter_names or [None if self.adapters_disabled else self.active_adapter])
        if len(names) > 1:
            raise ValueError(
                f"One batch of an encoder takes one adapter: group the rows by adapter, got {sorted(map(str, names))}."
            )
        name = None if self.adapters_disabled else next(iter(names))
        if name in (None, BASE_ADAPTER):
            return aligned(
                base(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs), length
            )
        return aligned(
            self.run_encoder(base, name, task_ids, input_ids, inputs_embeds, attention_mask, **kwargs), length
        )


def aligned(output, length: int) -> BaseModelOutputWithPooling:
    """The model's output with every hidden state cut to the last `length` positions (the input's)."""
    hidden_states = output.get("hidden_states")
    return BaseModelOutputWithPooling(
        last_hidden_state=output.last_hidden_state[:, -length:],
        pooler_output=output.get("pooler_output"),
        hidden_states=None if hidden_states is None else tuple(h[:, -length:] for h in hidden_states),
        attentions=output.get("attentions"),
    )


class AutoPeftModelForFeatureExtraction(AutoPeftModel):
    """Load a FEATURE_EXTRACTION adapter and its base model from the adapter folder alone."""

    task_type = "FEATURE_EXTRACTION"


registry.register_task_type("FEATURE_EXTRACTION", PeftModelForFeatureExtraction, AutoModel)
