"""softprompt vs PEFT on the same job: RAFT twitter_complaints with SmolLM2-135M on this CPU.

    .venv/bin/python benchmarks/compare_peft.py            # 10 epochs, 400 dev tweets, 3 methods
    .venv/bin/python benchmarks/compare_peft.py --quick    # 1 epoch, 64 dev tweets (a few minutes)
    .venv/bin/python benchmarks/compare_peft.py --smoke    # seconds: a tiny random model, toy rows

Each (library, method) runs in its own child process, alternating PEFT and softprompt, so that the
peak RSS of each is its own. PEFT follows its prompt-tuning guide: pad every example to 64 tokens,
batch 16, 20 virtual tokens, AdamW + linear schedule, classification by greedy generation.
softprompt trains with the same model, data, seeds, batch size, learning rate and epochs, with its
defaults (dynamic padding, LM head only where the loss needs it), and classifies by label scoring
and by generation. Results go to benchmarks/results/*.json; --table prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import common
from common import peak_rss_mb

MODEL = "smollm2-135m"
LABELS = ["Unlabeled", "complaint", "no complaint"]
INIT_TEXT = "Classify if the tweet is a complaint or not:"
LEARNING_RATES = {"prompt_tuning": 3e-2, "p_tuning": 3e-2, "prefix_tuning": 1e-2}


def metrics_of(gold: list[int], predicted: list[int]) -> dict:
    from softprompt.inference.metrics import classification_metrics

    m = classification_metrics(gold, predicted, LABELS[1:])
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "unmatched": m["unmatched"]}


# ---- PEFT, as in its guide ---------------------------------------------------------------------
def run_peft(method: str, epochs: int, dev_limit: int | None, seed: int) -> dict:
    import peft
    from transformers import get_linear_schedule_with_warmup

    from softprompt import load_base_model, load_tokenizer
    from softprompt.base_models import resolve
    from softprompt.task_types.causal_lm import match_label

    torch.manual_seed(seed)
    name = common.model_name(MODEL)
    tokenizer = load_tokenizer(name)
    model = load_base_model(name)
    configs = {
        "prompt_tuning": lambda: peft.PromptTuningConfig(
            task_type="CAUSAL_LM",
            prompt_tuning_init="TEXT",
            num_virtual_tokens=20,
            prompt_tuning_init_text=INIT_TEXT,
            tokenizer_name_or_path=resolve(name),
        ),
        "p_tuning": lambda: peft.PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=20, encoder_hidden_size=128
        ),
        "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20),
    }
    model = peft.get_peft_model(model, configs[method]())
    max_length, batch_size, pad = 64, 16, tokenizer.pad_token_id

    def encode(row, with_label=True):  # the guide's preprocess_function: left-pad to 64, then cut at 64
        prompt = tokenizer(f"Tweet text : {row['Tweet text']} Label : ")["input_ids"]
        label = tokenizer(LABELS[int(row["Label"])])["input_ids"] + [pad] if with_label else []
        sequence, fill = prompt + label, max(max_length - len(prompt + label), 0)
        ids = ([pad] * fill + sequence)[:max_length]
        mask = ([0] * fill + [1] * len(sequence))[:max_length]
        labels = ([-100] * (fill + len(prompt)) + label)[:max_length]
        return ids, mask, labels

    train = [encode(r) for r in common.task_rows("train")]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATES[method])
    steps = -(-len(train) // batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps * epochs)
    epoch_seconds, real_tokens = [], 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            rows = [train[i] for i in order[start : start + batch_size]]
            batch = {
                k: torch.tensor([r[j] for r in rows]) for j, k in enumerate(("input_ids", "attention_mask", "labels"))
            }
            real_tokens += int(batch["attention_mask"].sum())
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        epoch_seconds.append(time.perf_counter() - started)
    dev = common.task_rows("dev", dev_limit)
    model.eval()
    started = time.perf_counter()
    predicted = []
    for start in range(0, len(dev), batch_size):
        rows = [encode(r, with_label=False) for r in dev[start : start + batch_size]]
        ids = torch.tensor([r[0] for r in rows])
        mask = torch.tensor([r[1] for r in rows])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=tokenizer.eos_token_id
            )
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        predicted += [match_label(t, LABELS[1:]) for t in texts]
    classify_seconds = time.perf_counter() - started
    gold = [int(r["Label"]) - 1 for r in dev]
    return {
        "seconds_per_epoch": sum(epoch_seconds) / epochs,
        "real_tokens_per_second": real_tokens / sum(epoch_seconds),
        "generation": {"seconds": classify_seconds, **metrics_of(gold, predicted)},
        "peak_rss_mb": peak_rss_mb(),
    }


# ---- softprompt, with its defaults -------------------------------------------------------------
def run_softprompt(method: str, epochs: int, dev_limit: int | None, seed: int, workdir: Path) -> dict:
    from softprompt.base_models import load_base_model, load_tokenizer
    from softprompt.core import PeftModel
    from softprompt.data import RowTokenizer, TaskSpec
    from softprompt.task_types.causal_lm import classify_by_generation, score_labels
    from softprompt.training import TrainConfig, train

    options = {"num_virtual_tokens": 20}
    if method == "prompt_tuning":
        options.update(prompt_tuning_init="TEXT", prompt_tuning_init_text=INIT_TEXT)
    if method == "p_tuning":
        options.update(encoder_hidden_size=128)
    dev = common.task_rows("dev", dev_limit)
    common.write_rows(workdir / "dev.csv", dev)
    name = common.model_name(MODEL)
    config = TrainConfig.from_dict(
        {
            "model": name,
            "method": method,
            "method_options": options,
            "train_file": str(common.task_file("train")),
            "task": {"label_names": LABELS, "max_length": 64},
            "epochs": epochs,
            "lr": LEARNING_RATES[method],
            "batch_size": 16,
            "seed": seed,
            "output_dir": str(workdir / method),
            "progress": False,
        }
    )
    history_file = workdir / method / "metrics.jsonl"
    train(config)
    history = [json.loads(line) for line in history_file.read_text().splitlines()]
    tokenizer = load_tokenizer(name)
    spec = TaskSpec(label_names=LABELS, max_length=64)
    encoder = RowTokenizer(tokenizer, spec, LABELS)
    train_examples = [encoder.encode(r) for r in common.task_rows("train")]
    real_tokens = sum(len(e.prompt_ids) + len(e.target_ids) for e in train_examples)
    model = PeftModel.from_pretrained(load_base_model(name), workdir / method / "adapter")
    examples = [encoder.encode(r) for r in dev]
    gold = [e.label for e in examples]
    started = time.perf_counter()
    scores = score_labels(model, encoder, examples, batch_size=16, progress=False)
    scoring_seconds = time.perf_counter() - started
    started = time.perf_counter()
    generated, _ = classify_by_generation(model, encoder, examples, batch_size=16, progress=False)
    generation_seconds = time.perf_counter() - started
    epoch_seconds = [h["seconds"] for h in history]
    return {
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "real_tokens_per_second": real_tokens * len(epoch_seconds) / sum(epoch_seconds),
        "scoring": {"seconds": scoring_seconds, **metrics_of(gold, scores.argmax(-1).tolist())},
        "generation": {"seconds": generation_seconds, **metrics_of(gold, generated)},
        "peak_rss_mb": peak_rss_mb(),
    }


def table(results: dict) -> str:
    lines = [
        "| method | library | s/epoch | real tok/s | classify s (how) | acc | macro-F1 | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, libraries in results["runs"].items():
        for library, r in libraries.items():
            for how in ("scoring", "generation"):
                if how in r:
                    c = r[how]
                    lines.append(
                        f"| {method} | {library} | {r['seconds_per_epoch']:.1f} | {r['real_tokens_per_second']:.0f} | "
                        f"{c['seconds']:.1f} ({how}) | {c['accuracy']:.3f} | {c['macro_f1']:.3f} | "
                        f"{r['peak_rss_mb']:,.0f} |"
                    )
        if {"peft", "softprompt"} <= set(libraries):
            p, s = libraries["peft"], libraries["softprompt"]
            lines.append(
                f"| {method} | **ratio** softprompt/PEFT | "
                f"{p['seconds_per_epoch'] / s['seconds_per_epoch']:.2f}x faster | "
                f"{s['real_tokens_per_second'] / p['real_tokens_per_second']:.2f}x | "
                f"{p['generation']['seconds'] / s['scoring']['seconds']:.2f}x faster (scoring vs PEFT generate) | | | "
                f"{s['peak_rss_mb'] / p['peak_rss_mb']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 64 dev tweets")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dev-limit", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["prompt_tuning", "p_tuning", "prefix_tuning"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/<mode>.json)")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a result file and exit")
    parser.add_argument("--worker", nargs=2, metavar=("LIBRARY", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.table:
        print(table(common.read_json(Path(args.table))))
        return 0
    if args.quick:
        args.epochs, args.dev_limit = 1, 64
    if args.smoke is not None:  # 2 epochs, 8 dev rows
        common.start_smoke(args.smoke)
        args.epochs, args.dev_limit = 2, 8
    if common.absent(common.task_file("train"), common.task_file("dev")):
        return 0
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if args.worker:
        library, method = args.worker
        import tempfile

        with tempfile.TemporaryDirectory() as workdir:
            if library == "peft":
                result = run_peft(method, args.epochs, args.dev_limit, args.seed)
            else:
                result = run_softprompt(method, args.epochs, args.dev_limit, args.seed, Path(workdir))
        Path(args.worker_out).write_text(json.dumps(result))
        return 0
    import peft
    import transformers

    results = {
        "command": " ".join(["python"] + sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "epochs": args.epochs,
        "dev_tweets": args.dev_limit or 400,
        "runs": {},
    }
    out = common.results_path("quick.json" if args.quick else f"epochs{args.epochs}.json", args.out)
    for index, method in enumerate(args.methods):
        order = ["peft", "softprompt"] if index % 2 == 0 else ["softprompt", "peft"]  # alternate who goes first
        for library in order:
            worker_out = out.with_suffix(f".{library}.{method}.tmp")
            command = [
                sys.executable,
                __file__,
                "--worker",
                library,
                method,
                "--worker-out",
                str(worker_out),
                "--epochs",
                str(args.epochs),
                "--seed",
                str(args.seed),
            ]
            if args.dev_limit:
                command += ["--dev-limit", str(args.dev_limit)]
            print(f"running {library} {method} ...", flush=True)
            result = common.run_child(command, worker_out, capture=False)
            if "error" in result:
                raise SystemExit(f"{library} {method}: {result['error']}")
            results["runs"].setdefault(method, {})[library] = result
            common.write_json(out, results, indent=1)
    print(table(results))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
