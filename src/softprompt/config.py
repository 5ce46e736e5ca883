"""Config dataclasses shared by every method, and adapter_config.json in PEFT's field names.

A method's config subclasses `PromptLearningConfig`, sets `peft_type`, and adds its own fields.
`to_dict()` gives exactly the JSON PEFT writes, so either library reads the other's adapters.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from . import adapter_io, registry
from .errors import ConfigError


class TaskType(str, enum.Enum):
    CAUSAL_LM = "CAUSAL_LM"
    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PeftType(str, enum.Enum):
    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"
    CPT = "CPT"


def _plain(value: Any) -> Any:
    """Enums to their string values, for JSON."""
    return value.value if isinstance(value, enum.Enum) else value


@dataclass
class PromptLearningConfig:
    """Fields every prompt method has, named as in PEFT.

    The model-shape fields (`token_dim`, `num_layers`, ...) are filled from the base model when the
    config is attached to it; you normally leave them at None.
    """

    peft_type: ClassVar[PeftType | str]  # a PeftType member, or the string a method registered outside PeftType
    default_learning_rate: ClassVar[float] = 3e-2  # what training uses unless told otherwise

    task_type: str | None = TaskType.CAUSAL_LM
    """CAUSAL_LM (a language model), SEQ_CLS (a model with a classification head, trained with the prompt) or
    SEQ_2_SEQ_LM (an encoder-decoder such as T5 or BART)."""
    num_virtual_tokens: int | None = None
    """How many virtual tokens the prompt has (PEFT's guide uses 8 or 20)."""
    base_model_name_or_path: str | None = None
    """The base model the adapter was trained on: hub id, local folder or `smollm2-135m`."""
    revision: str | None = None
    inference_mode: bool = False
    """True in a loaded adapter: parameters frozen, encoders already collapsed into a table."""
    token_dim: int | None = None
    """Width of one virtual token's row in the saved table (hidden size, or KV width for prefixes)."""
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None
    modules_to_save: list[str] | None = None
    auto_mapping: dict | None = None
    pooling: str = "cls"
    """SEQ_CLS on an encoder only (softprompt's own field, not PEFT's): what the classification head reads.
    "cls" (default, as PEFT): the model's own pooling ([CLS] through BERT's pooler). "mean": the mean of the
    text tokens' last hidden states (virtual tokens and padding excluded), as sentence encoders such as
    all-MiniLM-L6-v2 were trained to be read. "normalized_mean": that mean scaled to unit length, the embedding
    sentence-transformers gives for such models (a fitted head then starts as a logistic regression on it). Saved
    in adapter_config.json only when not "cls"; PEFT 0.21 loads
    such a file (it warns of an unknown field and drops it) but then runs the model with its own [CLS] pooling,
    so its logits differ: use softprompt to run a mean-pooled adapter."""
    head_init: str = "model"
    """SEQ_CLS on an encoder only (softprompt's own field): how training starts the head. "model": the base
    model's head as loaded (PEFT's way). "fit": before the first step, a class-balanced, L2-regularised logistic
    regression on the features the head reads for the training rows (with the initial prompt), so training starts
    from a linear probe. `softprompt train` does it; in a loop of your own (or the HF Trainer) call
    `model.fit_head_on(batches)` first. Training only; saved (when not "model") as a record of the recipe."""

    SOFTPROMPT_FIELDS: ClassVar[dict[str, Any]] = {
        "pooling": "cls",
        "head_init": "model",
    }  # omitted from the JSON at these values
    PEFT_MISREADS: ClassVar[tuple[str, ...]] = ("pooling",)  # softprompt fields PEFT would drop and run otherwise
    exports_as: ClassVar[PeftType | str | None] = None  # the method whose file a trained adapter is saved as (its
    # prompt collapsed to that method's table: residual and ULPT prompts are plain prompt-tuning tables); None: its own

    def __post_init__(self) -> None:
        self.task_type = _plain(self.task_type)
        if self.task_type is not None:
            self.task_type = registry.task_type(self.task_type).name  # a ConfigError lists the registered ones
        if not isinstance(self.num_virtual_tokens, int) or isinstance(self.num_virtual_tokens, bool):
            raise ConfigError(
                f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}. "
                "Set e.g. num_virtual_tokens=20."
            )
        if self.num_virtual_tokens <= 0:
            raise ConfigError(
                f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}. Set e.g. num_virtual_tokens=20."
            )
        for name in ("token_dim", "num_layers", "num_attention_heads"):
            positive_int_or_none(self, name)
        for name, choices in (("pooling", ("cls", "mean", "normalized_mean")), ("head_init", ("model", "fit"))):
            value = str(getattr(self, name)).lower()
            if value not in choices:
                raise ConfigError(f"{name}={getattr(self, name)!r} is unknown. Use one of {', '.join(choices)}.")
            setattr(self, name, value)
            if value != self.SOFTPROMPT_FIELDS[name] and self.task_type != TaskType.SEQ_CLS.value:
                raise ConfigError(
                    f"{name}={value!r} is for sequence classification: set task_type='SEQ_CLS', or leave {name} out."
                )

    def fill_model_fields(self, shape) -> None:
        """Set the model-shape fields from the base model (as PEFT does when it wraps a model)."""
        self.num_layers = shape.num_layers
        self.token_dim = shape.hidden_size
        self.num_attention_heads = shape.num_heads
        self.num_transformer_submodules = 2 if shape.encoder_decoder else 1  # PEFT's value: encoder and decoder

    # ---- JSON in PEFT's layout -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for name, default in self.SOFTPROMPT_FIELDS.items():  # PEFT's JSON exactly, unless asked for more
            if data.get(name) == default:
                del data[name]
        data["peft_type"] = _plain(self.peft_type)
        return data

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        adapter_io.atomic_write_bytes(os.path.join(directory, adapter_io.CONFIG_NAME), text.encode())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptLearningConfig:
        """Build the right method's config from a dict (e.g. a PEFT adapter_config.json)."""
        target = cls if cls is not PromptLearningConfig else registry.method(data.get("peft_type")).config_class
        known = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - known - {"peft_type"})
        # PEFT adds bookkeeping fields across versions (peft_version, ...): ignore them, say which.
        ignorable = {"peft_version", "layers_to_transform", "layers_pattern", "target_modules"}
        if set(unknown) - ignorable:
            warnings.warn(f"Ignoring unknown adapter config fields: {sorted(set(unknown) - ignorable)}", stacklevel=2)
        return target(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **hub_kwargs) -> PromptLearningConfig:
        """Read adapter_config.json from an adapter folder or a hub repo."""
        return cls.from_dict(adapter_io.read_adapter_config(path, **hub_kwargs))

    @property
    def is_prompt_learning(self) -> bool:
        return True

    def exported(self) -> PromptLearningConfig:
        """The config a trained adapter's inference files carry: `exports_as`'s, with the fields it shares with this
        one; this config itself when the method saves as its own."""
        if self.exports_as is None:
            return self
        target = registry.method(self.exports_as).config_class
        names = {f.name for f in dataclasses.fields(target)} & {f.name for f in dataclasses.fields(self)}
        return target(**{name: getattr(self, name) for name in names})

    def peft_reads_it(self) -> str | None:
        """None when PEFT loads this adapter and runs what softprompt runs; else why not."""
        if _plain(self.peft_type) not in PeftType.__members__:
            return f"PEFT has no method {_plain(self.peft_type)}"
        changed = [name for name in self.PEFT_MISREADS if getattr(self, name) != self.SOFTPROMPT_FIELDS[name]]
        if changed:
            fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in changed)
            return f"it uses softprompt's {fields}, which PEFT drops"
        return None


PeftConfig = PromptLearningConfig


def enum_choice(config: Any, name: str, choices: type[enum.Enum]) -> None:
    """Normalise a string-enum field (any case, or the enum itself) to its value; unknown values are errors."""
    value = getattr(config, name)
    value = value.value if isinstance(value, enum.Enum) else str(value).upper()
    if value not in choices.__members__:
        raise ConfigError(f"{name}={getattr(config, name)!r} is unknown. Use one of {', '.join(choices.__members__)}.")
    setattr(config, name, value)


def get_peft_config(config_dict: dict[str, Any]) -> PromptLearningConfig:
    """PEFT's helper: a config from a dict with a `peft_type`."""
    return PromptLearningConfig.from_dict(config_dict)


def positive_int_or_none(config: Any, name: str) -> None:
    """Check an optional size field; used by method configs."""
    value = getattr(config, name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


__all__ = ["ConfigError", "PeftConfig", "PeftType", "PromptLearningConfig", "TaskType", "get_peft_config"]
