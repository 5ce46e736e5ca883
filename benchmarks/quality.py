"""Dev-set quality of the shipped configs of a RAFT task and of PEFT LoRA, over seeds, with their ensembles.

    .venv/bin/python benchmarks/quality.py                # twitter_complaints: 3 prompt methods, guide, LoRA; 5 seeds
    .venv/bin/python benchmarks/quality.py --task tweet_eval_hate --methods prompt_tuning lora
    .venv/bin/python benchmarks/quality.py --methods residual_prompt_tuning ulpt dept   # the methods PEFT lacks
    .venv/bin/python benchmarks/quality.py --quick        # seed 42 only (reuses whatever is cached)
    .venv/bin/python benchmarks/quality.py --table benchmarks/results/quality.json
    .venv/bin/python benchmarks/quality.py --smoke        # seconds: a tiny random model, toy rows, 2 epochs

Tasks (data read from ../shared/data): twitter_complaints (dev: 400 labelled test tweets), tweet_eval_hate (dev:
400 test tweets with their TweetEval labels), banking77 (dev: a fixed sample of 400 of RAFT's 5000 gold-labelled
test queries, 77 intents). Each prompt run is `softprompt train --config configs/TASK/METHOD.yaml --seed S
--eval_file null` on RAFT's 50 training rows (dev is never seen in training), then label scoring of the dev rows
with the saved adapter. `lora` is PEFT 0.21.2's LoRA (r=8 on q/k/v/o, alpha 8, no dropout; lr 1e-3, 10 epochs)
trained by softprompt's recipe in the library's own epoch loop (common.fit: same AdamW, linear schedule, clipping,
seeded balanced epochs and batches, the task's template and verbalizer, loss on the label tokens) and scored the
same way (summed label+EOS log-likelihood, softmax over the classes): the only difference is the adapter.
`peft_guide` is the recipe a PEFT user starts from, PEFT's prompt-tuning guide for causal LMs
(template "Tweet text : {text} Label : ", label names as label text, 8 virtual tokens from "Classify if the tweet is
a complaint or not:", lr 3e-2, 50 epochs, batch 8, AdamW with its default weight decay, no clipping, no class
balancing), trained by softprompt's prompt tuning (the same model as PEFT's, tested equal in
tests/test_peft_interop.py) and scored like the others (the guide classifies by greedy generation, which PEFT's own
cached generation gets wrong, see section 1).

Every method is shown twice: plain label scoring, and "+ prior" (softprompt.calibration): each class
probability divided by the model's mean class probability on unlabelled inputs, then renormalised. The
prior is estimated on the dev texts, without their labels (dev is a sample of RAFT's unlabelled test set,
which RAFT allows as unlabelled data); `--unlabelled N` also scores N other test texts per run and records
that prior too. The ensemble averages the (calibrated) class probabilities of a method's seeds, as
`softprompt eval ADAPTER --ensemble ADAPTER ...` does. Runs already in the results file are reused (delete
one to redo it).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import common

PROMPT_METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]
NEW_METHODS = ["residual_prompt_tuning", "ulpt", "dept"]  # PEFT lacks these; run them with --methods
METHODS = PROMPT_METHODS + NEW_METHODS + ["peft_guide", "lora"]
DEFAULT_METHODS = PROMPT_METHODS + ["peft_guide", "lora"]
LORA = {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "lr": 1e-3, "epochs": 10}
# PEFT's prompt-tuning guide for causal LMs (twitter_complaints on bloomz-560m): its init text,
# and the same sentence for the other tasks
GUIDE_INIT_TEXT = {
    "twitter_complaints": "Classify if the tweet is a complaint or not:",
    "tweet_eval_hate": "Classify if the tweet is hate speech or not:",
    "banking77": "Classify the banking topic of the query:",
}


@dataclass(frozen=True)
class Task:
    name: str  # configs/NAME/METHOD.yaml; its files: ../shared/data/NAME/ (common.LOCAL_FILES)

    @property
    def train(self) -> Path:  # RAFT's 50 labelled rows
        return common.task_file("train", self.name)

    @property
    def dev(self) -> Path:  # labelled test rows, never trained on
        return common.task_file("dev", self.name)

    @property
    def unlabelled(self) -> Path:  # RAFT's unlabelled test rows
        return common.task_file("test", self.name)

    def config(self, method: str) -> Path:
        return common.CONFIGS / self.name / f"{method}.yaml"

    def results(self) -> Path:
        return common.results_path(f"quality{common.task_suffix(self.name)}.json")


TASKS = {
    "twitter_complaints": Task("twitter_complaints"),
    "tweet_eval_hate": Task("tweet_eval_hate"),
    "banking77": Task("banking77"),
}
TWITTER = TASKS["twitter_complaints"]


def task_settings(task: Task) -> tuple[str, str, list[str]]:
    """(text column, label column, label names) of the task's shipped config."""
    from softprompt.training import TrainConfig

    config = TrainConfig.from_yaml(task.config("prompt_tuning"), {})
    return config.task.text_columns[0], config.task.label_column, config.task.label_names


def dev_rows(task: Task) -> list[dict]:
    from softprompt.data import load_table

    return common.sample_dev(load_table(str(task.dev)).rows, task.name)  # banking77: 400 of its 5,000


def unlabelled_texts(task: Task, count: int) -> list[str]:
    """`count` unlabelled test texts of the task that are not among its dev rows, the same for every run."""
    from softprompt.data import load_table

    column = task_settings(task)[0]
    dev = {r[column] for r in dev_rows(task)}  # banking77: the 400 scored, not all 5000 gold rows (nearly all of test)
    texts = [r[column] for r in load_table(str(task.unlabelled)).rows if r[column] not in dev]
    return random.Random(0).sample(texts, count) if count else []


def peft_guide_settings(task: Task) -> dict:
    """The PEFT guide's recipe as overrides of the task's prompt-tuning config: its template ("Tweet text : {text}
    Label : "), the label names as label text (underscores as spaces), 8 virtual tokens from its init text, lr 3e-2,
    50 epochs, batch 8, AdamW's default weight decay (0.01), no clipping, no class balancing."""
    names = task_settings(task)[2]
    return {
        "method": "prompt_tuning",
        "task.template": None,
        "task.verbalizer": {n: n.replace("_", " ") for n in names},
        "method_options": {
            "num_virtual_tokens": 8,
            "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": GUIDE_INIT_TEXT[task.name],
        },
        "lr": 3e-2,
        "epochs": 50,
        "batch_size": 8,
        "weight_decay": 0.01,
        "max_grad_norm": 0,
        "balance_classes": False,
    }


def method_config(task: Task, method: str, settings: dict):
    """configs/TASK/METHOD.yaml with `settings` on top, offline (common.local_config);
    `peft_guide`: the task's prompt-tuning config with the guide's recipe."""
    if method == "peft_guide":
        return common.local_config(task.config("prompt_tuning"), {**peft_guide_settings(task), **settings})
    return common.local_config(task.config(method), settings)


def train_and_score(
    method: str, seed: int, overrides: dict, runs: Path, unlabelled: list[str] = (), task: Task = TWITTER
) -> dict:
    from softprompt import Predictor
    from softprompt.training import train

    output_dir = runs / f"{method}-seed{seed}"
    settings = {
        "seed": seed,
        "train_file": str(task.train),
        "eval_file": None,
        "output_dir": str(output_dir),
        "progress": False,
        "calibration": None,
        **overrides,
    }
    config = method_config(task, method, settings)
    started = time.time()
    train(config)
    seconds = time.time() - started
    predictor = Predictor.from_pretrained(str(output_dir / "adapter"), device="cpu")
    encoder = predictor.row_tokenizer()
    scores = torch.stack(predictor.scores(dev_rows(task)))  # [dev rows, classes] label log-likelihoods
    run = {
        "method": method,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "class_names": encoder.class_names,
        "log_probs": common.rounded(scores),
    }
    if unlabelled:
        run["unlabelled_log_probs"] = common.rounded(torch.stack(predictor.scores(list(unlabelled))))
    return run


# ---- LoRA in softprompt's loop ---------------------------------------------------------------------------------
def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def lm_label_scores(model, encoder, examples, batch_size: int = 16) -> torch.Tensor:
    """[N, K] summed log-likelihood of each class's label tokens (and EOS) after each left-padded prompt, for
    a plain (or PEFT-wrapped) causal LM: the prompt runs once, each label continues from a copy of its cache."""
    from softprompt.data import pad_left, sorted_batches

    targets = [encoder.target_ids(k) for k in range(len(encoder.class_names))]
    pad = encoder.tokenizer.pad_token_id
    scores = torch.zeros(len(examples), len(targets))
    model.eval()
    for batch in sorted_batches([len(e.prompt_ids) for e in examples], batch_size):
        ids = pad_left([examples[i].prompt_ids for i in batch], pad)
        mask = pad_left([[1] * len(examples[i].prompt_ids) for i in batch], 0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)
        for k, target in enumerate(targets):
            total = first[:, target[0]].clone()
            if len(target) > 1:
                rest = torch.tensor([target[:-1]] * len(batch))
                full = torch.cat([mask, torch.ones_like(rest)], 1)
                step = model(
                    input_ids=rest,
                    attention_mask=full,
                    position_ids=positions(full)[:, -rest.shape[1] :],
                    past_key_values=copy.deepcopy(out.past_key_values),
                    use_cache=True,
                )
                logp = step.logits.float().log_softmax(-1)
                total += logp.gather(-1, torch.tensor([target[1:]] * len(batch)).unsqueeze(-1)).squeeze(-1).sum(-1)
            scores[batch, k] = total
    return scores


def train_lora_and_score(
    seed: int, runs: Path, unlabelled: list[str] = (), extra: dict | None = None, task: Task = TWITTER
) -> dict:
    """PEFT LoRA trained by softprompt's recipe in the library's own epoch loop (common.fit; checkpoints aside)."""
    from peft import LoraConfig, get_peft_model

    from softprompt.base_models import load_base_model, load_tokenizer
    from softprompt.task_types.causal_lm import LabelScoring
    from softprompt.training.examples import load_tasks_data

    settings = {
        "seed": seed,
        "train_file": str(task.train),
        "eval_file": None,
        "lr": LORA["lr"],
        "epochs": LORA["epochs"],
        "progress": False,
        "output_dir": str(runs / f"lora-seed{seed}"),
        "calibration": None,
        **(extra or {}),
    }
    config = common.local_config(task.config("prompt_tuning"), settings)
    started = time.time()
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    part = load_tasks_data(config, tokenizer)[0]
    encoder, examples = part.rows, part.train
    scoring = LabelScoring(examples)
    lora = LoraConfig(r=LORA["r"], target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    model = get_peft_model(load_base_model(config.model), lora)
    pad = tokenizer.pad_token_id

    def loss(model, batch: dict) -> torch.Tensor:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        labels = batch["labels"][:, -scoring.keep :]  # rows are left-padded: the labels end every row
        return model(
            **inputs, labels=labels, position_ids=positions(batch["attention_mask"]), logits_to_keep=scoring.keep
        ).loss

    common.fit(model, examples, config, lambda rows: scoring.collate(rows, pad), loss, scoring.weight)
    seconds = time.time() - started
    model.save_pretrained(config.output_dir)  # PEFT's adapter files (safetensors)
    dev = [encoder.encode(row) for row in dev_rows(task)]
    run = {
        "method": "lora",
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "class_names": encoder.class_names,
        "log_probs": common.rounded(lm_label_scores(model, encoder, dev)),
    }
    if unlabelled:
        encoded = [encoder.encode({config.task.text_columns[0]: t}, labelled=False) for t in unlabelled]
        run["unlabelled_log_probs"] = common.rounded(lm_label_scores(model, encoder, encoded))
    return run


# ---- figures -----------------------------------------------------------------------------------
def dev_gold(class_names: list[str], task: Task = TWITTER) -> list[int]:
    """Gold class positions of the dev rows, read from ../shared (labels are not copied into results)."""
    _, label_column, label_names = task_settings(task)
    return [class_names.index(label_names[int(row[label_column])]) for row in dev_rows(task)]


def metrics(run_gold: list[int], probabilities: torch.Tensor, class_names: list[str]) -> dict:
    from softprompt.inference.metrics import classification_metrics

    m = classification_metrics(run_gold, probabilities.argmax(-1).tolist(), class_names)
    return {"accuracy": round(m["accuracy"], 3), "macro_f1": round(m["macro_f1"], 3)}


def probabilities(run: dict, calibrated: bool) -> torch.Tensor:
    from softprompt.inference.calibration import calibrate, estimate_prior

    p = torch.tensor(run["log_probs"]).exp()
    return calibrate(p, estimate_prior(p)) if calibrated else p  # prior: the dev texts, labels unused


def summary(runs: list[dict], calibrated: bool, task: Task = TWITTER) -> dict:
    names = runs[0]["class_names"]
    gold = dev_gold(names, task)
    members = [probabilities(r, calibrated) for r in runs]
    single = [metrics(gold, p, names) for p in members]
    f1s = [m["macro_f1"] for m in single]
    ensemble = metrics(gold, torch.stack(members).mean(0), names)
    return {
        "seeds": [r["seed"] for r in runs],
        "macro_f1": f1s,
        "mean_macro_f1": round(statistics.mean(f1s), 3),
        "sd_macro_f1": round(statistics.stdev(f1s), 3) if len(f1s) > 1 else 0.0,
        "mean_accuracy": round(statistics.mean(m["accuracy"] for m in single), 3),
        "ensemble_macro_f1": ensemble["macro_f1"],
        "ensemble_accuracy": ensemble["accuracy"],
    }


def table(runs: list[dict], task: Task = TWITTER) -> str:
    lines = [
        (
            "| method | scoring | seeds | macro-F1 per seed | mean macro-F1 (sd) | mean accuracy "
            "| ensemble macro-F1 | ensemble accuracy |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        for calibrated in (False, True):
            if not mine:
                continue
            s = summary(mine, calibrated, task)
            lines.append(
                f"| {method} | {'+ prior' if calibrated else 'plain'} | {', '.join(map(str, s['seeds']))} "
                f"| {', '.join(f'{f:.3f}' for f in s['macro_f1'])} | {s['mean_macro_f1']:.3f} ({s['sd_macro_f1']:.3f}) "
                f"| {s['mean_accuracy']:.3f} | {s['ensemble_macro_f1']:.3f} | {s['ensemble_accuracy']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44, 45, 46])
    parser.add_argument("--quick", action="store_true", help="seed 42 only (a quick look; cached runs are reused)")
    parser.add_argument("--task", default="twitter_complaints", choices=sorted(TASKS))
    parser.add_argument(
        "--unlabelled", type=int, default=0, help="also score this many unlabelled test texts per new run"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides of the prompt methods (YAML values)"
    )
    parser.add_argument("--results", help="results file (default: benchmarks/results/quality[_TASK].json)")
    parser.add_argument("--runs", help="where the adapters go (default: runs/quality[/TASK])")
    parser.add_argument("--table", metavar="RESULTS", help="only print the table of a results file")
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    lora_settings = None
    if args.smoke is not None:  # seed 42, 2 epochs, 4 unlabelled texts
        common.start_smoke(args.smoke)
        args.seeds, args.unlabelled, lora_settings = [42], 4, {"epochs": 2}
        args.set = ["epochs=2", *args.set]
    task = TASKS[args.task]
    if common.absent(task.train, task.dev):
        return
    if args.table:
        results = common.read_json(Path(args.table))
        print(table(results["runs"], TASKS[results.get("task", "twitter_complaints")]))
        return
    seeds = [42] if args.quick else args.seeds
    overrides = common.parse_overrides(args.set)
    path = Path(args.results or task.results())
    runs = Path(args.runs or common.task_runs_folder("quality", task.name))
    results = common.read_json(path, {"task": task.name, "overrides": overrides, "runs": []})
    if results["overrides"] != overrides or results.get("task", "twitter_complaints") != task.name:
        raise SystemExit(
            f"{path} holds runs of {results.get('task', 'twitter_complaints')} "
            f"with overrides {results['overrides']}; give another --results."
        )
    unlabelled = unlabelled_texts(task, args.unlabelled)
    for method in args.methods:
        for seed in seeds:
            if any(r["method"] == method and r["seed"] == seed for r in results["runs"]):
                continue
            if method == "lora":
                run = train_lora_and_score(seed, runs, unlabelled, lora_settings, task=task)
            else:
                run = train_and_score(method, seed, overrides, runs, unlabelled, task)
            results["runs"].append(run)
            common.write_json(path, results)
            print(table(results["runs"], task), flush=True)
    results["summary"] = {
        f"{method} {'+ prior' if calibrated else 'plain'}": summary(mine, calibrated, task)
        for method in METHODS
        for calibrated in (False, True)
        if (mine := sorted((r for r in results["runs"] if r["method"] == method), key=lambda r: r["seed"]))
    }
    common.write_json(path, results)
    print(table(results["runs"], task))


if __name__ == "__main__":
    main()
