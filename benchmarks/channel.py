"""Noisy-channel prompt tuning (Min et al. 2022) against direct label scoring, chosen on train rows only.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel.py            # 2 splits x 2 folds of the 50 train tweets
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel.py --dev 42   # then train on all 50, score dev (seed 42)

Direct (softprompt's label scoring): p(label words | soft prompt, question with the tweet). Channel: the label
conditions and the text is scored, p(tweet | soft prompt, question, label words): rows are
"Question: ...?\\nAnswer: yes\\nTweet:" + " {tweet}<eos>", trained on the tweet's tokens (the rows' own label),
and each tweet is classified by the class under which its tokens are most likely. Min et al. report channel
stronger than direct with few and imbalanced examples (GPT-2, 16 per class). Everything else is the shipped
prompt-tuning config (20 virtual tokens initialised from the question, lr 0.03, 10 epochs, batch 8, balanced
classes, AdamW with a linear schedule) in a copy of softprompt's loop, as quality.py's LoRA. The folds are
recipe_cv.py's (same splits, seed 42), so the direct figures of results/recipe_cv.json ("prompt_tuning/shipped")
are the same protocol; "+ prior" divides by the mean class probability on 200 unlabelled test tweets.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from quality import TWITTER, unlabelled_texts
from recipe_cv import folds, read_rows

DATA = TWITTER.train.parent  # ../shared/data/twitter_complaints

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Is the author of this tweet complaining about a product or service?"
CHANNEL_PREFIX = "Question: " + QUESTION + "\nAnswer:{label}\nTweet:"


def channel_parts(tokenizer, config, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(each class's prefix ids, each text's ids + EOS), the texts cut to fit max_length after the longest prefix."""
    names = [name for name in config.task.label_names if name != "Unlabeled"]
    prefixes = [tokenizer(CHANNEL_PREFIX.format(label=config.task.verbalizer[name]))["input_ids"] for name in names]
    room = config.task.max_length - max(len(p) for p in prefixes) - 1
    return prefixes, [
        tokenizer(" " + text, add_special_tokens=False)["input_ids"][:room] + [tokenizer.eos_token_id] for text in texts
    ]


def train_channel(rows: list[dict], seed: int, **overrides):
    """A prompt-tuning model trained on the channel rows of `rows` (class positions from LABELS)."""
    from transformers import get_linear_schedule_with_warmup

    from softprompt import get_peft_model
    from softprompt.base_models import load_base_model, load_tokenizer
    from softprompt.data import Example, length_grouped_batches
    from softprompt.task_types.causal_lm import LabelScoring
    from softprompt.training import TrainConfig
    from softprompt.training.examples import epoch_examples

    config = TrainConfig.from_yaml(
        ROOT / "configs" / "twitter_complaints" / "prompt_tuning.yaml", {"seed": seed, "calibration": None, **overrides}
    )
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(config.model)
    prefixes, texts = channel_parts(tokenizer, config, [r["Tweet text"] for r in rows])
    labels = [int(r["Label"]) - 1 for r in rows]  # class positions: 0 complaint, 1 no complaint (LABELS[1:])
    examples = [Example(prefixes[k], text, k, False, "") for k, text in zip(labels, texts)]
    task = LabelScoring(examples)
    model = get_peft_model(load_base_model(config.model), config.method_config())
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    steps = math.ceil(len(epoch_examples(examples, config, 0)) / config.batch_size) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    for epoch in range(config.epochs):
        torch.manual_seed(config.seed + epoch)
        epoch_rows = epoch_examples(examples, config, epoch)
        model.train()
        for batch_rows in length_grouped_batches(
            [len(e.prompt_ids) + len(e.target_ids) for e in epoch_rows], config.batch_size, config.seed + epoch
        ):
            loss = task.loss(model, task.collate([epoch_rows[i] for i in batch_rows], tokenizer.pad_token_id))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return model, tokenizer, config


@torch.no_grad()
def channel_log_probs(model, tokenizer, config, texts: list[str]) -> list[list[float]]:
    """[N, K] log-softmax over the classes of log p(text | prefix of class k)."""
    from softprompt.task_types.causal_lm import score_rows

    prefixes, encoded = channel_parts(tokenizer, config, texts)
    prompts = [prefix for _ in encoded for prefix in prefixes]  # row-major: each text under each class
    continuations = [[text] for text in encoded for _ in prefixes]
    scores = score_rows(model, prompts, continuations, tokenizer.pad_token_id, progress=False)[:, 0].view(
        len(texts), len(prefixes)
    )
    return [[round(v, 5) for v in row] for row in scores.log_softmax(-1).tolist()]


def summary(runs: list[dict]) -> dict:
    from recipe_cv import scoring_options

    return {k: v for k, v in scoring_options(runs).items() if "content-free" not in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", nargs="*", type=int, help="seeds: train on all 50 tweets and score dev.csv")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "channel.json"))
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {"cv": [], "dev": []}
    rows = read_rows(DATA / "train.csv")
    unlabelled = unlabelled_texts(TWITTER, 200)
    names = ["complaint", "no complaint"]
    if args.dev is None:
        for repeat in range(2):
            for fold, held in enumerate(folds(rows, 2, seed=repeat)):
                if any(r["repeat"] == repeat and r["fold"] == fold for r in results["cv"]):
                    continue
                started = time.time()
                model, tokenizer, config = train_channel([r for i, r in enumerate(rows) if i not in set(held)], seed=42)
                results["cv"].append(
                    {
                        "repeat": repeat,
                        "fold": fold,
                        "class_names": names,
                        "gold": [int(rows[i]["Label"]) - 1 for i in held],
                        "held_log_probs": channel_log_probs(
                            model, tokenizer, config, [rows[i]["Tweet text"] for i in held]
                        ),
                        "unlabelled_log_probs": channel_log_probs(model, tokenizer, config, unlabelled),
                        "content_free_log_probs": [[0.0, 0.0]],
                        "seconds": round(time.time() - started, 1),
                    }
                )
                path.write_text(json.dumps(results))
                print(f"split {repeat} fold {fold}: channel {summary(results['cv'])}", flush=True)
    else:
        from softprompt.inference.calibration import calibrate, estimate_prior
        from softprompt.inference.metrics import classification_metrics

        dev = read_rows(DATA / "dev.csv")
        gold = [int(r["Label"]) - 1 for r in dev]
        for seed in args.dev:
            if not any(r["seed"] == seed for r in results["dev"]):
                model, tokenizer, config = train_channel(rows, seed)
                results["dev"].append(
                    {
                        "seed": seed,
                        "log_probs": channel_log_probs(model, tokenizer, config, [r["Tweet text"] for r in dev]),
                    }
                )
                path.write_text(json.dumps(results))
        for run in results["dev"]:
            p = torch.tensor(run["log_probs"]).exp()
            plain = classification_metrics(gold, p.argmax(-1).tolist(), names)["macro_f1"]
            prior = classification_metrics(gold, calibrate(p, estimate_prior(p)).argmax(-1).tolist(), names)["macro_f1"]
            print(f"dev seed {run['seed']}: channel macro-F1 {plain:.3f} plain, {prior:.3f} + prior (dev texts)")
    direct = json.loads((ROOT / "benchmarks" / "results" / "recipe_cv.json").read_text())["candidates"][
        "prompt_tuning/shipped"
    ]["runs"]
    if results["cv"]:
        print("held-out macro-F1, 2 splits x 2 folds of train.csv:")
        print(f"  direct  (recipe_cv.py, shipped prompt tuning): {summary(direct)}")
        print(f"  channel ({len(results['cv'])} folds): {summary(results['cv'])}")
        print(f"  seconds per fold: {statistics.mean(r['seconds'] for r in results['cv']):.0f}")


if __name__ == "__main__":
    main()
