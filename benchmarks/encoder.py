"""Sequence classification on the offline encoder all-MiniLM-L6-v2: softprompt vs PEFT 0.21 on the same job, the shipped
recipes, SetFit, and a logistic regression on the frozen mean-pooled embeddings, on a RAFT task's 50 train rows
(--task: twitter_complaints by default, tweet_eval_hate, banking77), scored on its labelled dev rows (400; banking77:
400 drawn with seed 0 from its 5,000, as benchmarks/quality.py scores them).

    .venv/bin/python benchmarks/encoder.py                  # the full run (about 15 min on 2 CPU cores)
    .venv/bin/python benchmarks/encoder.py --quick          # plumbing check: 2 epochs, 64 dev tweets, a short SetFit
    .venv/bin/python benchmarks/encoder.py --table benchmarks/results/encoder.json
    .venv/bin/python benchmarks/encoder.py --seeds 42 43 44 45 46   # shipped configs and SetFit over seeds
    .venv/bin/python benchmarks/encoder.py --task banking77 --seeds 42 43 44 45 46 --methods prompt_tuning
    .venv/bin/python benchmarks/encoder.py --overhead               # one training step: each wrapper vs the backbone
    .venv/bin/python benchmarks/encoder.py --smoke                  # seconds: a tiny random BERT, toy rows

Every run is its own child process (peak RSS is its own), one at a time. Rows per method (prompt tuning, p-tuning,
prefix tuning), for each the hyperparameters of configs/<task>/minilm_<method>.yaml:

- "same job": softprompt and PEFT in one training loop, softprompt's recipe in the library's own epoch loop
  (common.fit): the same model weights (the local folder softprompt.base_models resolves; the random head seeded
  alike), tokens, epoch rows (the config's balance_classes),
  AdamW + linear schedule, clipping, lr, epochs, batch size, seed, and PEFT's defaults for both (the [CLS] pooler
  head as the model gives it; each library's own prompt initialisation). Each library batches as it does by
  default: PEFT as its sequence-classification example (a shuffled DataLoader, DataCollatorWithPadding: each batch
  padded to its longest row), softprompt as `softprompt train` (rows of similar length batched together). A
  control runs PEFT on softprompt's batches, so that the wrapper alone is compared too. PEFT uses its
  PeftModelForSequenceClassification; its prefix tuning fails on BERT ("Model does not support past key values"),
  which is recorded as the result. Training throughput is training rows / seconds of the training loop; peak RSS
  is the child's maximum resident set (model loading included).
- "shipped config": `softprompt train --config configs/<task>/minilm_<method>.yaml --eval_file null`
  as a user runs it (its own loop; its pooling and head start), then its adapter scores dev through the Predictor.
- SetFit (`setfit`, default TrainingArguments, seed 42) on the same encoder folder and the same 50 rows, run with
  .venv's python if it has setfit, else /work/setfit-venv's; skipped with a message when neither has it.
- Logistic regression on the frozen encoder's mean-pooled, L2-normalised embeddings (what sentence-transformers'
  encode gives for this model): sklearn's LogisticRegression with default settings, and with balanced class weights
  (sklearn if installed, else the same objective by torch LBFGS).
Results: benchmarks/results/encoder.json (--quick: encoder_quick.json; --seeds: encoder_seeds.json, resumable, with
SetFit at each seed and the logistic regression once; --overhead: encoder_overhead.json); other tasks than
twitter_complaints add _<task> to the name (encoder_seeds_banking77.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # the standard library only at import: the SetFit child may run in another venv
from common import peak_rss_mb

SETFIT_VENV = Path("/work/setfit-venv/bin/python")
METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]
TASKS = list(common.TEXT_COLUMNS)  # the RAFT tasks with local files
ENCODER = "all-minilm-l6-v2"


def macro_f1(gold: list[int], predicted: list[int]) -> dict:
    """Accuracy and macro-F1 over the classes in `gold` or `predicted`, as scikit-learn's and softprompt's (no library
    needed: the SetFit child may lack softprompt)."""
    scores = []
    for label in sorted(set(gold) | set(predicted)):
        tp = sum(g == p == label for g, p in zip(gold, predicted))
        fp = sum(p == label != g for g, p in zip(gold, predicted))
        fn = sum(g == label != p for g, p in zip(gold, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": sum(g == p for g, p in zip(gold, predicted)) / len(gold), "macro_f1": sum(scores) / len(scores)}


def config_file(method: str, task: str) -> Path:
    return common.CONFIGS / task / f"minilm_{method}.yaml"


def dev_rows(task: str, limit: int | None) -> list[dict]:
    """The task's scored dev rows (the first `limit`, if given)."""
    return common.sample_dev(common.task_rows("dev", task=task), task)[:limit]


def texts_and_labels(rows: list[dict], task: str) -> tuple[list[str], list[int]]:
    """A RAFT task's texts and class positions (RAFT's Label 0 is "Unlabeled": class c is Label c + 1)."""
    return [r[common.TEXT_COLUMNS[task]] for r in rows], [int(r["Label"]) - 1 for r in rows]


# ---- children ------------------------------------------------------------------------------------
def same_job(
    task: str, library: str, method: str, batching: str, epochs: int | None, dev_limit: int | None, seed: int
) -> dict:
    """One training loop for both libraries; the wrapper and the batching differ. batching "grouped": softprompt's
    (shuffled, then rows of similar length batched together); "shuffled": PEFT's sequence classification example
    (a shuffled DataLoader and DataCollatorWithPadding, each batch padded to its longest row)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from softprompt.base_models import load_base_model, load_tokenizer
    from softprompt.data import RowTokenizer, length_grouped_batches, sorted_batches
    from softprompt.task_types.seq_cls import HeadClassification as SequenceClassification

    config = common.local_config(
        config_file(method, task),
        {
            "train_file": str(common.task_file("train", task)),
            "eval_file": None,
            "seed": seed,
            **({"epochs": epochs} if epochs else {}),
        },
    )
    tokenizer = load_tokenizer(config.model)
    encoder = RowTokenizer(tokenizer, config.task, config.task.label_names)
    train_examples = [encoder.encode(row) for row in common.task_rows("train", task=task)]
    dev_examples = [encoder.encode(row) for row in dev_rows(task, dev_limit)]
    torch.manual_seed(seed)
    base = load_base_model(
        config.model, auto_class=AutoModelForSequenceClassification, num_labels=len(encoder.class_names)
    )
    options = {
        key: value for key, value in config.method_options.items() if key not in ("pooling", "head_init")
    }  # PEFT's defaults
    torch.manual_seed(seed + 1)
    if library == "peft":
        import peft

        classes = {
            "prompt_tuning": peft.PromptTuningConfig,
            "p_tuning": peft.PromptEncoderConfig,
            "prefix_tuning": peft.PrefixTuningConfig,
        }
        model = peft.get_peft_model(base, classes[method](task_type="SEQ_CLS", **options))
    else:
        from softprompt import get_peft_model, registry

        model = get_peft_model(base, registry.method(method).config_class(task_type="SEQ_CLS", **options))
    trainable = [p for p in model.parameters() if p.requires_grad]
    pad = tokenizer.pad_token_id
    counts = {"train_rows": 0, "real_tokens": 0, "padded_tokens": 0}
    result = {
        "library": library,
        "method": method,
        "batching": batching,
        "options": options,
        "lr": config.lr,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "balance_classes": config.balance_classes,
        "trainable_parameters": sum(p.numel() for p in trainable),
    }

    def loss(model, batch: dict):
        counts["train_rows"] += len(batch["labels"])
        counts["real_tokens"] += int(batch["attention_mask"].sum())
        counts["padded_tokens"] += batch["attention_mask"].numel()
        return model(**batch).loss

    def order(rows: list, epoch: int) -> list[list[int]]:
        if batching == "grouped":
            return length_grouped_batches([len(e.prompt_ids) for e in rows], config.batch_size, seed + epoch)
        shuffled = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        return [shuffled[i : i + config.batch_size] for i in range(0, len(shuffled), config.batch_size)]

    try:
        seconds = common.fit(
            model, train_examples, config, lambda rows: SequenceClassification.collate(rows, pad), loss,
            SequenceClassification.weight, order,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - PEFT's prefix tuning on BERT: recorded as the result
        return {**result, "error": f"{type(error).__name__}: {error}", "peak_rss_mb": peak_rss_mb()}
    model.eval()
    predicted = [0] * len(dev_examples)
    with torch.no_grad():
        for batch in sorted_batches([len(e.prompt_ids) for e in dev_examples], 32):
            inputs = SequenceClassification.collate([dev_examples[i] for i in batch], pad)
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            for i, row in zip(batch, logits.argmax(-1).tolist()):
                predicted[i] = row
    return {
        **result,
        "train_rows": counts["train_rows"],
        "train_seconds": seconds,
        "examples_per_second": counts["train_rows"] / seconds,
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
        "peak_rss_mb": peak_rss_mb(),
        **macro_f1([e.label for e in dev_examples], predicted),
    }


def shipped_config(task: str, method: str, epochs: int | None, dev_limit: int | None, seed: int) -> dict:
    """What a user runs: softprompt train on the shipped config, then the Predictor on dev."""
    from softprompt import Predictor
    from softprompt.data import RowTokenizer, load_table
    from softprompt.training import train
    from softprompt.training.examples import epoch_examples

    with tempfile.TemporaryDirectory() as folder:
        overrides = {
            "train_file": str(common.task_file("train", task)),
            "eval_file": None,
            "output_dir": folder,
            "progress": False,
            "seed": seed,
            **({"epochs": epochs} if epochs else {}),
        }
        config = common.local_config(config_file(method, task), overrides)
        train(config)
        history = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
        predictor = Predictor.from_pretrained(str(Path(folder) / "adapter"), device="cpu")
        dev = dev_rows(task, dev_limit)
        encoder = predictor.row_tokenizer()
        gold = [encoder.class_names.index(config.task.label_names[int(row["Label"])]) for row in dev]
        predicted = predictor.probabilities(dev).argmax(-1).tolist()
        examples = RowTokenizer(predictor.tokenizer, config.task, config.task.label_names).encode_table(
            load_table(config.train_file)
        )
        rows = sum(len(epoch_examples(examples, config, epoch)) for epoch in range(len(history)))
        seconds = sum(h["seconds"] for h in history)
        options = dict(config.method_options)
    return {
        "library": "softprompt train",
        "method": method,
        "options": options,
        "lr": config.lr,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "balance_classes": config.balance_classes,
        "train_rows": rows,
        "train_seconds": seconds,
        "examples_per_second": rows / seconds,
        "peak_rss_mb": peak_rss_mb(),
        **macro_f1(gold, predicted),
    }


def setfit_child(task: str, folder: str, dev_limit: int | None, seed: int, quick: bool) -> dict:
    """SetFit with its default arguments (no softprompt import: this may run in another venv)."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, labels = texts_and_labels(common.task_rows("train", task=task), task)
    dev_texts, gold = texts_and_labels(dev_rows(task, dev_limit), task)
    train_set = Dataset.from_dict({"text": texts, "label": labels})
    model = SetFitModel.from_pretrained(folder)
    with tempfile.TemporaryDirectory(prefix="setfit-") as output_dir:  # defaults, but checkpoints not in ./checkpoints
        args = TrainingArguments(output_dir=output_dir, seed=seed, **({"max_steps": 10} if quick else {}))
        trainer = Trainer(model=model, args=args, train_dataset=train_set)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    predicted = [int(p) for p in model.predict(dev_texts)]
    import setfit

    return {
        "library": "SetFit",
        "version": setfit.__version__,
        "arguments": "defaults" + (" (quick: max_steps 10)" if quick else ""),
        "train_seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        **macro_f1(gold, predicted),
    }


def probe_child(task: str, dev_limit: int | None) -> dict:
    """Logistic regression on the frozen encoder's mean-pooled, L2-normalised embeddings."""
    import torch
    from transformers import AutoModel

    from softprompt.base_models import load_tokenizer, resolve

    name = common.model_name(ENCODER)
    tokenizer, model = load_tokenizer(name), AutoModel.from_pretrained(resolve(name)).eval()

    def embed(texts: list[str]) -> torch.Tensor:  # [N, H]
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), 32):
                batch = tokenizer(
                    texts[start : start + 32],
                    padding=True,
                    truncation=True,
                    max_length=128,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    texts, y_train = texts_and_labels(common.task_rows("train", task=task), task)
    dev_texts, gold = texts_and_labels(dev_rows(task, dev_limit), task)
    started = time.perf_counter()
    x_train, x_dev = embed(texts), embed(dev_texts)
    results = {}
    for name, balanced in (("default", False), ("balanced", True)):
        try:
            from sklearn.linear_model import LogisticRegression

            fitted = LogisticRegression(max_iter=1000, class_weight="balanced" if balanced else None).fit(
                x_train.numpy(), y_train
            )
            predicted, how = fitted.predict(x_dev.numpy()).tolist(), "sklearn LogisticRegression(C=1)"
        except ImportError:
            predicted, how = (
                torch_logistic_regression(x_train, torch.tensor(y_train), x_dev, balanced),
                "torch LBFGS, C=1",
            )
        results[name] = {"how": how + (", class_weight=balanced" if balanced else ""), **macro_f1(gold, predicted)}
    return {
        "library": "logistic regression",
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        **results,
    }


def torch_logistic_regression(x, y, x_test, balanced: bool) -> list[int]:
    """sklearn's binary objective with C=1: sum_i w_i log(1 + exp(-y_i f(x_i))) + |w|^2 / 2, by LBFGS."""
    import torch

    target = y.float() * 2 - 1
    counts = torch.bincount(y, minlength=2).float()
    weights = (len(y) / (2 * counts))[y] if balanced else torch.ones(len(y))
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=1000, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def objective():
        optimizer.zero_grad()
        loss = (torch.nn.functional.softplus(-target * (x @ w + b)) * weights).sum() + 0.5 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return ((x_test @ w + b) > 0).long().tolist()


def overhead_child(seed: int) -> dict:
    """One training step (forward, backward, AdamW) on one fixed batch (8 rows of 40 tokens, 10 virtual tokens):
    softprompt's wrapper, PEFT's, and the bare classifier run on embeddings of the same length (the work both
    must do). Milliseconds per step, best of 3 rounds of 20 steps after 3 warm-up steps."""
    import peft
    import torch
    from transformers import AutoModelForSequenceClassification

    from softprompt import PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from softprompt.base_models import load_base_model

    rows, length, virtual = 8, 40, 10
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (rows, length), generator=generator)
    mask, labels = torch.ones_like(ids), torch.randint(0, 2, (rows,), generator=generator)

    def base():
        torch.manual_seed(seed)
        return load_base_model(common.model_name(ENCODER), auto_class=AutoModelForSequenceClassification, num_labels=2)

    def wrapper_step(model):
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        return step

    def milliseconds(step) -> float:
        for _ in range(3):
            step()
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(20):
                step()
            best = min(best, (time.perf_counter() - started) / 20)
        return round(best * 1000, 1)

    result = {"rows": rows, "tokens": length, "virtual_tokens": virtual}
    for method, ours, theirs, extra in (
        ("prompt_tuning", PromptTuningConfig, peft.PromptTuningConfig, {}),
        ("p_tuning", PromptEncoderConfig, peft.PromptEncoderConfig, {"encoder_hidden_size": 128}),
    ):
        softprompt_model = get_peft_model(
            base(), ours(task_type="SEQ_CLS", num_virtual_tokens=virtual, **extra)
        ).train()
        peft_model = peft.get_peft_model(
            base(), theirs(task_type="SEQ_CLS", num_virtual_tokens=virtual, **extra)
        ).train()
        bare = base().train().requires_grad_(False)
        embeds = torch.randn(rows, length + virtual, bare.config.hidden_size, requires_grad=True)
        bare_mask = torch.ones(rows, length + virtual, dtype=torch.long)

        def bare_step(bare=bare, embeds=embeds, bare_mask=bare_mask):
            bare(inputs_embeds=embeds, attention_mask=bare_mask, labels=labels).loss.backward()
            embeds.grad = None

        result[method] = {
            "softprompt_ms": milliseconds(wrapper_step(softprompt_model)),
            "peft_ms": milliseconds(wrapper_step(peft_model)),
            "backbone_ms": milliseconds(bare_step),
        }
    result["peak_rss_mb"] = peak_rss_mb()
    return result


# ---- the parent ----------------------------------------------------------------------------------
def setfit_python() -> str | None:
    for python in (sys.executable, str(SETFIT_VENV)):
        if (
            Path(python).exists()
            and subprocess.run([python, "-c", "import setfit"], capture_output=True, check=False).returncode == 0
        ):
            return python
    return None


def run_child(python: str, args: list[str], out: Path) -> dict:
    """A worker of this script in a child process (peak RSS its own): its result, with the load average around it."""
    return common.run_child([python, __file__, *args, "--worker-out", str(out)], out)


def fmt(value, pattern: str) -> str:
    return "" if value is None else format(value, pattern)


ROWS = (
    ("peft", "PEFT 0.21, its example's batches"),
    ("softprompt", "softprompt, its length-grouped batches"),
    ("peft_grouped", "PEFT 0.21 on softprompt's batches (control)"),
    ("shipped", "`softprompt train`, shipped config"),
)


def table(results: dict) -> str:
    lines = [
        (
            "| method | run | pooling, head start | train examples/s | padded / real tokens | peak RSS MB "
            "| dev accuracy | dev macro-F1 |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in results["methods"]:
        runs = results["runs"].get(method, {})
        for key, label in ROWS:
            r = runs.get(key)
            if r is None:
                continue
            options = r.get("options", {})
            pooling = f"{options.get('pooling', 'cls')}, {options.get('head_init', 'model')}"
            if "error" in r:
                lines.append(
                    f"| {method} | {label} | {pooling} | fails: {r['error'][:80]} | | "
                    f"{fmt(r.get('peak_rss_mb'), ',.0f')} | | |"
                )
                continue
            padding = f"{r['padded_tokens'] / r['real_tokens']:.2f}" if r.get("real_tokens") else ""
            lines.append(
                f"| {method} | {label} | {pooling} | {r['examples_per_second']:.1f} | {padding} | "
                f"{r['peak_rss_mb']:,.0f} | "
                f"{r['accuracy']:.3f} | {r['macro_f1']:.3f} |"
            )
        s = runs.get("softprompt", {})
        for key, label in (("peft", "softprompt / PEFT"), ("peft_grouped", "softprompt / PEFT, same batches")):
            p = runs.get(key, {})
            if "examples_per_second" in s and "examples_per_second" in p:
                lines.append(
                    f"| {method} | **{label}** | | **{s['examples_per_second'] / p['examples_per_second']:.2f}x** | | "
                    f"{s['peak_rss_mb'] / p['peak_rss_mb']:.2f}x | | |"
                )
    setfit = results.get("setfit", {})
    if "macro_f1" in setfit:
        lines.append(
            f"| - | SetFit {setfit.get('version', '')}, {setfit['arguments']}, "
            f"training {setfit['train_seconds']:.0f} s | "
            f"mean, logistic regression (encoder fine-tuned) | | | {setfit['peak_rss_mb']:,.0f} | "
            f"{setfit['accuracy']:.3f} | {setfit['macro_f1']:.3f} |"
        )
    elif setfit:
        lines.append(f"| - | SetFit | | {setfit.get('skipped') or setfit.get('error')} | | | | |")
    probe = results.get("probe", {})
    for name in ("default", "balanced"):
        if name in probe:
            lines.append(
                f"| - | frozen mean-pooled embeddings, {probe[name]['how']} | mean (normalised), frozen | | | "
                f"{probe['peak_rss_mb']:,.0f} | "
                f"{probe[name]['accuracy']:.3f} | {probe[name]['macro_f1']:.3f} |"
            )
    return "\n".join(lines)


def spread_row(label: str, runs: dict) -> str | None:
    """A table row of runs by seed: each seed's macro-F1, their mean (sd) and mean accuracy."""
    import statistics

    good = {seed: r for seed, r in runs.items() if "macro_f1" in r}
    f1 = [r["macro_f1"] for r in good.values()]
    if len(f1) < 2:
        return None
    by_seed = ", ".join(f"{seed}: {r['macro_f1']:.3f}" for seed, r in good.items())
    return (
        f"| {label} | {by_seed} | {statistics.mean(f1):.3f} ({statistics.stdev(f1):.3f}) | "
        f"{statistics.mean(r['accuracy'] for r in good.values()):.3f} |"
    )


def seed_table(results: dict) -> str:
    lines = ["| run | dev macro-F1 by seed | mean (sd) | mean accuracy |", "|---|---|---|---|"]
    rows = [spread_row(f"minilm_{method}.yaml", runs) for method, runs in results["runs"].items()]
    setfit = results.get("setfit", {})
    if setfit and all(isinstance(r, dict) for r in setfit.values()):  # by seed
        version = next((r.get("version") for r in setfit.values() if "version" in r), "")
        rows.append(spread_row(f"SetFit {version}, defaults", setfit))
    lines += [row for row in rows if row]
    probe = results.get("probe", {})
    for name in ("default", "balanced"):
        if name in probe:  # deterministic: one run
            lines.append(
                f"| frozen mean-pooled embeddings, {probe[name]['how']} | (no seed) | "
                f"{probe[name]['macro_f1']:.3f} | {probe[name]['accuracy']:.3f} |"
            )
    return "\n".join(lines)


def worker(args) -> int:
    """One child's job (args.worker: its kind and arguments), its result written to args.worker_out."""
    kind, *rest = args.worker
    task, seed = args.task, args.seed
    if kind == "same":
        result = same_job(task, rest[0], rest[1], rest[2], args.epochs, args.dev_limit, seed)
    elif kind == "shipped":
        result = shipped_config(task, rest[0], args.epochs, args.dev_limit, seed)
    elif kind == "overhead":
        result = overhead_child(seed)
    elif kind == "setfit":
        result = setfit_child(task, rest[0], args.dev_limit, seed, args.quick)
    else:
        result = probe_child(task, args.dev_limit)
    Path(args.worker_out).write_text(json.dumps(result))
    return 0


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="twitter_complaints", choices=TASKS)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 64 dev rows, SetFit for 10 steps")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["same", "shipped", "setfit", "probe"])
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="only the per-step timing of the wrappers (results/encoder_overhead.json)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="the shipped configs and SetFit once per seed, the logistic regression once (results/encoder_seeds.json)",
    )
    parser.add_argument("--table", metavar="JSON", help="print the table of a result file and exit")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dev-limit", type=int, default=None, help=argparse.SUPPRESS)
    common.add_smoke_argument(parser)
    return parser.parse_args()


def carry_over(results: dict, previous: dict) -> None:
    """Resuming a --seeds file: its runs, SetFit seeds and probe are kept, and its command line(s) named before
    this one (a file that several commands filled says so)."""
    results["runs"] = previous.get("runs", {})
    results["setfit"] = {k: v for k, v in previous.get("setfit", {}).items() if isinstance(v, dict)}
    if "probe" in previous:
        results["probe"] = previous["probe"]
    commands = previous["command"].split("; ") if previous.get("command") else []
    results["command"] = "; ".join(commands + [results["command"]] if results["command"] not in commands else commands)


class Runner:
    """The parent: each run in a child process of this script, its result kept in `results` and saved to `out`."""

    def __init__(self, args, folder: str, results: dict, out: Path):
        self.args, self.folder, self.results, self.out = args, folder, results, out
        self.quick = args.quick or args.smoke is not None
        self.epochs, self.dev_limit = (2, 8) if args.smoke is not None else (2, 64) if args.quick else (None, None)
        self.scratch_folder = tempfile.TemporaryDirectory(prefix="encoder-bench-")  # removed when the run ends

    def options(self, seed: int) -> list[str]:
        return (
            ["--task", self.args.task, "--seed", str(seed)]
            + (["--epochs", str(self.epochs)] if self.epochs else [])
            + (["--dev-limit", str(self.dev_limit)] if self.dev_limit else [])
        )

    def child(self, *job: str, seed: int | None = None, python: str = sys.executable) -> dict:
        options = self.options(self.args.seed if seed is None else seed)
        return run_child(python, ["--worker", *job, *options], Path(self.scratch_folder.name) / "child.json")

    def save(self) -> None:
        common.write_json(self.out, self.results, indent=1)

    def setfit(self, seed: int | None = None) -> dict:
        python = setfit_python()
        if python is None:
            skipped = {"skipped": f"setfit is not installed in {sys.executable} nor {SETFIT_VENV}"}
            print(f"SetFit skipped: {skipped['skipped']}")
            return skipped
        print(f"SetFit ({python}), seed {self.args.seed if seed is None else seed} ...", flush=True)
        return self.child("setfit", self.folder, *(["--quick"] if self.quick else []), seed=seed, python=python)

    def probe(self) -> None:
        print("logistic regression on frozen embeddings ...", flush=True)
        self.results["probe"] = self.child("probe")
        self.save()

    def seeds(self) -> None:
        """The spread over training seeds of the shipped recipes and of SetFit (dev figures reported, never chosen
        by); resumable: runs already in the results file are kept."""
        args, results = self.args, self.results
        carry_over(results, common.read_json(self.out, {}))
        for method in args.methods if "shipped" not in args.skip else []:
            for seed in args.seeds:
                if "macro_f1" not in results["runs"].get(method, {}).get(str(seed), {}):
                    print(f"{method}: shipped config, seed {seed} ...", flush=True)
                    results["runs"].setdefault(method, {})[str(seed)] = self.child("shipped", method, seed=seed)
                    self.save()
        for seed in args.seeds if "setfit" not in args.skip else []:
            if "macro_f1" not in results["setfit"].get(str(seed), {}):
                results["setfit"][str(seed)] = self.setfit(seed)
                self.save()
        if "probe" not in args.skip and "probe" not in results:
            self.probe()
        results["methods"] = [m for m in METHODS if m in results["runs"]]
        results["seeds"] = sorted({int(seed) for runs in results["runs"].values() for seed in runs} | set(args.seeds))
        self.save()
        print(seed_table(results))

    def once(self) -> None:
        """Each method's same job (both libraries) and shipped config, SetFit and the logistic regression, once."""
        args, results = self.args, self.results
        for index, method in enumerate(args.methods):
            runs = results["runs"].setdefault(method, {})
            if "same" not in args.skip:
                jobs = [("peft", "shuffled"), ("softprompt", "grouped"), ("peft", "grouped")]
                for library, batching in jobs if index % 2 == 0 else jobs[::-1]:  # alternate who goes first
                    if library == "peft" and batching == "grouped" and "error" in runs.get("peft", {}):
                        continue  # PEFT cannot run this method at all
                    print(f"{method}: {library}, {batching} batches ...", flush=True)
                    key = library if (library, batching) != ("peft", "grouped") else "peft_grouped"
                    runs[key] = self.child("same", library, method, batching)
                    self.save()
            if "shipped" not in args.skip and config_file(method, args.task).is_file():
                print(f"{method}: softprompt train, shipped config ...", flush=True)
                runs["shipped"] = self.child("shipped", method)
                self.save()
        if "setfit" not in args.skip:
            results["setfit"] = self.setfit()
            self.save()
        if "probe" not in args.skip:
            self.probe()
        print(table(results))
        print(f"\nwritten: {self.out}")


def main() -> int:
    args = parse_arguments()
    if args.smoke is not None:  # 2 epochs, 8 dev rows, a short SetFit if it is installed
        common.start_smoke(args.smoke, encoder=True)
    if args.table:
        data = common.read_json(Path(args.table))
        print(seed_table(data) if "seeds" in data else table(data))
        return 0
    if args.worker:
        return worker(args)
    if common.absent(common.task_file("train", args.task), common.task_file("dev", args.task)):
        return 0
    from softprompt.base_models import ModelNotFoundError, resolve

    try:
        folder = resolve(common.model_name(ENCODER))
    except ModelNotFoundError as error:
        print(f"skipped: {error}")
        return 0
    import peft
    import torch
    import transformers

    results = {
        "command": " ".join(["python", "benchmarks/encoder.py", *sys.argv[1:]]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "model": folder,
        "task": args.task,
        "methods": args.methods,
        "runs": {},
    }
    name = "encoder_quick" if args.quick else "encoder_seeds" if args.seeds else "encoder"
    out = common.results_path(
        "encoder_overhead.json" if args.overhead else f"{name}{common.task_suffix(args.task)}.json", args.out
    )
    runner = Runner(args, folder, results, out)
    results["dev_rows"] = runner.dev_limit or len(dev_rows(args.task, None))
    if args.overhead:
        results["overhead"] = runner.child("overhead")
        runner.save()
        print(json.dumps(results["overhead"], indent=1))
    elif args.seeds:
        runner.seeds()
    else:
        runner.once()
    return 0


if __name__ == "__main__":
    sys.exit(main())
