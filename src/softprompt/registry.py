"""The two registries at the bottom of the house: prompt methods and task types.

A method's module ends with `register_method(...)`, a task type's with `register_task_type(...)`. Whatever
needs one by name asks here: configs read from adapter_config.json, `get_peft_model`,
`PeftModel.from_pretrained`, the `Auto*` classes, the Predictor, `softprompt train` and the CLI's help. So
a new method is one module (its config, its prompt source, one `register_method` line), from inside the
package or from outside it:

    from softprompt import register_method
    register_method("MY_PROMPT", MyPromptConfig, MyPromptSource, aliases=("my_prompt",))

This module imports nothing of softprompt but its errors: every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_TASK_TYPE = "CAUSAL_LM"  # what an adapter without a task_type is (PEFT's older files)


@dataclass(frozen=True)
class Method:
    """A registered prompt method."""

    peft_type: str  # adapter_config.json's "peft_type", e.g. "PROMPT_TUNING"
    config_class: type  # its config: a softprompt.config.PromptLearningConfig subclass
    source_class: type  # its prompt source: a softprompt.methods.base.PromptSource subclass
    aliases: tuple[str, ...] = ()  # lower-case names for the CLI and YAML, e.g. ("prompt_tuning",)

    @property
    def name(self) -> str:
        """The friendly name (the first alias, else the peft_type in lower case)."""
        return self.aliases[0] if self.aliases else self.peft_type.lower()


@dataclass(frozen=True)
class TaskTypeEntry:
    """A registered task type: the wrapper for its models and how softprompt trains and classifies with it."""

    name: str  # PEFT's task_type, e.g. "CAUSAL_LM"
    wrapper: type  # its softprompt.core.PeftModel subclass
    auto_model: type  # the transformers Auto class its base model loads with (AutoModelForCausalLM, ...)
    behaviour: object | None = (
        None  # a task_types.base.TaskBehaviour; None: softprompt train/eval/predict do not handle it
    )

    def require_behaviour(self, who: str):
        """The behaviour, or a ConfigError naming the task types `who` (e.g. "softprompt train") handles."""
        if self.behaviour is None:
            handled = [entry.name for entry in _TASK_TYPES.values() if entry.behaviour is not None]
            raise ConfigError(
                f"{who} handles task_type {', '.join(handled)}; {self.name} is used through the Python API only."
            )
        return self.behaviour


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}
_TASK_TYPES: dict[str, TaskTypeEntry] = {}


def _key(name) -> str:
    return str(getattr(name, "value", name))  # an enum member or its string


def register_method(
    peft_type, config_class: type, source_class: type, aliases: tuple[str, ...] | list[str] = ()
) -> Method:
    """Make a method known by its peft_type (and aliases). Registering the same classes again is a no-op."""
    key = _key(peft_type).upper()
    entry = Method(key, config_class, source_class, tuple(a.lower() for a in aliases))
    if not isinstance(config_class, type) or _key(getattr(config_class, "peft_type", None)).upper() != key:
        raise ConfigError(
            f"register_method({key!r}): {config_class!r} must be a config class whose peft_type is {key!r}."
        )
    if not isinstance(source_class, type) or getattr(source_class, "injection", None) is None:
        raise ConfigError(
            f"register_method({key!r}): {source_class!r} must be a PromptSource subclass (it declares its injection)."
        )
    if key in _METHODS and _METHODS[key] != entry:
        raise ConfigError(
            f"A method {key!r} is already registered ({_METHODS[key].config_class.__name__}): pick another peft_type."
        )
    for alias in entry.aliases:
        if _ALIASES.get(alias, key) != key:
            raise ConfigError(f"The alias {alias!r} already names the method {_ALIASES[alias]!r}.")
    _METHODS[key] = entry
    _ALIASES.update({alias: key for alias in entry.aliases})
    return entry


def method(name) -> Method:
    """The method a peft_type or alias names (any case, '-' or '_'); a ConfigError lists the known ones."""
    if name is None:
        raise ConfigError("The adapter config has no 'peft_type'. It is not a prompt adapter, or the file is damaged.")
    text = _key(name)
    key = _ALIASES.get(text.lower().replace("-", "_"), text.upper())
    if key not in _METHODS:
        raise ConfigError(f"Unknown prompt method {text!r}. softprompt knows: {describe_methods()}.")
    return _METHODS[key]


def methods() -> list[Method]:
    return list(_METHODS.values())


def describe_methods() -> str:
    """'prompt_tuning (PROMPT_TUNING), p_tuning (P_TUNING), ...': every registered method, for messages and help."""
    return ", ".join(f"{entry.name} ({entry.peft_type})" for entry in _METHODS.values())


def loss_inputs() -> set[str]:
    """Every forward argument that some registered method's own loss reads (CPT's input_type_mask)."""
    return {name for entry in _METHODS.values() for name in entry.source_class.loss_inputs}


def register_task_type(name, wrapper: type, auto_model: type, behaviour=None) -> TaskTypeEntry:
    """Make a task type known: its wrapper class, the transformers Auto class of its base models, and (optionally)
    how softprompt train, eval and the Predictor classify rows with it."""
    key = _key(name).upper()
    entry = TaskTypeEntry(key, wrapper, auto_model, behaviour)
    if key in _TASK_TYPES and _TASK_TYPES[key] != entry:
        raise ConfigError(f"A task type {key!r} is already registered ({_TASK_TYPES[key].wrapper.__name__}).")
    _TASK_TYPES[key] = entry
    return entry


def task_type(name=None) -> TaskTypeEntry:
    """The task type `name` names (None: CAUSAL_LM); a ConfigError lists the registered ones."""
    key = _key(name).upper() if name is not None else DEFAULT_TASK_TYPE
    if key not in _TASK_TYPES:
        raise ConfigError(
            f"task_type={_key(name)!r} is not supported yet: softprompt handles {', '.join(_TASK_TYPES)}."
        )
    return _TASK_TYPES[key]


def task_types() -> list[TaskTypeEntry]:
    return list(_TASK_TYPES.values())


def is_task_type(name) -> bool:
    return name is None or _key(name).upper() in _TASK_TYPES
