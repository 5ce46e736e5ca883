"""Self-training on twitter_complaints: an ensemble labels unlabelled tweets, a new prompt trains on both.

    .venv/bin/python benchmarks/self_training.py          # ~25 min after benchmarks/quality.py (~45 min)

1. Teacher: the five seeds' adapters of benchmarks/quality.py for --method (trained there if missing).
2. Pool: --pool tweets of the unlabelled RAFT test split, minus every tweet of dev.csv (so the
   evaluation tweets are never seen, labelled or not).
3. The teacher ensemble's most confident --per-class tweets of each class become pseudo-labelled rows.
4. Students: the same config trained on the 50 labelled + pseudo-labelled rows for --epochs epochs
   (seeds 42 43 44), each scored on dev; then their ensemble. Results: results/self_training.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

import torch

from quality import ROOT, TWITTER, dev_gold, metrics, train_and_score

DEV = TWITTER.dev
DATA = DEV.parent


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="prompt_tuning")
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--students", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quality"))
    args = parser.parse_args()
    if not DEV.is_file():
        print(f"skipped: {DATA} is absent (the benchmark reads ../shared/data/twitter_complaints)")
        return
    from softprompt import Predictor

    runs = Path(args.runs)
    teachers = [runs / f"{args.method}-seed{seed}" / "adapter" for seed in (42, 43, 44, 45, 46)]
    for seed, adapter in zip((42, 43, 44, 45, 46), teachers):
        if not adapter.is_dir():
            train_and_score(args.method, seed, {}, runs)

    dev_texts = {row["Tweet text"] for row in read_csv(DEV)}
    pool = [row for row in read_csv(DATA / "test.csv") if row["Tweet text"] not in dev_texts]
    random.Random(0).shuffle(pool)
    pool = pool[: args.pool]
    predictor = Predictor.from_pretrained([str(t) for t in teachers], device="cpu")  # one base model, five prompts
    probabilities = predictor.ensemble_probabilities(pool, predictor.adapter_names, progress=True)  # [pool, K]
    encoder = predictor.row_tokenizer()
    complaint = encoder.class_names.index("complaint")
    order = probabilities[:, complaint].argsort(descending=True).tolist()
    label_ids = {"complaint": 1, "no complaint": 2}  # the dataset's ClassLabel ids
    pseudo = [{**pool[i], "Label": label_ids["complaint"]} for i in order[: args.per_class]]
    pseudo += [{**pool[i], "Label": label_ids["no complaint"]} for i in order[-args.per_class :]]
    train_rows = read_csv(DATA / "train.csv") + pseudo
    combined = runs / f"self_training_{args.method}.csv"
    with open(combined, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["Tweet text", "ID", "Label"])
        writer.writeheader()
        writer.writerows({key: row[key] for key in ("Tweet text", "ID", "Label")} for row in train_rows)

    students = [
        train_and_score(args.method, seed, {"train_file": str(combined), "epochs": args.epochs}, runs / "self_training")
        for seed in args.students
    ]
    names = students[0]["class_names"]
    gold = dev_gold(names)
    single = [metrics(gold, torch.tensor(s["log_probs"]), names) for s in students]
    averaged = torch.stack([torch.tensor(s["log_probs"]).exp() for s in students]).mean(0).log()
    result = {
        "method": args.method,
        "pool": args.pool,
        "per_class": args.per_class,
        "epochs": args.epochs,
        "pool_share_predicted_complaint": round((probabilities.argmax(-1) == complaint).float().mean().item(), 3),
        "students": [{"seed": s["seed"], **m} for s, m in zip(students, single)],
        "student_ensemble": metrics(gold, averaged, names),
    }
    out = ROOT / "benchmarks" / "results" / f"self_training_{args.method}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
