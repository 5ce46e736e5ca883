"""Reading a training config's mapping: `--a.b value` set into nested fields, and relative paths made absolute
from the config file's folder (the command line's from the current one)."""

from __future__ import annotations

from pathlib import Path

from ..data import is_remote
from ..errors import ConfigError


def set_dotted(data: dict, dotted: str, value, origin: str = "config") -> None:
    """data["a"]["b"] = value for "a.b"; a number steps into a list ("tasks.0.train_file")."""
    keys = dotted.split(".")
    target = data
    for position, key in enumerate(keys):
        if isinstance(target, list):
            if not key.isdigit() or int(key) >= len(target):
                raise ConfigError(
                    f"{origin}: --{dotted}: {key!r} is not an index of a list of {len(target)} (0..{len(target) - 1})."
                )
            key = int(key)
        elif not isinstance(target, dict):
            raise ConfigError(f"{origin}: --{dotted}: {'.'.join(keys[:position])} is {target!r}, not a mapping.")
        if position == len(keys) - 1:
            target[key] = value
        elif isinstance(target, dict):
            if target.get(key) is None:
                target[key] = {}
            target = target[key]
        else:
            target = target[key]


PATH_FIELDS = ("train_file", "eval_file", "output_dir")  # local paths (or, for data, hf://datasets/... addresses)
MAYBE_PATH_FIELDS = ("model",)  # a local folder, or a name (hub id, smollm2-135m)
METHOD_PATH_OPTIONS = ("prompt_tuning_init_state_dict_path",)  # method_options that name a file (a source adapter)
TASK_PATH_FIELDS = ("train_file", "eval_file")  # in each of tasks


def local_path(folder: Path, value):
    """A relative local path made absolute from `folder`; absolute paths, URLs (hf://...) and non-strings as given."""
    if not isinstance(value, str) or not value or is_remote(value) or Path(value).expanduser().is_absolute():
        return value
    return str((folder / value).resolve())


def paths_from(folder: Path, data: dict) -> dict:
    """The config's relative paths made absolute from `folder` (where the config file lies)."""
    data = dict(data)
    if isinstance(data.get("method_options"), dict):
        data["method_options"] = {
            key: local_path(folder, value) if key in METHOD_PATH_OPTIONS else value
            for key, value in data["method_options"].items()
        }
    if isinstance(data.get("tasks"), list):
        data["tasks"] = [
            {key: local_path(folder, value) if key in TASK_PATH_FIELDS else value for key, value in entry.items()}
            if isinstance(entry, dict)
            else entry
            for entry in data["tasks"]
        ]
    if isinstance(data.get("calibration"), dict) and data["calibration"].get("texts_file"):
        data["calibration"] = {
            **data["calibration"],
            "texts_file": local_path(folder, data["calibration"]["texts_file"]),
        }
    for name in PATH_FIELDS + MAYBE_PATH_FIELDS:
        value = data.get(name)
        if not isinstance(value, str) or not value or is_remote(value) or Path(value).expanduser().is_absolute():
            continue
        candidate = folder / value
        if name in PATH_FIELDS or value.startswith(".") or candidate.exists():
            data[name] = str(candidate.resolve())
    return data
