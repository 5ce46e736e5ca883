"""A run's files: the checkpoint of the last finished epoch (adapter, full prompt source, optimizer, scheduler,
history), and the best adapter so far. Written atomically, safetensors and JSON only (no pickle), so a crash
leaves the last good checkpoint whole and `--resume` continues from it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import adapter_io
from ..core import PeftModel
from ..core.model_card import keeps_own_card
from ..data import RowTokenizer, write_task
from ..errors import AdapterError

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


def optimizer_to_files(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state as safetensors tensors plus JSON (no pickle)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    state: dict = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    folder: Path, model: PeftModel, rows: RowTokenizer | list[RowTokenizer], optimizer, scheduler, state: dict
) -> None:
    tensors, optimizer_info = optimizer_to_files(optimizer)

    def write(staging: Path) -> None:
        model.write_adapter_files(staging, include_prompt_source=True)
        write_task(staging, rows)
        adapter_io.save_tensors(tensors, staging / OPTIMIZER_NAME)
        payload = {**state, "optimizer": optimizer_info, "scheduler": scheduler.state_dict()}
        adapter_io.atomic_write_bytes(staging / STATE_NAME, json.dumps(payload, indent=1).encode())

    adapter_io.write_folder_atomically(folder, write)


def read_state(folder: Path) -> dict | None:
    """The checkpoint's trainer state (epoch, history, best, optimizer and scheduler settings), or None."""
    path = folder / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{path} is damaged ({error}); delete {folder} to start over.") from error


def restore_prompt(folder: Path, model: PeftModel) -> None:
    """The checkpoint's full prompt source (and a classifier's head) into the model's active adapter."""
    model.prompt_source.load_state_dict(load_file(str(folder / adapter_io.SOURCE_NAME)))
    model.take_adapter_tensors(model.active_adapter, load_file(str(folder / adapter_io.WEIGHTS_NAME)), True)


def restore_optimizer(folder: Path, state: dict, optimizer, scheduler) -> None:
    optimizer.load_state_dict(optimizer_from_files(load_file(str(folder / OPTIMIZER_NAME)), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])


def write_adapter(model: PeftModel, rows: list[RowTokenizer], folder: Path, metrics: dict | None = None) -> None:
    """The adapter's inference files, its task.json and model card (with the epoch's `metrics`), replacing the
    folder atomically (a README.md of the user's own is kept)."""
    own_card = keeps_own_card(folder)

    def write(staging: Path) -> None:
        model.write_adapter_files(staging)
        write_task(staging, rows)
        if not own_card:
            shown = {key: value for key, value in (metrics or {}).items() if key not in ("lr", "seconds")}
            model.write_model_card(staging, task=rows[0].spec if len(rows) == 1 else None, metrics=shown)

    adapter_io.write_folder_atomically(folder, write)
