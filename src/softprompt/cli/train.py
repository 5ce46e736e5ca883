"""`softprompt train` and `softprompt demo`."""

from __future__ import annotations

from pathlib import Path

from ..training import TrainConfig, help_text, train
from .options import HelpFormatter, option, parse_overrides


def add_commands(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a soft prompt",
        epilog=help_text(),
        formatter_class=HelpFormatter,
        description="Train a soft prompt from a YAML config; override any field with --field value "
        "(nested with dots: --task.max-length 96).",
    )
    option(parser, "--config", help="YAML run config, e.g. configs/twitter_complaints/prompt_tuning.yaml")
    option(parser, "--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint after a crash")
    parser.set_defaults(run=command_train)


def command_train(args, extra) -> int:
    overrides = parse_overrides(extra, args.config)
    config = TrainConfig.from_yaml(args.config, overrides) if args.config else TrainConfig.from_dict({}, overrides)
    final = train(config, resume=args.resume)
    print(f"Adapter: {Path(config.output_dir) / 'adapter'}")
    return 0 if final is not None else 1
