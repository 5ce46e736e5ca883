"""The task-agnostic model core: the model shape, the two injections, the prompt-states cache and the
`PeftModel` wrapper every task type builds on; `get_peft_model` and `AutoPeftModel` dispatch through the
task-type registry."""

from .auto import AutoPeftModel, get_peft_model
from .batch_prompts import BASE_ADAPTER
from .injection import INJECTIONS, EmbeddingPrefix, Injection, KVPrefix, Prefix, PromptStates
from .peft_model import PeftModel
from .shape import probe_shape

__all__ = [
    "BASE_ADAPTER",
    "INJECTIONS",
    "AutoPeftModel",
    "EmbeddingPrefix",
    "Injection",
    "KVPrefix",
    "PeftModel",
    "Prefix",
    "PromptStates",
    "get_peft_model",
    "probe_shape",
]
