"""Choose recipe options by cross-validation on the 50 train tweets only (dev.csv is never read).

    .venv/bin/python benchmarks/recipe_cv.py                                    # prompt_tuning as shipped, 5 folds
    .venv/bin/python benchmarks/recipe_cv.py --method prefix_tuning --name v2 --set lr=0.01 ...
    .venv/bin/python benchmarks/recipe_cv.py --table                             # every candidate so far

Each candidate (a config plus overrides) trains on one of 2 stratified folds of train.csv (25 tweets) and scores
the other, for 2 independent splits (4 runs, about one full run's CPU time), plus a fixed sample of unlabelled test tweets (none of them in dev.csv) and a few content-free inputs.
Scoring options are then compared on the same runs, with the pooled held-out predictions of a split's folds (all 50
tweets, each predicted once), averaged over the splits: plain label scoring; calibrated by the class prior on the unlabelled tweets (`calibration` of the
Predictor); calibrated on the content-free inputs (Zhao et al. 2021). Runs are cached in the results file.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "twitter_complaints"
CONTENT_FREE = ["N/A", "", "[MASK]"]
LABELS = ["Unlabeled", "complaint", "no complaint"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def folds(rows: list[dict], k: int, seed: int = 0) -> list[list[int]]:
    """Stratified folds: row positions of each fold."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    for label in sorted({r["Label"] for r in rows}):
        members = [i for i, r in enumerate(rows) if r["Label"] == label]
        rng.shuffle(members)
        for n, i in enumerate(members):
            out[n % k].append(i)
    return out


def unlabelled_sample(count: int, seed: int = 0) -> list[str]:
    """`count` test tweets that are not in dev.csv (dev is a labelled sample of test)."""
    dev = {r["Tweet text"] for r in read_rows(DATA / "dev.csv")}
    texts = [r["Tweet text"] for r in read_rows(DATA / "test.csv") if r["Tweet text"] not in dev]
    return random.Random(seed).sample(texts, count)


def run_fold(method: str, overrides: dict, repeat: int, fold: int, held: list[int], rows: list[dict], unlabelled: list[str], runs: Path) -> dict:
    from softprompt import Predictor
    from softprompt.train import TrainConfig, train

    folder = runs / f"split{repeat}-fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    train_csv = folder / "train.csv"
    with open(train_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for i, r in enumerate(rows) if i not in set(held))
    settings = {"seed": 42, "eval_file": None, "output_dir": str(folder), "progress": False, "calibration": None, **overrides,
                "train_file": str(train_csv)}  # calibration: compared below on the same runs
    config = TrainConfig.from_yaml(ROOT / "configs" / "twitter_complaints" / f"{method}.yaml", settings)
    started = time.time()
    train(config, resume=True)  # a fold trained before (e.g. a crash while scoring) is reused from its checkpoint
    predictor = Predictor.from_pretrained(str(folder / "adapter"), device="cpu")
    names = predictor.task().class_names

    def log_probs(texts):
        return [[round(v, 5) for v in row] for row in torch.stack(predictor.scores(texts)).log_softmax(-1).tolist()]

    return {
        "repeat": repeat, "fold": fold, "seconds": round(time.time() - started, 1), "class_names": names,
        "gold": [names.index(LABELS[int(rows[i]["Label"])]) for i in held],
        "held_log_probs": log_probs([rows[i]["Tweet text"] for i in held]),
        "unlabelled_log_probs": log_probs(unlabelled),
        "content_free_log_probs": log_probs(CONTENT_FREE),
    }


def scoring_options(runs: list[dict]) -> dict[str, float]:
    """Held-out macro-F1 of each scoring option: all folds of a split pooled (every train tweet predicted once),
    averaged over the splits; and the mean of the single folds'."""
    from softprompt.calibration import calibrate, estimate_prior
    from softprompt.evaluate import classification_metrics

    names = runs[0]["class_names"]
    options = {"plain": [], "prior(unlabelled)": [], "prior(content-free)": []}
    for r in runs:
        held = torch.tensor(r["held_log_probs"]).exp()
        options["plain"].append(held)
        options["prior(unlabelled)"].append(calibrate(held, estimate_prior(torch.tensor(r["unlabelled_log_probs"]).exp())))
        options["prior(content-free)"].append(calibrate(held, estimate_prior(torch.tensor(r["content_free_log_probs"]).exp())))
    out = {}
    for name, parts in options.items():
        pooled = []
        for repeat in sorted({r["repeat"] for r in runs}):
            mine = [i for i, r in enumerate(runs) if r["repeat"] == repeat]
            gold = [g for i in mine for g in runs[i]["gold"]]
            predicted = torch.cat([parts[i] for i in mine]).argmax(-1).tolist()
            pooled.append(classification_metrics(gold, predicted, names)["macro_f1"])
        out[name] = round(statistics.mean(pooled), 3)
        per_fold = [classification_metrics(r["gold"], p.argmax(-1).tolist(), names)["macro_f1"] for r, p in zip(runs, parts)]
        out[name + " fold mean"] = round(statistics.mean(per_fold), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="prompt_tuning")
    parser.add_argument("--name", default="shipped", help="the candidate's name in the results file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="independent fold splits (seeds 0, 1, ...)")
    parser.add_argument("--unlabelled", type=int, default=200, help="how many unlabelled test tweets estimate the prior")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "recipe_cv.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "recipe_cv"))
    parser.add_argument("--table", action="store_true", help="only print the figures of the results file")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {"candidates": {}}
    if not args.table:
        import yaml

        overrides = {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in args.set)}
        key = f"{args.method}/{args.name}"
        entry = results["candidates"].setdefault(key, {"method": args.method, "overrides": overrides, "runs": []})
        if entry["overrides"] != overrides:
            raise SystemExit(f"{key} was run with overrides {entry['overrides']}: give another --name.")
        rows = read_rows(DATA / "train.csv")
        unlabelled = unlabelled_sample(args.unlabelled)
        for repeat in range(args.repeats):
            for fold, held in enumerate(folds(rows, args.folds, seed=repeat)):
                if any(r["repeat"] == repeat and r["fold"] == fold for r in entry["runs"]):
                    continue
                entry["runs"].append(run_fold(args.method, overrides, repeat, fold, held, rows, unlabelled, Path(args.runs) / key))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results))
                print(key, f"split {repeat} fold {fold}", scoring_options(entry["runs"]), flush=True)
    for key, entry in results["candidates"].items():
        if entry["runs"]:
            print(f"{key} {entry['overrides']} ({len(entry['runs'])} folds): {scoring_options(entry['runs'])}")


if __name__ == "__main__":
    main()
