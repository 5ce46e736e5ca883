"""`softprompt demo`: train a prompt on the bundled customer messages, score it on held-out ones, then classify
eight new messages (four plain complaints, four plain non-complaints) and show which it got right.

Routes: `encoder` (the default: prompt tuning on the offline encoder all-MiniLM-L6-v2 with a classification head,
about a minute on a CPU, the strongest on this job) and `causal-lm` (prompt tuning of the offline default model
SmolLM2-135M-Instruct, which answers yes/no; about five minutes on a CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from ..data import load_table
from ..inference import Predictor
from ..training import TrainConfig, train
from .options import HelpFormatter, option, parse_overrides

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
ROUTES = {
    "encoder": "prompt tuning on the encoder all-MiniLM-L6-v2 (22M parameters) with a classification head",
    "causal-lm": "prompt tuning of SmolLM2-135M-Instruct (135M parameters), answering yes or no",
}
# Written before either route was trained on them, and kept whatever the routes answer.
NEW_MESSAGES = [
    ("@QuickCart my parcel was marked delivered three days ago and it is nowhere to be found", "complaint"),
    ("@MapleCoffee the new oat latte is lovely, thanks for bringing it back!", "no complaint"),
    ("@SwiftRail third cancellation this week and not a single announcement. I'm done with you.", "complaint"),
    ("@BrightBank I was charged twice for the same purchase and nobody answers the phone", "complaint"),
    ("@CityLibrary what time do you open on Sunday?", "no complaint"),
    ("@PixelPhones the screen on my new phone cracked on day two and support keeps closing my ticket", "complaint"),
    ("Congratulations @HarborFC on the win last night, what a match!", "no complaint"),
    ("@GreenGrocer do you deliver to the north side of town?", "no complaint"),
]


def add_commands(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="train on the bundled demo messages with an offline model, score held-out ones, classify new ones",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    option(demo, "--route", choices=list(ROUTES), default="encoder", help="which model and method to train")
    demo.set_defaults(run=command_demo)


def command_demo(args, extra) -> int:
    name = "encoder.yaml" if args.route == "encoder" else "causal_lm.yaml"
    config = yaml.safe_load((DEMO_DATA / name).read_text())
    config.update(train_file=str(DEMO_DATA / "train.csv"), eval_file=str(DEMO_DATA / "dev.csv"))
    config = TrainConfig.from_dict(config, parse_overrides(extra))
    print(f"Route: {ROUTES[args.route]}.")
    started = time.time()
    final = train(config)
    rows = {split: len(load_table(str(DEMO_DATA / f"{split}.csv")).rows) for split in ("train", "dev")}
    print(
        f"\nTrained on the {rows['train']} bundled messages in {time.time() - started:.0f} s. "
        f"On {rows['dev']} held-out messages it did not train on: "
        f"accuracy {final['eval_accuracy']:.3f}, macro-F1 {final['eval_macro_f1']:.3f}."
    )
    adapter = Path(config.output_dir) / "adapter"
    predictions = Predictor.from_pretrained(str(adapter)).classify([text for text, _ in NEW_MESSAGES])
    right = 0
    print(f"Adapter saved in {adapter}. Eight new messages:\n\n  p(complaint)  label          expected")
    for (text, expected), prediction in zip(NEW_MESSAGES, predictions):
        right += prediction["label"] == expected
        mark = "right" if prediction["label"] == expected else "WRONG"
        shown = f"{prediction['probabilities']['complaint']:.3f}".rjust(14)
        print(f"{shown}  {prediction['label']:<13}  {expected:<13} {mark}  {text}")
    print(f"\n{right} of {len(NEW_MESSAGES)} right.")
    return 0
