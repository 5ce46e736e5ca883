"""`softprompt demo`: train on the bundled demo messages with the offline default model, then classify new ones."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..training import TrainConfig, train
from .options import HelpFormatter, parse_overrides
from .predict import command_predict

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
DEMO_TEXTS = [
    "@QuickCart my parcel was marked delivered three days ago and it is nowhere to be found",
    "@MapleCoffee the new oat latte is lovely, thanks for bringing it back!",
]


def add_commands(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="train on the bundled demo data with the offline default model, then predict",
        formatter_class=HelpFormatter,
    )
    demo.set_defaults(run=command_demo)


def command_demo(args, extra) -> int:
    """Train prompt tuning on the bundled demo messages, report dev accuracy, classify two new messages."""
    overrides = parse_overrides(extra)
    config = yaml.safe_load((DEMO_DATA / "demo.yaml").read_text())
    config["train_file"] = str(DEMO_DATA / "train.csv")
    config["eval_file"] = str(DEMO_DATA / "dev.csv")
    config = TrainConfig.from_dict(config, overrides)
    final = train(config)
    accuracy, f1 = final["eval_accuracy"], final["eval_macro_f1"]
    print(f"\nDev accuracy after {final['epoch']} epochs: {accuracy:.3f} (macro-F1 {f1:.3f})")
    adapter = str(Path(config.output_dir) / "adapter")
    print(f"Adapter saved in {adapter}\n\nClassifying two new messages with it:")
    predict = argparse.Namespace(
        adapter=adapter, texts=list(DEMO_TEXTS), input=None, output=None, generate=False, template=False,
        ensemble=[], batch_size=16, task=None, model=None, device=None, dtype="auto", no_calibration=False,
    )  # fmt: skip
    return command_predict(predict, [])
