"""task.json: what prediction needs besides the prompt (template, text columns, labels, verbalizer).

`softprompt train` writes it beside the adapter files, so an adapter folder (or Hub repo) is all that
`Predictor`, `softprompt predict` and the server need. PEFT ignores the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .. import adapter_io
from ..errors import AdapterError
from .templates import RowTokenizer, TaskSpec

TASK_NAME = "task.json"
MISSING_TASK_HINT = (
    "Adapters written by `softprompt train` have it; for one from elsewhere (e.g. PEFT), write a task.json there with "
    "the fields of softprompt.data.TaskSpec "
    "(text_columns, label_column, label_names, verbalizer, template, max_length)."
)


def write_task(folder: str | os.PathLike, rows: RowTokenizer | list[RowTokenizer]) -> None:
    """The task (TaskSpec fields); for an adapter trained on several tasks, {"tasks": [one per task id]}."""
    specs = []
    for one in rows if isinstance(rows, (list, tuple)) else [rows]:
        spec = dataclasses.asdict(one.spec)
        spec["label_names"] = one.names
        for optional in ("name", "task_id"):  # absent unless set: a single task's file is as before
            if spec.get(optional) is None:
                spec.pop(optional, None)
        specs.append(spec)
    data = specs[0] if len(specs) == 1 else {"tasks": specs}
    adapter_io.atomic_write_bytes(Path(folder) / TASK_NAME, json.dumps(data, indent=1).encode())


def read_tasks(location: str | os.PathLike, required: bool = True) -> list[TaskSpec] | None:
    """Every task in an adapter's task.json (one, or one per task id of a multitask adapter); None if it has
    none and `required` is False."""
    path = adapter_io.local_or_hub_file(location, TASK_NAME, required=False)  # clear error if the folder is missing
    if path is None:
        if not required:
            return None
        raise AdapterError(
            f"{location} has no {TASK_NAME}: it holds a prompt adapter but not the task (template, labels). "
            + MISSING_TASK_HINT
        )
    try:
        data = json.loads(path.read_text())
        items = data["tasks"] if isinstance(data, dict) and "tasks" in data else [data]
        # task_type: in files before 0.2; adapter_config.json holds it
        return [TaskSpec(**{key: value for key, value in item.items() if key != "task_type"}) for item in items]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as error:
        fields = [f.name for f in dataclasses.fields(TaskSpec)]
        raise AdapterError(
            f"{path} is not a valid task file ({error}). It must be a JSON object with the fields {fields} "
            '(or {"tasks": [such objects]} for an adapter trained on several tasks).'
        ) from error


def choose_task(specs: list[TaskSpec], task: str | int | None, location) -> TaskSpec:
    """One task of an adapter by name or task id; an adapter of several tasks needs `task`."""
    if task is None:
        if len(specs) > 1:
            raise AdapterError(
                f"{location} was trained on {len(specs)} tasks ({describe_tasks(specs)}): choose one "
                "(softprompt eval/predict --task NAME or ID; Predictor.from_pretrained(..., task=NAME))."
            )
        return specs[0]
    for position, spec in enumerate(specs):
        own_id = spec.task_id if spec.task_id is not None else position
        if str(task) in (spec.name, str(own_id)):
            return spec
    raise AdapterError(f"{location} has no task {task!r}; its tasks: {describe_tasks(specs)}.")


def describe_tasks(specs: list[TaskSpec]) -> str:
    return ", ".join(
        f"{spec.task_id if spec.task_id is not None else n}: {spec.name or 'unnamed'}" for n, spec in enumerate(specs)
    )


def read_task(location: str | os.PathLike, required: bool = True, task: str | int | None = None) -> TaskSpec | None:
    """The TaskSpec in an adapter folder or Hub repo (`task`: which, by name or id, for an adapter of several);
    None if it has none and `required` is False."""
    specs = read_tasks(location, required)
    return None if specs is None else choose_task(specs, task, location)


def load_task(
    location: str | os.PathLike,
    tokenizer,
    label_words: bool = True,
    required: bool = True,
    task: str | int | None = None,
) -> RowTokenizer | None:
    """The task of an adapter as a RowTokenizer (rows -> token ids, label texts), or None if it has none.
    label_words: as the adapter's task type writes labels (TaskBehaviour.label_words)."""
    spec = read_task(location, required, task)
    return None if spec is None else RowTokenizer(tokenizer, spec, spec.label_names, label_words)
