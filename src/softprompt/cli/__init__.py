"""The `softprompt` command: train, eval, predict, calibrate, info, push, serve, demo. A thin layer over the library:
each module adds its commands' options and calls the library (training/, inference/, serving/)."""

from __future__ import annotations

import argparse
import sys

from ..errors import USER_ERRORS
from ..version import __version__
from . import adapters, demo, predict, serve, train
from .options import dashed

COMMANDS = (train, predict, adapters, serve, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt",
        description="Prompt tuning, p-tuning, prefix tuning and their kin for frozen transformer models.",
    )
    parser.add_argument("--version", action="version", version=f"softprompt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("train", "demo"):  # their --field overrides name config fields as written
        argv = dashed(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict":  # texts may come after options (or after --): argparse leaves those in `extra`
        cut = extra.index("--") if "--" in extra else len(extra)
        args.texts += [text for text in extra[:cut] if not text.startswith("-")] + extra[cut + 1 :]
        extra = [text for text in extra[:cut] if text.startswith("-")]
    if extra and args.command not in ("train", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args, extra)
    except (*USER_ERRORS, ConnectionError, ValueError) as error:
        print(f"softprompt {args.command}: error: {error}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
