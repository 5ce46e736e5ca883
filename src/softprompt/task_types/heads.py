"""A trainable copy of the base model's classification head per adapter (SEQ_CLS, TOKEN_CLS), saved under PEFT's
`modules_to_save` names (`base_model.classifier.weight`), and started, if asked, from a linear probe.

`AdapterHeads` is the PeftModel subclass the classifier task types build on: while an adapter runs, the base
model's head is that adapter's (`head_of`). `fit_head` sets a linear head to the class-balanced, L2-regularised
logistic regression on the features the head reads (softprompt's `head_init="fit"`).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.nn import functional as F

from .. import adapter_io
from ..compat import current_state, load_whole_state
from ..config import PromptLearningConfig
from ..core import PeftModel
from ..errors import AdapterError

HEAD_NAMES = ("classifier", "score")  # PEFT's modules_to_save for sequence classification
HEAD_PREFIX = "base_model."  # PEFT's key prefix for a saved head: base_model.score.weight


class AdapterHeads(PeftModel):
    """A frozen classifier and one or more prompts, each with its own trainable copy of the head."""

    handles_encoders = True
    task_type_name = "SEQ_CLS"  # for messages
    auto_model_name = "AutoModelForSequenceClassification"

    def add_adapter(
        self, adapter_name: str, peft_config: PromptLearningConfig, prompt_source: nn.Module | None = None
    ) -> None:
        base = self.base_model
        self.head_name = next((name for name in HEAD_NAMES if isinstance(getattr(base, name, None), nn.Module)), None)
        if self.head_name is None:
            raise ValueError(
                f"{type(base).__name__} has no classification head ({' or '.join(HEAD_NAMES)}): "
                f"load the base model with {self.auto_model_name} for task_type='{self.task_type_name}', "
                "or use task_type='CAUSAL_LM'."
            )
        if peft_config.head_init == "fit" and not isinstance(getattr(base, self.head_name), nn.Linear):
            raise ValueError(
                f"head_init='fit' fits a linear head; {type(base).__name__}.{self.head_name} is a "
                f"{type(getattr(base, self.head_name)).__name__}: use head_init='model'."
            )
        if peft_config.modules_to_save is None:
            peft_config.modules_to_save = list(HEAD_NAMES)
        super().add_adapter(adapter_name, peft_config, prompt_source)
        if "heads" not in self._modules:
            self.heads = nn.ModuleDict()  # adapter name -> its head
            self.__dict__["original_head"] = getattr(base, self.head_name)  # stays the base model's submodule only
            self.__dict__["settled_heads"] = set()  # adapters whose head was loaded or fitted: never fitted again
        head = copy.deepcopy(self.original_head)
        head.requires_grad_(True)
        self.heads[adapter_name] = head

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.heads[adapter_name]
        self.settled_heads.discard(adapter_name)

    @contextlib.contextmanager
    def head_of(self, adapter_name: str | None):
        """The base model's head is `adapter_name`'s for the duration (the original one for None)."""
        setattr(
            self.base_model, self.head_name, self.original_head if adapter_name is None else self.heads[adapter_name]
        )
        try:
            yield
        finally:
            setattr(self.base_model, self.head_name, self.original_head)

    # ---- starting the head from a linear probe ---------------------------------------------------
    @torch.no_grad()
    def head_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        adapter_name: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """What the adapter's head reads for these rows with the current prompt, in eval mode: [B, H]."""
        name = adapter_name or self.active_name()
        captured = []
        hook = self.heads[name].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        was_training = self.training
        self.eval()
        try:
            self(
                input_ids=input_ids, attention_mask=attention_mask, adapter_names=[name] * input_ids.shape[0], **kwargs
            )
        finally:
            hook.remove()
            self.train(was_training)
        features = captured[0]
        if features.dim() != 2:
            raise ValueError(
                f"The head of {type(self.base_model).__name__} reads {tuple(features.shape)} per batch, not one "
                "vector per row."
            )
        return features.float()

    @torch.no_grad()
    def fit_head(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        adapter_name: str | None = None,
        l2: float = 1.0,
        balanced: bool = True,
    ) -> None:
        """Set a linear head to the logistic regression on `features` [N, H] and `labels` [N] (class positions):
        minimises sum_i w_i * cross-entropy_i + l2/2 * |weight|^2 (sklearn's objective with C = 1/l2), the
        classes weighted to equal total weight when `balanced`. Classes absent from `labels` get no rows."""
        name = adapter_name or self.active_name()
        head = self.heads[name]
        if not isinstance(head, nn.Linear):
            raise TypeError(f"fit_head fits a linear head; this one is a {type(head).__name__}.")
        features, labels = features.float().cpu(), labels.long().cpu()
        counts = torch.bincount(labels, minlength=head.out_features).float()
        weights = (
            (len(labels) / (counts.clamp(min=1) * (counts > 0).sum()))[labels] if balanced else torch.ones(len(labels))
        )
        weight = torch.zeros(head.out_features, features.shape[1], requires_grad=True)
        bias = torch.zeros(head.out_features, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1,
            max_iter=500,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def objective():
            optimizer.zero_grad()
            loss = (F.cross_entropy(features @ weight.T + bias, labels, reduction="none") * weights).sum()
            loss = loss + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        head.weight.copy_(weight.detach().to(head.weight))
        if head.bias is not None:
            head.bias.copy_(bias.detach().to(head.bias))
        self.settled_heads.add(name)

    def fit_head_on(self, batches, adapter_name: str | None = None, **options) -> None:
        """`fit_head` on the features of `batches`: an iterable of dicts with input_ids, attention_mask, labels."""
        features, labels = [], []
        device = self.base_model.get_input_embeddings().weight.device
        for batch in batches:
            features.append(
                self.head_features(
                    batch["input_ids"].to(device), batch["attention_mask"].to(device), adapter_name
                ).cpu()
            )
            labels.append(batch["labels"].cpu())
        self.fit_head(torch.cat(features), torch.cat(labels), adapter_name, **options)

    def head_needs_fit(self, adapter_name: str | None = None) -> bool:
        """True when the adapter asks for head_init='fit' and its head was neither loaded nor fitted yet."""
        name = adapter_name or self.active_name()
        return self.peft_config[name].head_init == "fit" and name not in self.settled_heads

    # ---- the head in the adapter file (PEFT's modules_to_save names) -----------------------------
    @classmethod
    def base_model_options(cls, adapter_location) -> dict:
        """A head of the saved head's size."""
        labels = head_labels(adapter_location)
        return {"num_labels": labels} if labels else {}

    def adapter_modules(self, adapter_name: str) -> list[nn.Module]:
        return [*super().adapter_modules(adapter_name), self.heads[adapter_name]]

    def extra_adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return {
            f"{HEAD_PREFIX}{self.head_name}.{key}": value.float()
            for key, value in current_state(self.heads[adapter_name]).items()
        }

    def take_adapter_tensors(self, adapter_name: str, tensors: dict, is_trainable: bool) -> None:
        prefix = f"{HEAD_PREFIX}{self.head_name}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        head = self.heads[adapter_name]
        if not state:
            raise AdapterError(
                f"The adapter {adapter_name!r} holds no classification head ({prefix}*): it was not trained for "
                "sequence classification with this model."
            )
        current = head.state_dict()
        try:
            load_whole_state(head, {k: v.to(current[k].dtype) if k in current else v for k, v in state.items()})
        except RuntimeError as error:
            raise AdapterError(f"The adapter's classification head does not fit this model's: {error}") from error
        head.requires_grad_(is_trainable)
        self.settled_heads.add(adapter_name)


def head_labels(location) -> int | None:
    """How many classes an adapter's saved head has (its last weight's rows), or None without a head."""
    tensors = adapter_io.read_adapter_tensors(location)
    weights = [t for key, t in sorted(tensors.items()) if key.startswith(HEAD_PREFIX) and key.endswith(".weight")]
    return weights[-1].shape[0] if weights else None
