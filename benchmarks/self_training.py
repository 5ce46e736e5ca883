"""Self-training on twitter_complaints: an ensemble labels unlabelled tweets, a new prompt trains on both.

    .venv/bin/python benchmarks/self_training.py          # ~25 min after benchmarks/quality.py (~45 min)
    .venv/bin/python benchmarks/self_training.py --smoke  # seconds: a tiny model, toy rows, 2 teachers, 1 student

1. Teacher: the five seeds' adapters of benchmarks/quality.py for --method (trained there if missing).
2. Pool: --pool tweets of the unlabelled RAFT test split, minus every tweet of dev.csv (so the
   evaluation tweets are never seen, labelled or not).
3. The teacher ensemble's most confident --per-class tweets of each class become pseudo-labelled rows.
4. Students: the same config trained on the 50 labelled + pseudo-labelled rows for --epochs epochs
   (seeds 42 43 44), each scored on dev; then their ensemble. Results: results/self_training_METHOD.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

import common
from quality import TWITTER, dev_gold, metrics, train_and_score

TEACHER_SEEDS = [42, 43, 44, 45, 46]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="prompt_tuning")
    parser.add_argument("--pool", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--students", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--runs", help="quality.py's adapters (default: runs/quality)")
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    teacher_seeds, teacher_settings = TEACHER_SEEDS, {}
    if args.smoke is not None:  # 2 teachers and 1 student of 2 epochs, 2 pseudo-labelled rows a class
        common.start_smoke(args.smoke)
        teacher_seeds, teacher_settings = TEACHER_SEEDS[:2], {"epochs": 2}
        args.pool, args.per_class, args.epochs, args.students = 16, 2, 2, [42]
    if common.absent(TWITTER.train, TWITTER.dev, TWITTER.unlabelled):
        return
    from softprompt import Predictor

    runs = Path(args.runs or common.runs_folder("quality"))
    teachers = [runs / f"{args.method}-seed{seed}" / "adapter" for seed in teacher_seeds]
    for seed, adapter in zip(teacher_seeds, teachers):
        if not adapter.is_dir():
            train_and_score(args.method, seed, teacher_settings, runs)

    dev_texts = {row["Tweet text"] for row in common.read_rows(TWITTER.dev)}
    pool = [row for row in common.read_rows(TWITTER.unlabelled) if row["Tweet text"] not in dev_texts]
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
    train_rows = common.read_rows(TWITTER.train) + pseudo
    combined = common.write_rows(runs / f"self_training_{args.method}.csv", train_rows, ["Tweet text", "ID", "Label"])

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
    common.write_json(common.results_path(f"self_training_{args.method}.json"), result, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
