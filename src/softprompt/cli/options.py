"""What the commands share: options spelled one way in the docs (--batch-size) and accepted either way
(--batch_size), the base-model/device/dtype options, and `--field value` overrides of a training config."""

from __future__ import annotations

import argparse

from ..base_models import DTYPES
from ..training import typed_overrides


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Defaults shown in help (when there is one to show); descriptions and epilogs printed as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def option(parser, name: str, **kwargs) -> None:
    """An option, documented as --a-b (main() also takes --a_b)."""
    parser.add_argument(name, **kwargs)


def dashed(argv: list[str]) -> list[str]:
    """--batch_size 8 -> --batch-size 8: options accepted in either spelling (up to a bare --)."""
    out = []
    for n, token in enumerate(argv):
        if token == "--":
            return out + argv[n:]
        if token.startswith("--") and "_" in token.split("=", 1)[0]:
            key, sep, value = token.partition("=")
            token = key.replace("_", "-") + sep + value
        out.append(token)
    return out


def add_model_options(parser, device_default=None) -> None:
    """--model, --device, --dtype: where and how the base model runs."""
    option(parser, "--model", default=None, help="the base model (default: the one the adapter names)")
    option(parser, "--device", default=device_default, help="cpu, cuda, cuda:1, mps or auto (None: CUDA if present)")
    option(
        parser,
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="the base model's dtype; auto: as the model was saved",
    )


def add_task_option(parser) -> None:
    option(
        parser,
        "--task",
        default=None,
        metavar="NAME_OR_ID",
        help="for an adapter trained on several tasks (tasks: in its config): which one, by name or task id",
    )


def add_ensemble_option(parser) -> None:
    option(
        parser,
        "--ensemble",
        action="append",
        default=[],
        metavar="ADAPTER",
        help="one more adapter for the same labels (e.g. another seed), repeat for more: the class probabilities "
        "are averaged",
    )


def dtype_of(args) -> str | None:
    return None if args.dtype == "auto" else args.dtype


def parse_overrides(pairs: list[str], config_path: str | None = None) -> dict:
    """['--epochs', '3', '--task.max-length=96'] -> {'epochs': 3, 'task.max_length': 96}: each value read as its
    field's type (a string field keeps "no" a string; null clears an optional one)."""
    raw, i = {}, 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--"):
            raise SystemExit(f"Unexpected argument {key!r}: overrides look like --field value.")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(pairs):
            value = pairs[i + 1]
            i += 2
        else:
            raise SystemExit(f"--{key} needs a value.")
        raw[key.replace("-", "_")] = value
    return typed_overrides(raw, config_path)
