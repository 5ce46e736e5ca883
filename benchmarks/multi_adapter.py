"""Many prompts on one frozen model: label-scoring throughput with K = 1, 10, 100 adapters, side by side.

    .venv/bin/python benchmarks/multi_adapter.py                 # 400 dev tweets, K = 1 10 100 (~12 min)
    .venv/bin/python benchmarks/multi_adapter.py --quick         # 64 dev tweets (~4 min)
    .venv/bin/python benchmarks/multi_adapter.py --table benchmarks/results/multi_adapter.json
    .venv/bin/python benchmarks/multi_adapter.py --smoke         # seconds: a tiny model, 8 toy rows, K = 1 2

The twitter_complaints dev tweets are spread uniformly over K prompt-tuning adapters (two trained here,
the others copies of them with perturbed tables, 20 or 10 virtual tokens; the shipped config without its
calibration), and every tweet's two labels are scored (" yes"/" no" + EOS, the shipped config's task), batch 16,
fp32, three ways in one process:
(a) softprompt, batches mixing adapters (`Predictor.scores(texts, adapter=[one name per text])`);
(b) softprompt, texts grouped by adapter, one adapter per batch;
(c) PEFT 0.21 as its users must: one adapter active per forward (`set_adapter` per group), each label
    scored by a forward over prompt + label (PEFT has no cached continuation scoring), both labels of a
    group in one batch.
It also prints the memory an extra adapter costs: its cached keys/values and its file, and the RSS growth.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

import common
from common import rss_mb

CONFIG = common.CONFIGS / "twitter_complaints" / "prompt_tuning.yaml"
MODEL = "smollm2-135m"
BATCH = 16


def train_real_adapters(runs: Path, epochs: int) -> list[Path]:
    """Two real prompts (20 and 10 virtual tokens) trained on the 50 train tweets; reused when present. The config's
    calibration is left out: the scores compared here are the plain ones (as they were before configs calibrated)."""
    from softprompt.training import train

    folders = []
    for tokens in (20, 10):
        out = runs / f"real-{tokens}"
        if not (out / "adapter" / "adapter_model.safetensors").is_file():
            overrides = {
                "epochs": epochs,
                "eval_file": None,
                "output_dir": str(out),
                "progress": False,
                "train_file": str(common.task_file("train")),  # not the config's Hub files
                "calibration": None,
                "method_options.num_virtual_tokens": tokens,
            }
            train(common.local_config(CONFIG, overrides))
        folders.append(out / "adapter")
    return folders


def make_adapters(real: list[Path], count: int, folder: Path) -> dict[str, str]:
    """`count` adapter folders: the real ones, then copies with tables perturbed by 1% of their spread."""
    from safetensors.torch import load_file, save_file

    adapters = {}
    for i in range(count):
        source = real[i % len(real)]
        target = folder / f"a{i}"
        if not target.is_dir():
            shutil.copytree(source, target)
            if i >= len(real):
                table = load_file(str(source / "adapter_model.safetensors"))["prompt_embeddings"]
                noise = torch.randn(table.shape, generator=torch.Generator().manual_seed(i)) * 0.01 * table.std()
                save_file(
                    {"prompt_embeddings": table + noise}, str(target / "adapter_model.safetensors"), {"format": "pt"}
                )
        adapters[f"a{i}"] = str(target)
    return adapters


def spread(count: int, adapters: int, seed: int = 0) -> list[str]:
    names = [f"a{i % adapters}" for i in range(count)]
    random.Random(seed).shuffle(names)
    return names


def softprompt_runs(adapters: dict[str, str], rows: list[dict], names: list[str]) -> dict:
    from softprompt import Predictor

    first = next(iter(adapters))
    predictor = Predictor.from_pretrained({first: adapters[first]}, device="cpu", dtype="float32", batch_size=BATCH)
    predictor.model.prompt_states(first)
    started = time.perf_counter()
    for name, location in list(adapters.items())[1:]:
        predictor.load_adapter(location, name)
        predictor.model.prompt_states(name)  # computed once at load, as a server would
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    mixed = predictor.scores(rows, adapter=names)  # (a) one batch mixes adapters
    mixed_seconds = time.perf_counter() - started

    started = time.perf_counter()
    grouped = [None] * len(rows)  # (b) one adapter per batch
    for name in dict.fromkeys(names):
        members = [i for i, n in enumerate(names) if n == name]
        for i, scores in zip(members, predictor.scores([rows[i] for i in members], adapter=name)):
            grouped[i] = scores
    grouped_seconds = time.perf_counter() - started

    extra = max(len(adapters) - 1, 1)
    states_bytes = predictor.model.prompt_cache_bytes() / len(adapters)
    file_bytes = sum((Path(p) / "adapter_model.safetensors").stat().st_size for p in adapters.values()) / len(adapters)
    examples = predictor.examples(rows, names)
    targets = {n: [predictor.row_tokenizer(n).target_ids(k) for k in range(2)] for n in set(names)}
    return {
        "mixed": {"seconds": mixed_seconds, "texts_per_second": len(rows) / mixed_seconds},
        "grouped": {"seconds": grouped_seconds, "texts_per_second": len(rows) / grouped_seconds},
        "mixed_vs_grouped_max_abs_diff": float((torch.stack(mixed) - torch.stack(grouped)).abs().max()),
        "load_seconds_per_extra_adapter": load_seconds / extra if len(adapters) > 1 else 0.0,
        "cached_states_bytes_per_adapter": states_bytes,
        "file_bytes_per_adapter": file_bytes,
        "predicted": [int(s.argmax()) for s in mixed],
        "prompts": [e.prompt_ids for e in examples],
        "targets": [targets[n] for n in names],
        "pad_id": predictor.tokenizer.pad_token_id,
    }


@torch.no_grad()
def peft_run(
    adapters: dict[str, str], names: list[str], prompts: list[list[int]], targets: list[list[list[int]]], pad_id: int
) -> dict:
    """PEFT's way: set_adapter per group; each label scored by a full forward of prompt + label."""
    import peft

    from softprompt import load_base_model

    items = list(adapters.items())
    model = peft.PeftModel.from_pretrained(
        load_base_model(common.model_name(MODEL)), items[0][1], adapter_name=items[0][0]
    ).eval()
    for name, location in items[1:]:
        model.load_adapter(location, adapter_name=name)
    predicted = [0] * len(prompts)
    started = time.perf_counter()
    for name in dict.fromkeys(names):
        model.set_adapter(name)
        members = sorted((i for i, n in enumerate(names) if n == name), key=lambda i: -len(prompts[i]))
        for start in range(0, len(members), BATCH):
            batch = members[start : start + BATCH]
            sequences = [(i, k, prompts[i] + targets[i][k]) for i in batch for k in range(len(targets[i]))]
            width = max(len(s) for _, _, s in sequences)
            ids = torch.tensor([[pad_id] * (width - len(s)) + s for _, _, s in sequences])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for _, _, s in sequences])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -width:]  # PEFT adds virtual rows in front
            logprobs = logits.float().log_softmax(-1)
            scores: dict[int, list[float]] = {}
            for row, (i, k, _) in enumerate(sequences):
                label = targets[i][k]
                positions = torch.arange(width - len(label) - 1, width - 1)
                scores.setdefault(i, []).append(float(logprobs[row, positions, torch.tensor(label)].sum()))
            for i, values in scores.items():
                predicted[i] = max(range(len(values)), key=values.__getitem__)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "texts_per_second": len(prompts) / seconds, "predicted": predicted}


def memory_per_extra_adapter(library: str, adapters: dict[str, str], scratch: Path) -> float:
    """RSS growth (MB) per adapter after the first, in a fresh process (a reused heap would hide it)."""
    out = scratch / f"rss-{library}.json"
    command = [sys.executable, __file__, "--rss-worker", library, json.dumps(adapters), "--worker-out", str(out)]
    result = common.run_child(command, out)
    if "error" in result:
        raise RuntimeError(f"measuring {library}'s memory per adapter: {result['error']}")
    return result["mb_per_extra_adapter"]


def rss_worker(library: str, adapters: dict[str, str]) -> dict:
    """The child of memory_per_extra_adapter: load the first adapter (and its keys/values), then the others."""
    items = list(adapters.items())
    if library == "softprompt":
        from softprompt import Predictor

        predictor = Predictor.from_pretrained(dict(items[:1]), device="cpu", dtype="float32")
        with torch.no_grad():
            predictor.model.prompt_states(items[0][0])
        before = rss_mb()
        for name, path in items[1:]:
            predictor.load_adapter(path, name)
            with torch.no_grad():
                predictor.model.prompt_states(name)
    else:
        import peft

        from softprompt import load_base_model

        model = peft.PeftModel.from_pretrained(
            load_base_model(common.model_name(MODEL)), items[0][1], adapter_name=items[0][0]
        ).eval()
        before = rss_mb()
        for name, path in items[1:]:
            model.load_adapter(path, adapter_name=name)
    return {"mb_per_extra_adapter": (rss_mb() - before) / (len(items) - 1)}


def table(results: dict) -> str:
    runs = results["runs"]
    base = runs[0]["softprompt"]["mixed"]["texts_per_second"]
    lines = [
        f"{results['texts']} dev tweets, batch {BATCH}, fp32, {results['machine']}",
        "",
        (
            "| adapters K | (a) mixed texts/s | (b) grouped texts/s | (c) PEFT texts/s | (a)/(a, K=1) | (a)/(c) "
            "| (a)=(b) max diff |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s, p = run["softprompt"], run["peft"]
        a = s["mixed"]["texts_per_second"]
        lines.append(
            f"| {run['adapters']} | {a:.1f} | {s['grouped']['texts_per_second']:.1f} | "
            f"{p['texts_per_second']:.1f} | "
            f"{a / base:.2f}x | {a / p['texts_per_second']:.2f}x | {s['mixed_vs_grouped_max_abs_diff']:.1e} |"
        )
    last = runs[-1]
    s, p = last["softprompt"], last["peft"]
    lines += [
        "",
        f"Memory per extra adapter (K={last['adapters']}): "
        f"cached keys/values {s['cached_states_bytes_per_adapter'] / 1024:.0f} KiB "
        f"+ file {s['file_bytes_per_adapter'] / 1024:.0f} KiB = "
        f"{(s['cached_states_bytes_per_adapter'] + s['file_bytes_per_adapter']) / 1024:.0f} KiB; "
        f"measured RSS growth per adapter "
        f"(fresh process): softprompt {s.get('rss_mb_per_extra_adapter', 0) * 1024:.0f} KiB, "
        f"PEFT {p.get('rss_mb_per_extra_adapter', 0) * 1024:.0f} KiB. "
        f"Loading and caching one adapter: {s['load_seconds_per_extra_adapter'] * 1000:.0f} ms.",
        f"Same labels as PEFT on {last['agreement_with_peft']:.1%} of tweets "
        f"(PEFT's left-padded prompt tuning shifts positions, peft#1093).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 dev tweets")
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the two real adapters")
    parser.add_argument("--runs", help="where the adapters go (default: runs/multi_adapter)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--table", help="print the table of a results file and exit")
    parser.add_argument("--rss-worker", nargs=2, metavar=("LIBRARY", "ADAPTERS_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.rss_worker:
        common.write_json(Path(args.worker_out), rss_worker(args.rss_worker[0], json.loads(args.rss_worker[1])))
        return
    if args.table:
        print(table(common.read_json(Path(args.table))))
        return
    if args.smoke is not None:  # 8 texts, K = 1 and 2, adapters trained for 2 epochs
        common.start_smoke(args.smoke)
        args.texts, args.adapters, args.epochs = 8, [1, 2], 2
    dev_file = common.task_file("dev")
    if common.absent(dev_file):
        return
    from softprompt.data import load_table

    count = 64 if args.quick else args.texts
    rows = [{"Tweet text": r["Tweet text"]} for r in load_table(str(dev_file)).rows[:count]]
    runs_dir = Path(args.runs or common.runs_folder("multi_adapter"))
    real = train_real_adapters(runs_dir, args.epochs)
    folders = make_adapters(real, max(args.adapters), runs_dir / "adapters")
    results = {"texts": len(rows), "machine": common.machine_line(), "runs": []}
    for k in args.adapters:
        adapters = dict(list(folders.items())[:k])
        names = spread(len(rows), k)
        ours = softprompt_runs(adapters, rows, names)
        theirs = peft_run(adapters, names, ours.pop("prompts"), ours.pop("targets"), ours.pop("pad_id"))
        if k > 1:
            ours["rss_mb_per_extra_adapter"] = memory_per_extra_adapter("softprompt", adapters, runs_dir)
            theirs["rss_mb_per_extra_adapter"] = memory_per_extra_adapter("peft", adapters, runs_dir)
        agreement = sum(a == b for a, b in zip(ours.pop("predicted"), theirs.pop("predicted"))) / len(rows)
        results["runs"].append({"adapters": k, "softprompt": ours, "peft": theirs, "agreement_with_peft": agreement})
        print(json.dumps(results["runs"][-1]), flush=True)
    output = common.results_path(f"multi_adapter{'_quick' if args.quick else ''}.json", args.output)
    common.write_json(output, results, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
