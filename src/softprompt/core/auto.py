"""Entry points that pick a task type's wrapper through the registry: `get_peft_model` and the `AutoPeftModel*`
classes (an adapter folder alone -> its base model + its prompt)."""

from __future__ import annotations

import os

from torch import nn

from .. import base_models, registry
from ..config import PromptLearningConfig
from ..errors import AdapterError, ConfigError
from .peft_model import PeftModel


def get_peft_model(
    model: nn.Module, peft_config: PromptLearningConfig, adapter_name: str = "default", **_
) -> PeftModel:
    """Freeze `model` and attach a new prompt described by `peft_config` (its task_type picks the wrapper)."""
    return registry.task_type(peft_config.task_type).wrapper(model, peft_config, adapter_name)


class AutoPeftModel:
    """Load an adapter and its base model from the adapter folder (or hub repo) alone, with the transformers Auto
    class of the adapter's task type. `AutoPeftModelFor<TaskType>` (in each task type's module) insists on its own."""

    task_type: str | None = None  # None: the adapter's own

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        is_trainable: bool = False,
        base_model: nn.Module | None = None,
        adapter_name: str = "default",
        **model_kwargs,
    ) -> PeftModel:
        config = PromptLearningConfig.from_pretrained(pretrained_model_name_or_path)
        entry = registry.task_type(config.task_type)
        if cls.task_type is not None and entry.name != registry.task_type(cls.task_type).name:
            raise ConfigError(
                f"{pretrained_model_name_or_path} is a {entry.name} adapter; {cls.__name__} loads {cls.task_type} "
                "adapters. "
                "Use AutoPeftModel (it follows the adapter's task_type) or the Auto class of its task type."
            )
        if base_model is None:
            if not config.base_model_name_or_path:
                raise AdapterError(
                    f"{pretrained_model_name_or_path} does not name its base model (base_model_name_or_path is empty). "
                    "Load the base model yourself and use PeftModel.from_pretrained(model, adapter_dir)."
                )
            options = {**entry.wrapper.base_model_options(pretrained_model_name_or_path), **model_kwargs}
            base_model = base_models.load_base_model(
                config.base_model_name_or_path, auto_class=entry.auto_model, **options
            )
        return entry.wrapper.from_pretrained(
            base_model, pretrained_model_name_or_path, adapter_name=adapter_name, is_trainable=is_trainable
        )
