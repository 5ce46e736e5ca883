"""The training config from the command line: `--field value` read as the field's type, and `train --help` written
from the fields' docstrings (so help cannot drift from the fields)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import textwrap
import types
import typing
from pathlib import Path

import yaml

from .. import registry
from ..data import TaskSpec
from .config import CalibrationConfig, TaskConfig, TrainConfig


def typed_overrides(raw: dict[str, str], config_path: str | os.PathLike | None = None) -> dict:
    """{dotted field: text from the command line} -> {dotted field: value}: a string field keeps its text as
    written ("no", "1e-3" stay strings), `null` clears an optional field, anything else is read as YAML.
    `config_path`: the YAML the overrides apply to (its `method` decides the types of method_options.*)."""
    method = raw.get("method")
    if method is None and config_path is not None:
        data = yaml.safe_load(Path(config_path).read_text()) if Path(config_path).is_file() else None
        method = data.get("method") if isinstance(data, dict) else None
    method_class = registry.method(method or TrainConfig.method).config_class
    return {dotted: read_value(text, field_type(dotted.split("."), method_class)) for dotted, text in raw.items()}


def field_type(keys: list[str], method_class: type):
    """The annotated type of a dotted field of a training config (None when unknown)."""
    owner: type | None = TrainConfig
    while keys and owner is not None:
        key, keys = keys[0], keys[1:]
        hints = typing.get_type_hints(owner) if dataclasses.is_dataclass(owner) else {}
        nested = {("task",): TaskSpec, ("calibration",): CalibrationConfig, ("method_options",): method_class}
        if owner is TrainConfig and key == "tasks" and keys and keys[0].isdigit():
            owner, keys = TaskConfig, keys[1:]
        elif (key,) in nested and owner in (TrainConfig, TaskConfig):
            owner = nested[(key,)]
        elif not keys:
            return hints.get(key)
        else:
            return None
    return None


def read_value(text: str, hint):
    """The command-line text as a value of type `hint`."""
    if text.strip().lower() in ("null", "none", "~") and is_optional(hint):
        return None
    if is_text(hint):
        return text
    kinds = set(typing.get_args(hint)) if is_union(hint) else {hint}
    for kind in (int, float):  # YAML reads 1e-3 as a string
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                pass
    return yaml.safe_load(text)


def is_text(hint) -> bool:
    return hint is str or (
        is_union(hint) and str in typing.get_args(hint) and set(typing.get_args(hint)) <= {str, type(None)}
    )


def is_optional(hint) -> bool:
    return hint is None or (is_union(hint) and type(None) in typing.get_args(hint))


def is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def field_docs(cls) -> dict[str, str]:
    """{field: its docstring} of a dataclass: the string literal written under each field in its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def help_text() -> str:
    """Every field of a training config (nested ones dotted), with its default and docstring."""
    sections = [("", TrainConfig), ("task.", TaskSpec), ("calibration.", CalibrationConfig), ("tasks.I.", TaskConfig)]
    lines = [
        "Fields of a training config (YAML, or --field value on the command line; nested with dots, e.g. "
        "--task.max_length 96):"
    ]
    for prefix, cls in sections:
        docs = field_docs(cls)
        for item in dataclasses.fields(cls):
            default = (
                item.default
                if item.default is not dataclasses.MISSING
                else ("required" if item.default_factory is dataclasses.MISSING else item.default_factory())
            )
            if dataclasses.is_dataclass(default):
                default = "see below"
            lines.append(f"  {prefix}{item.name} (default: {default}): {docs.get(item.name, '')}")
    lines.append("Methods (method): " + registry.describe_methods() + ".")
    lines.append(
        "Task types (task_type): " + ", ".join(e.name for e in registry.task_types() if e.behaviour is not None) + "."
    )
    return "\n".join(lines)
