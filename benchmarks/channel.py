"""Noisy-channel prompt tuning (Min et al. 2022) against direct label scoring, chosen on train rows only.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel.py            # 2 splits x 2 folds of the 50 train tweets
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel.py --dev 42   # then train on all 50, score dev (seed 42)
    .venv/bin/python benchmarks/channel.py --smoke                      # both, in seconds: tiny model, toy rows

Direct (softprompt's label scoring): p(label words | soft prompt, question with the tweet). Channel: the label
conditions and the text is scored, p(tweet | soft prompt, question, label words): rows are
"Question: ...?\\nAnswer: yes\\nTweet:" + " {tweet}<eos>", trained on the tweet's tokens (the rows' own label),
and each tweet is classified by the class under which its tokens are most likely. Min et al. report channel
stronger than direct with few and imbalanced examples (GPT-2, 16 per class). Everything else is the shipped
prompt-tuning config (20 virtual tokens initialised from the question, lr 0.03, 10 epochs, batch 8, balanced
classes, AdamW with a linear schedule) by softprompt's recipe in the library's own epoch loop (common.fit), as
quality.py's LoRA. The folds are recipe_cv.py's (same splits, seed 42), so the direct figures of
results/recipe_cv.json ("prompt_tuning/shipped") are the same protocol; "+ prior" divides by the mean class
probability on 200 unlabelled test tweets.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import common
from quality import TWITTER, unlabelled_texts
from recipe_cv import folds

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
    from softprompt import get_peft_model
    from softprompt.base_models import load_base_model, load_tokenizer
    from softprompt.data import Example
    from softprompt.task_types.causal_lm import LabelScoring

    config = common.local_config(TWITTER.config("prompt_tuning"), {"seed": seed, "calibration": None, **overrides})
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(config.model)
    prefixes, texts = channel_parts(tokenizer, config, [r["Tweet text"] for r in rows])
    labels = [int(r["Label"]) - 1 for r in rows]  # class positions: 0 complaint, 1 no complaint (LABELS[1:])
    examples = [Example(prefixes[k], text, k, False, "") for k, text in zip(labels, texts)]
    task = LabelScoring(examples)
    model = get_peft_model(load_base_model(config.model), config.method_config())
    common.fit(
        model, examples, config, lambda batch: task.collate(batch, tokenizer.pad_token_id), task.loss, task.weight
    )
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
    return common.rounded(scores)


def summary(runs: list[dict]) -> dict:
    from recipe_cv import scoring_options

    return {k: v for k, v in scoring_options(runs).items() if "content-free" not in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", nargs="*", type=int, help="seeds: train on all 50 tweets and score dev.csv")
    parser.add_argument("--results", help="default: benchmarks/results/channel.json")
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    settings, unlabelled_count = {}, 200
    if args.smoke is not None:  # the folds, then dev with seed 42; 2 epochs, 4 unlabelled texts
        common.start_smoke(args.smoke)
        settings, unlabelled_count, args.dev = {"epochs": 2}, 4, args.dev or [42]
    if common.absent(TWITTER.train, TWITTER.dev):
        return
    path = common.results_path("channel.json", args.results)
    results = common.read_json(path, {"cv": [], "dev": []})
    rows = common.read_rows(TWITTER.train)
    unlabelled = unlabelled_texts(TWITTER, unlabelled_count)
    names = ["complaint", "no complaint"]
    if args.dev is None or args.smoke is not None:
        for repeat in range(2):
            for fold, held in enumerate(folds(rows, 2, seed=repeat)):
                if any(r["repeat"] == repeat and r["fold"] == fold for r in results["cv"]):
                    continue
                started = time.time()
                fit_rows = [r for i, r in enumerate(rows) if i not in set(held)]
                model, tokenizer, config = train_channel(fit_rows, seed=42, **settings)
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
                common.write_json(path, results)
                print(f"split {repeat} fold {fold}: channel {summary(results['cv'])}", flush=True)
    if args.dev is not None:
        from softprompt.inference.calibration import calibrate, estimate_prior
        from softprompt.inference.metrics import classification_metrics

        dev = common.read_rows(TWITTER.dev)
        gold = [int(r["Label"]) - 1 for r in dev]
        for seed in args.dev:
            if not any(r["seed"] == seed for r in results["dev"]):
                model, tokenizer, config = train_channel(rows, seed, **settings)
                results["dev"].append(
                    {
                        "seed": seed,
                        "log_probs": channel_log_probs(model, tokenizer, config, [r["Tweet text"] for r in dev]),
                    }
                )
                common.write_json(path, results)
        for run in results["dev"]:
            p = torch.tensor(run["log_probs"]).exp()
            plain = classification_metrics(gold, p.argmax(-1).tolist(), names)["macro_f1"]
            prior = classification_metrics(gold, calibrate(p, estimate_prior(p)).argmax(-1).tolist(), names)["macro_f1"]
            print(f"dev seed {run['seed']}: channel macro-F1 {plain:.3f} plain, {prior:.3f} + prior (dev texts)")
    if results["cv"]:
        candidates = common.read_json(common.results_path("recipe_cv.json"), {"candidates": {}})["candidates"]
        print("held-out macro-F1, 2 splits x 2 folds of train.csv:")
        if "prompt_tuning/shipped" in candidates:  # the direct figures, same folds
            direct = candidates["prompt_tuning/shipped"]["runs"]
            print(f"  direct  (recipe_cv.py, shipped prompt tuning): {summary(direct)}")
        print(f"  channel ({len(results['cv'])} folds): {summary(results['cv'])}")
        print(f"  seconds per fold: {statistics.mean(r['seconds'] for r in results['cv']):.0f}")


if __name__ == "__main__":
    main()
