"""Choose recipe options by cross-validation on a RAFT task's 50 train rows only (its dev rows are never read).

    .venv/bin/python benchmarks/recipe_cv.py                                    # prompt_tuning as shipped, 5 folds
    .venv/bin/python benchmarks/recipe_cv.py --method prefix_tuning --name v2 --set lr=0.01 ...
    .venv/bin/python benchmarks/recipe_cv.py --task banking77 --method prefix_tuning --name shipped --unlabelled 100
    # PEFT's guide recipe (quality.py):
    .venv/bin/python benchmarks/recipe_cv.py --task tweet_eval_hate --method peft_guide
    .venv/bin/python benchmarks/recipe_cv.py --table                             # every candidate so far
    .venv/bin/python benchmarks/recipe_cv.py --smoke                             # seconds: a tiny model, toy rows

Each candidate (configs/TASK/METHOD.yaml plus overrides) trains on one of 2 stratified folds of the 50 train rows
(25) and scores the other, for 2 independent splits (4 runs, about one full run's CPU time), plus a fixed sample of
unlabelled test rows (none of them in the dev rows of benchmarks/quality.py) and a few content-free inputs.
Scoring options are then compared on the same runs, with the pooled held-out predictions of a split's folds (all 50
tweets, each predicted once), averaged over the splits: plain label scoring; calibrated by the class prior on the
unlabelled tweets (`calibration` of the Predictor); calibrated on the content-free inputs (Zhao et al. 2021). Runs are
cached in the results file.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

import common
from quality import TASKS, Task, method_config, task_settings, unlabelled_texts

CONTENT_FREE = ["N/A", "", "[MASK]"]


def folds(rows: list[dict], k: int, seed: int = 0, column: str = "Label") -> list[list[int]]:
    """Stratified folds: row positions of each fold. A class of at least k rows is shuffled and dealt from fold 0
    on; the rows of rarer classes (banking77: 37 intents in 50 rows) are shuffled together (per seed) and dealt on
    round the folds, so that the folds keep one size and each split places them anew."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    rare: list[int] = []
    for label in sorted({r[column] for r in rows}):
        members = [i for i, r in enumerate(rows) if r[column] == label]
        if len(members) < k:
            rare += members
            continue
        rng.shuffle(members)
        for n, i in enumerate(members):
            out[n % k].append(i)
    random.Random(seed + 1000).shuffle(rare)  # its own generator: the frequent classes' folds stay as they were
    for n, i in enumerate(rare):
        out[n % k].append(i)
    return out


def run_fold(
    task: Task,
    method: str,
    overrides: dict,
    repeat: int,
    fold: int,
    held: list[int],
    rows: list[dict],
    unlabelled: list[str],
    runs: Path,
) -> dict:
    from softprompt import Predictor
    from softprompt.training import train

    folder = runs / f"split{repeat}-fold{fold}"
    train_csv = common.write_rows(folder / "train.csv", [r for i, r in enumerate(rows) if i not in set(held)])
    settings = {
        "seed": 42,
        "eval_file": None,
        "output_dir": str(folder),
        "progress": False,
        "calibration": None,
        **overrides,
        "train_file": str(train_csv),
    }  # calibration: compared below on the same runs
    config = method_config(task, method, settings)  # peft_guide: PEFT's guide recipe on the task's prompt-tuning config
    column, label_column, label_names = task_settings(task)
    started = time.time()
    train(config, resume=True)  # a fold trained before (e.g. a crash while scoring) is reused from its checkpoint
    predictor = Predictor.from_pretrained(str(folder / "adapter"), device="cpu")
    names = predictor.row_tokenizer().class_names

    def log_probs(texts):
        return common.rounded(torch.stack(predictor.scores(texts)))

    return {
        "repeat": repeat,
        "fold": fold,
        "held": held,
        "seconds": round(time.time() - started, 1),
        "class_names": names,
        "gold": [names.index(label_names[int(rows[i][label_column])]) for i in held],
        "held_log_probs": log_probs([rows[i][column] for i in held]),
        "unlabelled_log_probs": log_probs(unlabelled),
        "content_free_log_probs": log_probs(CONTENT_FREE),
    }


def scoring_options(runs: list[dict]) -> dict[str, float]:
    """Held-out macro-F1 of each scoring option: all folds of a split pooled (every train tweet predicted once),
    averaged over the splits; and the mean of the single folds'."""
    from softprompt.inference.calibration import calibrate, estimate_prior
    from softprompt.inference.metrics import classification_metrics

    names = runs[0]["class_names"]
    options = {"plain": [], "prior(unlabelled)": [], "prior(content-free)": []}
    for r in runs:
        held = torch.tensor(r["held_log_probs"]).exp()
        options["plain"].append(held)
        options["prior(unlabelled)"].append(
            calibrate(held, estimate_prior(torch.tensor(r["unlabelled_log_probs"]).exp()))
        )
        options["prior(content-free)"].append(
            calibrate(held, estimate_prior(torch.tensor(r["content_free_log_probs"]).exp()))
        )
    out = {}
    for name, parts in options.items():
        pooled = []
        for repeat in sorted({r["repeat"] for r in runs}):
            mine = [i for i, r in enumerate(runs) if r["repeat"] == repeat]
            gold = [g for i in mine for g in runs[i]["gold"]]
            predicted = torch.cat([parts[i] for i in mine]).argmax(-1).tolist()
            pooled.append(classification_metrics(gold, predicted, names)["macro_f1"])
        out[name] = round(statistics.mean(pooled), 3)
        per_fold = [
            classification_metrics(r["gold"], p.argmax(-1).tolist(), names)["macro_f1"] for r, p in zip(runs, parts)
        ]
        out[name + " fold mean"] = round(statistics.mean(per_fold), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="twitter_complaints", choices=sorted(TASKS))
    parser.add_argument("--method", default="prompt_tuning")
    parser.add_argument("--name", default="shipped", help="the candidate's name in the results file")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="independent fold splits (seeds 0, 1, ...)")
    parser.add_argument(
        "--unlabelled", type=int, default=200, help="how many unlabelled test tweets estimate the prior"
    )
    parser.add_argument("--results", help="default: benchmarks/results/recipe_cv[_TASK].json")
    parser.add_argument("--runs", help="default: runs/recipe_cv[/TASK]")
    parser.add_argument("--table", action="store_true", help="only print the figures of the results file")
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke is not None:  # 2 x 2 folds of 8 toy rows, 2 epochs, 4 unlabelled texts
        common.start_smoke(args.smoke)
        args.unlabelled, args.set = 4, ["epochs=2", *args.set]
    task = TASKS[args.task]
    if common.absent(task.train):
        return
    suffix = common.task_suffix(task.name)  # twitter's candidates came first
    path = common.results_path(f"recipe_cv{suffix}.json", args.results)
    runs = Path(args.runs or common.task_runs_folder("recipe_cv", task.name))
    results = common.read_json(path, {"candidates": {}})
    if not args.table:
        overrides = common.parse_overrides(args.set)
        key = f"{args.method}/{args.name}"
        settings = {"task": task.name, "folds": args.folds, "unlabelled": args.unlabelled}
        entry = results["candidates"].setdefault(
            key, {"method": args.method, "overrides": overrides, **settings, "runs": []}
        )
        if entry["overrides"] != overrides:
            raise SystemExit(f"{key} was run with overrides {entry['overrides']}: give another --name.")
        for name, value in settings.items():  # (entries from before these were recorded: twitter, 2 folds, 200)
            if entry.get(name, {"task": "twitter_complaints", "folds": 2, "unlabelled": 200}[name]) != value:
                raise SystemExit(f"{key} was run with {name}={entry.get(name)!r}: give another --name or --results.")
        rows = common.read_rows(task.train)
        unlabelled = unlabelled_texts(task, args.unlabelled)
        label_column = task_settings(task)[1]
        for repeat in range(args.repeats):
            for fold, held in enumerate(folds(rows, args.folds, seed=repeat, column=label_column)):
                cached = [r for r in entry["runs"] if r["repeat"] == repeat and r["fold"] == fold]
                if cached and cached[0].get("held", held) != held:
                    raise SystemExit(f"{key}: split {repeat} fold {fold} was run on other rows: give another --name.")
                if cached:
                    continue
                entry["runs"].append(
                    run_fold(task, args.method, overrides, repeat, fold, held, rows, unlabelled, runs / key)
                )
                common.write_json(path, results)
                print(key, f"split {repeat} fold {fold}", scoring_options(entry["runs"]), flush=True)
    for key, entry in results["candidates"].items():
        if entry["runs"]:
            print(f"{key} {entry['overrides']} ({len(entry['runs'])} folds): {scoring_options(entry['runs'])}")


if __name__ == "__main__":
    main()
