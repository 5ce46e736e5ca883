"""Prompts for a frozen model with a token classification head (`AutoModelForTokenClassification`): TOKEN_CLS.

As sequence classification (task_types/seq_cls.py: the prompt's placement, one trainable head per adapter saved under
PEFT's `modules_to_save` names), with logits [B, L, C] aligned with the input tokens and the loss over the
labels of real tokens (-100 elsewhere). PEFT 0.21 returns the virtual positions' logits in front, [B, P+L, C],
so its loss cannot line up with the labels [B, L] of prompt or p-tuning, and it refuses prefix tuning on
encoders ("does not support past key values"); here both train.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForTokenClassification
from transformers.modeling_outputs import TokenClassifierOutput

from .. import registry
from ..config import PromptLearningConfig
from ..core import AutoPeftModel
from .seq_cls import PeftModelForSequenceClassification


class PeftModelForTokenClassification(PeftModelForSequenceClassification):
    """A frozen token classifier and one or more prompts, each with its own trainable copy of the head."""

    task_type_name = "TOKEN_CLS"
    auto_model_name = "AutoModelForTokenClassification"

    def add_adapter(
        self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None
    ) -> None:
        if peft_config.pooling != "cls" or peft_config.head_init != "model":
            raise ValueError(
                "pooling and head_init are for sequence classification: a token classifier reads every token."
            )
        super().add_adapter(adapter_name, peft_config, prompt_source)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        labels=None,
        position_ids=None,
        adapter_names=None,
        task_ids=None,
        **kwargs,
    ) -> TokenClassifierOutput:
        """Per-token logits [B, L, C]; cross-entropy over `labels` [B, L] != -100."""
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        output = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            adapter_names=adapter_names,
            task_ids=task_ids,
            **kwargs,
        )
        logits = output.logits[:, -length:]  # [B, L, C]: the virtual tokens' positions dropped
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
            )
        return TokenClassifierOutput(loss=loss, logits=logits)


class AutoPeftModelForTokenClassification(AutoPeftModel):
    """Load a TOKEN_CLS adapter and its base model (with a head of the adapter's size) from the adapter folder alone."""

    task_type = "TOKEN_CLS"


registry.register_task_type("TOKEN_CLS", PeftModelForTokenClassification, AutoModelForTokenClassification)
