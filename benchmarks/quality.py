"""Dev-set quality of the shipped twitter_complaints configs, over several seeds, and of their ensembles.

    .venv/bin/python benchmarks/quality.py                                   # 3 methods x 3 seeds (~35 min)
    .venv/bin/python benchmarks/quality.py --methods prompt_tuning --seeds 42 43 44 45 46
    .venv/bin/python benchmarks/quality.py --table benchmarks/results/quality.json

Each run is `softprompt train --config configs/twitter_complaints/METHOD.yaml --seed S --eval_file null`
(dev.csv is never seen in training), then label scoring of the 400 labelled dev tweets with the saved
adapter. The ensemble averages the class probabilities of a method's seeds, as
`softprompt eval ADAPTER ADAPTER ...` does. Runs already in the results file are reused (delete it to redo).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "twitter_complaints" / "dev.csv"
METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]


def train_and_score(method: str, seed: int, overrides: dict, runs: Path) -> dict:
    from softprompt import Predictor
    from softprompt.data import load_table
    from softprompt.train import TrainConfig, train

    output_dir = runs / f"{method}-seed{seed}"
    settings = {"seed": seed, "eval_file": None, "output_dir": str(output_dir), "progress": False, **overrides}
    config = TrainConfig.from_yaml(ROOT / "configs" / "twitter_complaints" / f"{method}.yaml", settings)
    started = time.time()
    train(config)
    seconds = time.time() - started
    predictor = Predictor.from_pretrained(str(output_dir / "adapter"), device="cpu")
    encoder = predictor.task()
    scores = torch.stack(predictor.scores(load_table(str(DEV)).rows))  # [400, classes] label log-likelihoods
    return {
        "method": method,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "class_names": encoder.class_names,
        "log_probs": [[round(v, 5) for v in row] for row in scores.log_softmax(-1).tolist()],
    }


def dev_gold(class_names: list[str]) -> list[int]:
    """Gold class positions of the dev tweets, read from ../shared (labels are not copied into results)."""
    from softprompt.data import load_table

    labels = ["Unlabeled", "complaint", "no complaint"]
    return [class_names.index(labels[int(row["Label"])]) for row in load_table(str(DEV)).rows]


def metrics(run_gold: list[int], log_probs: torch.Tensor, class_names: list[str]) -> dict:
    from softprompt.evaluate import classification_metrics

    m = classification_metrics(run_gold, log_probs.argmax(-1).tolist(), class_names)
    return {"accuracy": round(m["accuracy"], 3), "macro_f1": round(m["macro_f1"], 3)}


def table(runs: list[dict]) -> str:
    lines = [
        "| method | seeds | macro-F1 per seed | mean macro-F1 (sd) | mean accuracy | ensemble macro-F1 | ensemble accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        names = mine[0]["class_names"]
        gold = dev_gold(names)
        single = [metrics(gold, torch.tensor(r["log_probs"]), names) for r in mine]
        f1s = [m["macro_f1"] for m in single]
        accuracies = [m["accuracy"] for m in single]
        averaged = torch.stack([torch.tensor(r["log_probs"]).exp() for r in mine]).mean(0).log()
        ensemble = metrics(gold, averaged, names)
        sd = statistics.stdev(f1s) if len(f1s) > 1 else 0.0
        lines.append(
            f"| {method} | {', '.join(str(r['seed']) for r in mine)} | {', '.join(f'{f:.3f}' for f in f1s)} "
            f"| {statistics.mean(f1s):.3f} ({sd:.3f}) | {statistics.mean(accuracies):.3f} "
            f"| {ensemble['macro_f1']:.3f} | {ensemble['accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quality"), help="where the adapters go")
    parser.add_argument("--table", metavar="RESULTS", help="only print the table of a results file")
    args = parser.parse_args()
    if not DEV.is_file():
        print(f"skipped: {DEV} is absent (the benchmark reads ../shared/data/twitter_complaints)")
        return
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["runs"]))
        return
    import yaml

    overrides = {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in args.set)}
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {"overrides": overrides, "runs": []}
    if results["overrides"] != overrides:
        raise SystemExit(f"{path} holds runs with overrides {results['overrides']}; give another --results.")
    for method in args.methods:
        for seed in args.seeds:
            if any(r["method"] == method and r["seed"] == seed for r in results["runs"]):
                continue
            results["runs"].append(train_and_score(method, seed, overrides, Path(args.runs)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results))
            print(table(results["runs"]), flush=True)
    print(table(results["runs"]))


if __name__ == "__main__":
    main()
