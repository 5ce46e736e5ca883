"""CPT, context-aware prompt tuning (Blau et al. 2024): in-context examples as the prompt, refined within bounds.

The prompt starts as the token embeddings of a few labelled examples (`cpt_token_ids`); training adds a
delta to the template and input tokens only (the label tokens stay fixed), and keeps each token's delta
inside an epsilon ball (`opt_projection_epsilon` for inputs, `opt_projection_format_epsilon` for
templates, scaled by sqrt(hidden / 2048)). The loss also asks the model to predict the examples' own
labels inside the prompt, optionally weighting earlier examples less (`opt_weighted_loss_type="decay"`).
Token types (`cpt_tokens_type_mask`), as in PEFT: 4k+1 input template, 4k+2 input, 4k+3 output
template, 4k+4 label, for example k; 0 for none. After training the prompt collapses to one table,
saved like prompt tuning's (PEFT's format for CPT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .. import registry
from ..config import ConfigError, PeftType, PromptLearningConfig, TaskType
from .base import InjectionKind, ModelShape, PromptSource


@dataclass
class CPTConfig(PromptLearningConfig):
    """CPT: the prompt is `cpt_token_ids` (a few in-context examples), refined by bounded deltas."""

    peft_type = PeftType.CPT
    default_learning_rate = 1e-3

    cpt_token_ids: list[int] | None = None
    """Token ids of the in-context examples (template, input, label of each); num_virtual_tokens is their count."""
    cpt_mask: list[int] | None = None
    """1 for every prompt token (PEFT's field; kept for interop)."""
    cpt_tokens_type_mask: list[int] | None = None
    """Type of each token: 4k+1 input template, 4k+2 input, 4k+3 output template, 4k+4 label (example k)."""
    opt_weighted_loss_type: str = "none"
    """"none", or "decay": each earlier example's labels weigh opt_loss_decay_factor times the next one's."""
    opt_loss_decay_factor: float = 1.0
    opt_projection_epsilon: float = 0.1
    """Bound on an input token's delta norm (times sqrt(hidden / 2048))."""
    opt_projection_format_epsilon: float = 0.1
    """Bound on a template token's delta norm (times sqrt(hidden / 2048))."""
    tokenizer_name_or_path: str | None = None

    def __post_init__(self) -> None:
        if not self.cpt_token_ids:
            raise ConfigError(
                "CPT needs cpt_token_ids: the token ids of a few in-context examples (template, input, label)."
            )
        self.num_virtual_tokens = len(self.cpt_token_ids)
        self.cpt_mask = list(self.cpt_mask or [1] * len(self.cpt_token_ids))
        self.cpt_tokens_type_mask = list(self.cpt_tokens_type_mask or [1] * len(self.cpt_token_ids))
        super().__post_init__()
        if not len(self.cpt_token_ids) == len(self.cpt_mask) == len(self.cpt_tokens_type_mask):
            raise ConfigError(
                f"cpt_token_ids, cpt_mask and cpt_tokens_type_mask must have the same length, got "
                f"{len(self.cpt_token_ids)}, {len(self.cpt_mask)} and {len(self.cpt_tokens_type_mask)}."
            )
        if self.opt_weighted_loss_type not in ("none", "decay"):
            raise ConfigError(f"opt_weighted_loss_type must be 'none' or 'decay', got {self.opt_weighted_loss_type!r}.")
        if self.task_type not in (None, TaskType.CAUSAL_LM.value):
            raise ConfigError("CPT supports task_type='CAUSAL_LM' only (as PEFT).")


class CPTEmbedding(PromptSource):
    """The examples' token embeddings (frozen) + a bounded delta on template and input tokens -> [P, H]."""

    injection = InjectionKind.EMBEDDINGS
    has_own_loss = True
    prompt_logits = "all"  # the loss reads the prompt's own predictions (the examples' labels)
    loss_inputs = ("input_type_mask",)

    def __init__(self, config: CPTConfig, shape: ModelShape, base_model: nn.Module):
        super().__init__()
        self.config = config
        count, width = config.num_virtual_tokens, shape.hidden_size
        self.embedding = nn.Embedding(count, width)
        if base_model is not None:
            vocab = base_model.get_input_embeddings().weight.detach().float()
            with torch.no_grad():
                self.embedding.weight.copy_(vocab[torch.tensor(config.cpt_token_ids, device=vocab.device)])
        self.embedding.requires_grad_(False)
        self.delta_embedding = nn.Embedding(count, width)
        nn.init.zeros_(self.delta_embedding.weight)
        types = torch.tensor(config.cpt_tokens_type_mask)
        self.register_buffer(
            "trainable_rows", torch.isin(types % 4, torch.tensor([1, 2, 3])).float()[:, None], persistent=False
        )
        scale = (width / 2048) ** 0.5
        epsilon = torch.full((count,), 1e-10)
        epsilon[(types > 0) & (types % 4 != 2) & (types % 4 != 0)] = config.opt_projection_format_epsilon * scale
        epsilon[(types > 0) & (types % 4 == 2)] = config.opt_projection_epsilon * scale
        self.register_buffer("epsilon", epsilon, persistent=False)

    @torch.no_grad()
    def project(self) -> None:
        """Pull each token's delta back inside its epsilon ball (changes nothing inside it).

        A delta just pulled back may sit an ulp outside; the tolerance keeps a second call from moving it
        again, so the prompt stays the same from call to call (and the saved table equals the used one).
        """
        delta = self.delta_embedding.weight
        norms = delta.norm(dim=1)
        outside = norms > self.epsilon * (1 + 1e-6)
        if outside.any():
            delta[outside] *= (self.epsilon[outside] / norms[outside])[:, None]

    def forward(self, task: int = 0) -> torch.Tensor:
        self.project()
        # the labels' deltas take no gradient (they stay as they are); masked here rather than by a tensor hook,
        # which a deepcopy of the model would lose
        delta = torch.where(
            self.trainable_rows.bool(), self.delta_embedding.weight, self.delta_embedding.weight.detach()
        )
        return self.embedding.weight + delta  # [P, H]

    def loss(
        self, prompt_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, input_type_mask=None
    ) -> torch.Tensor:
        """PEFT's CPT loss without repeating the prompt per row: next-token cross-entropy over the examples'
        labels inside the prompt and the inputs' labels, weighted by example ("decay"), averaged.

        prompt_logits [1, P, V]: every virtual position; logits [B, T, V]: the last T input positions;
        labels [B, L]; input_type_mask [B, L] (default: every input token is one labelled example).
        """
        config, device = self.config, logits.device
        batch, length = labels.shape
        types = torch.tensor(config.cpt_tokens_type_mask, device=device)  # [P]
        prompt_labels = torch.tensor(config.cpt_token_ids, device=device)
        prompt_labels = torch.where((types > 0) & (types % 4 == 0), prompt_labels, -100)
        input_types = torch.full_like(labels, 4) if input_type_mask is None else input_type_mask.to(device).long()
        input_types = torch.where(
            input_types > 0, input_types + types.max(), input_types
        )  # after the prompt's examples
        labels = torch.where((input_types > 0) & (input_types % 4 == 0), labels, -100)
        # Predictions of the concatenated sequence [prompt][input], shifted by one: [B, P+L-1]
        prompt_ce = F.cross_entropy(
            prompt_logits[0, :-1].float(), prompt_labels[1:], reduction="none", ignore_index=-100
        )  # [P-1]
        known = logits.shape[1]  # input positions with logits: the last `known`
        input_ce = torch.zeros(batch, length, device=device)  # [B, L]: the loss on input token j (j >= 1)
        input_ce[:, length - known + 1 :] = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels[:, length - known + 1 :], reduction="none", ignore_index=-100
        )
        if known == length:  # the last virtual position predicts the first input token
            input_ce[:, 0] = F.cross_entropy(
                prompt_logits[0, -1:].float().expand(batch, -1), labels[:, 0], reduction="none", ignore_index=-100
            )
        elif (labels[:, : length - known + 1] != -100).any():
            raise ValueError("CPT: some labels lie before the positions logits_to_keep computes; raise logits_to_keep.")
        ce = torch.cat([prompt_ce.expand(batch, -1), input_ce], dim=1)  # [B, P-1+L]
        shifted_labels = torch.cat([prompt_labels[1:].expand(batch, -1), labels], dim=1)
        shifted_types = torch.cat([types[1:].expand(batch, -1), input_types], dim=1)
        valid = shifted_labels != -100
        weights = torch.ones_like(ce)
        if config.opt_weighted_loss_type == "decay":  # the last example weighs 1, each earlier one `factor` times less
            for row in range(batch):
                groups = shifted_types[row][(shifted_types[row] > 0) & (shifted_types[row] % 4 == 0)].unique()
                for rank, group in enumerate(torch.flip(groups, [0])):
                    weights[row][shifted_types[row] == group] = config.opt_loss_decay_factor**rank
        return (ce[valid] * weights[valid]).mean()


registry.register_method(PeftType.CPT, CPTConfig, CPTEmbedding, aliases=("cpt",))
