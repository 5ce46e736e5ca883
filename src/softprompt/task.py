"""task.json: what prediction needs besides the prompt (template, text columns, labels, verbalizer).

`softprompt train` writes it beside the adapter files, so an adapter folder (or Hub repo) is all that
`Predictor`, `softprompt predict` and the server need. PEFT ignores the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from . import adapters
from .data import Encoder, TaskSpec

TASK_NAME = "task.json"
MISSING_TASK_HINT = (
    "Adapters written by `softprompt train` have it; for one from elsewhere (e.g. PEFT), write a task.json there with "
    "the fields of softprompt.data.TaskSpec (text_columns, label_column, label_names, verbalizer, template, max_length)."
)


def write_task(folder: str | os.PathLike, encoder: Encoder) -> None:
    spec = dataclasses.asdict(encoder.spec)
    spec["label_names"] = encoder.names
    adapters.atomic_write_bytes(Path(folder) / TASK_NAME, json.dumps(spec, indent=1).encode())


def read_task(location: str | os.PathLike, required: bool = True) -> TaskSpec | None:
    """The TaskSpec in an adapter folder or Hub repo; None if it has none and `required` is False."""
    path = adapters.local_or_hub_file(location, TASK_NAME, required=False)  # clear error if the folder is missing
    if path is None:
        if not required:
            return None
        raise adapters.AdapterError(
            f"{location} has no {TASK_NAME}: it holds a prompt adapter but not the task (template, labels). {MISSING_TASK_HINT}"
        )
    try:
        data = json.loads(path.read_text())
        return TaskSpec(**data)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        fields = [f.name for f in dataclasses.fields(TaskSpec)]
        raise adapters.AdapterError(
            f"{path} is not a valid task file ({error}). It must be a JSON object with the fields {fields}."
        ) from error


def load_task(location: str | os.PathLike, tokenizer, required: bool = True) -> Encoder | None:
    """The task of an adapter as an Encoder (rows -> token ids, label texts), or None if it has none."""
    spec = read_task(location, required)
    return None if spec is None else Encoder(tokenizer, spec, spec.label_names)
