"""What the benchmark scripts share: where the data, runs and results are, reading and writing rows and results, the
shipped configs made offline, memory figures, child processes, softprompt's training recipe run through the
library's own epoch (softprompt.training.loop.fit_epoch), and the --smoke mode.

Data: ../shared/data/<task>/ beside the repository (read-only, never committed). Results: benchmarks/results/.
Runs (adapters, checkpoints): runs/ at the repository's root.

`--smoke [DIR]` points all of these at DIR (default: a new temporary folder) before a script does anything: tiny
random models stand in for the built-in ones (tests/tiny_run.py's 2-layer Llama for smollm2-135m, a 2-layer BERT for
all-minilm-l6-v2), a few toy rows for twitter_complaints' files, and results go to DIR/results, never to
benchmarks/results. Child processes inherit the smoke folder through the environment.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"
SMOKE_VARIABLE = "SOFTPROMPT_BENCHMARK_SMOKE"  # the smoke folder, for this process and its children

# Each task's local files under ../shared/data/<task>/, by RAFT split (dev: labelled rows that are never trained on).
LOCAL_FILES = {
    "twitter_complaints": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
    "tweet_eval_hate": {"train": "raft_train.csv", "dev": "dev.csv", "test": "raft_test.csv"},
    "banking77": {"train": "raft_train.csv", "dev": "raft_test_gold.csv", "test": "raft_test.csv"},
    "sst2": {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"},
}
# The Hub's files that the shipped configs name (RAFT's and GLUE SST-2's): their (task, split) in LOCAL_FILES
HUB_COPIES = [
    re.compile(r"hf://datasets/ought/raft@refs/convert/parquet/(?P<task>[^/]+)/(?P<split>train|test)/"),
    re.compile(r"hf://datasets/nyu-mll/glue/(?P<task>sst2)/(?P<split>train|validation|test)-"),
]
# Each RAFT task's text column, and the tasks scored on a fixed random sample of their dev rows (banking77's dev is
# nearly all of RAFT's 5,000 test queries)
TEXT_COLUMNS = {"twitter_complaints": "Tweet text", "tweet_eval_hate": "Tweet", "banking77": "Query"}
DEV_SAMPLES = {"banking77": 400}
LOCAL_NAMES = {"banking_77": "banking77"}  # the Hub's task names where the local folder is named otherwise
SMOLLM2, MINILM = "HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"  # the built-ins


# ---- where things are ---------------------------------------------------------------------------------------------
def smoke_folder() -> Path | None:
    """The --smoke run's folder (this process's or its parent's), else None."""
    folder = os.environ.get(SMOKE_VARIABLE)
    return Path(folder) if folder else None


def data_root() -> Path:
    """../shared/data, or the smoke run's toy copy of it."""
    folder = smoke_folder()
    return folder / "data" if folder else SHARED


def task_folder(task: str = "twitter_complaints") -> Path:
    return data_root() / task


def task_file(split: str, task: str = "twitter_complaints") -> Path:
    """A task's local file of one split: train, dev or test (unlabelled)."""
    return task_folder(task) / LOCAL_FILES[task][split]


FIRST_TASK = "twitter_complaints"  # its result files and runs came first: their names carry no task


def task_suffix(task: str) -> str:
    """What a task adds to a result file's name: nothing for twitter_complaints, else _TASK."""
    return "" if task == FIRST_TASK else f"_{task}"


def task_runs_folder(kind: str, task: str) -> Path:
    """runs/KIND for twitter_complaints, else runs/KIND/TASK (see runs_folder)."""
    return runs_folder(kind) if task == FIRST_TASK else runs_folder(kind, task)


def results_path(name: str, given: str | os.PathLike | None = None) -> Path:
    """Where a result file goes (its folder made): `given`, else benchmarks/results/NAME (--smoke: DIR/results/NAME)."""
    folder = smoke_folder()
    path = Path(given) if given else (folder / "results" if folder else RESULTS) / name
    if folder and path.resolve().is_relative_to(RESULTS.resolve()):
        raise SystemExit(f"--smoke writes nothing into {RESULTS}: give another path than {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def runs_folder(*parts: str) -> Path:
    """runs/PARTS at the repository's root (--smoke: DIR/runs/PARTS), for adapters and checkpoints."""
    folder = smoke_folder()
    return (folder / "runs" if folder else ROOT / "runs").joinpath(*parts)


def absent(*paths: Path) -> bool:
    """Say `skipped: ...` and return True when a data file or folder a benchmark reads is absent."""
    for path in paths:
        if not path.exists():
            print(f"skipped: {path} is absent (benchmarks read their data under {data_root()})")
            return True
    return False


# ---- rows and results ---------------------------------------------------------------------------------------------
def read_rows(path: Path, limit: int | None = None) -> list[dict]:
    """A CSV file's rows as dicts of strings (the first `limit` only, if given)."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return rows[:limit] if limit else rows


def task_rows(split: str, limit: int | None = None, task: str = "twitter_complaints") -> list[dict]:
    """A task's rows of one split (train, dev, test) as CSV strings, the first `limit` only if given."""
    return read_rows(task_file(split, task), limit)


def sample_dev(rows: list, task: str) -> list:
    """The dev rows a task is scored on: all of them, or DEV_SAMPLES[task] of them drawn with seed 0."""
    count = DEV_SAMPLES.get(task)
    return random.Random(0).sample(rows, count) if count else rows


def write_rows(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    """Rows as a CSV file (only `fieldnames`' columns, if given; by default the first row's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fieldnames or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_json(path: Path, default=None):
    """A results file, or `default` when there is none yet (results files are resumable)."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else default


def write_json(path: Path, data, indent: int | None = None) -> Path:
    """Atomically: a run killed mid-write leaves the previous file (and the runs it holds) whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(data, indent=indent))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def rounded(scores) -> list[list[float]]:
    """[N, K] class scores as log-softmax over the classes, rounded to 5 decimals (as results files keep them)."""
    return [[round(v, 5) for v in row] for row in scores.log_softmax(-1).tolist()]


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE config overrides from the command line, the values read as YAML."""
    import yaml

    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


# ---- memory and processes -----------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set (model loading included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident set now."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * 4096 / 2**20


def machine_line() -> str:
    """The machine in one line, as multi_adapter.py's and serve.py's results record it."""
    import platform

    import torch

    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run_child(command: list[str], out: Path, capture: bool = True) -> dict:
    """Run a child process that writes its result (JSON) to `out`: that result, with the machine's 1-minute load average
    before and after (other work slows a child down); {"error": ...} when the child failed. `capture`: keep its output
    (the last line of its stderr goes into the error), else it shows on this process's. With --smoke, a benchmark
    script run by this Python runs in this process instead (same command line and result file; its figures mean
    nothing anyway, and a process start costs seconds of imports)."""
    load_before = os.getloadavg()[0]
    if smoke_folder() and command[0] == sys.executable and command[1].endswith(".py"):
        returncode, last = run_in_process(command[1:])
    else:
        done = subprocess.run(command, capture_output=capture, text=True, check=False)
        returncode, last = done.returncode, (done.stderr.strip().splitlines() or [""])[-1] if capture else ""
    load = {"load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    if returncode != 0 or not out.exists():
        return {"error": f"child failed ({returncode}): {last}", **load}
    result = json.loads(out.read_text())
    out.unlink()
    return {**result, **load}


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """`python SCRIPT ARGS...` run as __main__ in this process: (exit status, the error's line if it failed)."""
    import runpy

    saved = sys.argv
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        return (exit.code if isinstance(exit.code, int) else 1 if exit.code else 0), str(exit.code or "")
    except Exception as error:  # noqa: BLE001 - a failed child is a result, as a child process's would be
        return 1, f"{type(error).__name__}: {error}"
    finally:
        sys.argv = saved
    return 0, ""


# ---- the shipped configs, offline ---------------------------------------------------------------------------------
def local_file(value: str, field: str) -> str:
    """A data setting's local file: the Hub's files of RAFT and GLUE SST-2 become the task's copy under ../shared/data
    (HUB_COPIES), a file of ../shared/data the same file of the data in use (--smoke: the toy copy). The error names
    the setting."""
    from softprompt.data import is_remote
    from softprompt.errors import DataError

    hub = next((match for pattern in HUB_COPIES if (match := pattern.match(value))), None)
    if hub:
        task = LOCAL_NAMES.get(hub["task"], hub["task"])
        if hub["split"] not in LOCAL_FILES.get(task, {}):
            raise DataError(f"{field}: {value} is on the Hub and benchmarks know no local copy of it: set {field}.")
        path = task_file(hub["split"], task)
    elif is_remote(value):
        raise DataError(f"{field}: {value} is on the Hub, which benchmarks do not read: set {field} to a local file.")
    else:
        path = Path(os.path.abspath(value))
        if path.is_relative_to(SHARED):
            path = data_root() / path.relative_to(SHARED)
    if not path.is_file():
        raise DataError(f"{field}: {path} does not exist (benchmarks read the local copies under {data_root()}).")
    return str(path)


def local_config(path: Path, overrides: dict | None = None):
    """A shipped config (TrainConfig.from_yaml(path, overrides)) that reads nothing from the Hub: each data setting
    (train_file, eval_file, calibration.texts_file, tasks.N.train_file/eval_file) names a local file that exists
    (local_file); with --smoke, a built-in model is its tiny stand-in. Leave out calibration with
    overrides {"calibration": None} where a benchmark does not use it."""
    from softprompt.training import TrainConfig

    config = TrainConfig.from_yaml(path, overrides)
    for owner, prefix in [(config, ""), *((task, f"tasks.{n}.") for n, task in enumerate(config.tasks or []))]:
        for name in ("train_file", "eval_file"):
            if getattr(owner, name, None):
                setattr(owner, name, local_file(getattr(owner, name), prefix + name))
    if config.calibration is not None:
        config.calibration.texts_file = local_file(config.calibration.texts_file, "calibration.texts_file")
    config.model = model_name(config.model)
    return config


# ---- training: softprompt's recipe in the library's epoch ---------------------------------------------------------
def fit(
    model,
    examples: list,
    config,
    collate: Callable[[list], dict],
    loss_fn: Callable,
    weight_fn: Callable,
    order: Callable[[list, int], list[list[int]]] | None = None,
) -> float:
    """Train `model` (any model: softprompt's or PEFT's) on `examples` as `softprompt train` does, each epoch run by
    softprompt.training.loop.fit_epoch: AdamW over the trainable parameters (config.lr, config.weight_decay), a linear
    schedule without warmup over config.epochs, clipping at config.max_grad_norm; epoch e seeded with config.seed + e,
    its rows from epoch_examples (balance_classes), in length-grouped batches (config.seed + e), or `order(rows, e)`'s.
    `loss_fn(model, batch)` and `weight_fn(batch)` as fit_epoch takes them. Returns the seconds spent in the epochs."""
    import math

    import torch
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    from softprompt.data import length_grouped_batches
    from softprompt.training.examples import epoch_examples
    from softprompt.training.loop import fit_epoch

    accelerator = Accelerator()
    home = next(model.parameters()).device
    model.to(accelerator.device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    steps = math.ceil(len(epoch_examples(examples, config, 0)) / config.batch_size) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    seconds = 0.0
    for epoch in range(config.epochs):
        torch.manual_seed(config.seed + epoch)  # dropout and anything random: a function of (seed, epoch)
        rows = epoch_examples(examples, config, epoch)
        batches = (
            order(rows, epoch)
            if order
            else length_grouped_batches(
                [len(e.prompt_ids) + len(e.target_ids) for e in rows], config.batch_size, config.seed + epoch
            )
        )
        # a generator of its own: a DataLoader would otherwise draw its base seed from the global one (dropout's)
        loader = torch.utils.data.DataLoader(
            rows, batch_sampler=batches, collate_fn=collate, generator=torch.Generator()
        )
        started = time.perf_counter()
        fit_epoch(
            model, loader, loss_fn, weight_fn, optimizer, scheduler, accelerator, config.max_grad_norm,
            f"epoch {epoch + 1}/{config.epochs}", progress=False,
        )  # fmt: skip
        seconds += time.perf_counter() - started
    model.to(home)
    return seconds


# ---- --smoke ------------------------------------------------------------------------------------------------------
def add_smoke_argument(parser) -> None:
    parser.add_argument(
        "--smoke",
        nargs="?",
        const="",
        metavar="DIR",
        help="a few seconds on a tiny random model and toy rows, everything (results too) under DIR "
        "(default: a new temporary folder)",
    )


def start_smoke(folder: str | None, encoder: bool = False) -> Path:
    """Set up a --smoke run in `folder` (None or "": a new temporary one) and point this process and its children at
    it: the tiny causal LM (with `encoder`, the tiny BERT too) of tests/tiny_run.py as the built-in models' snapshots
    in a Hugging Face cache of its own, 8 toy train and dev rows of twitter_complaints and 24 unlabelled test rows.
    Training runs in this process draw no metrics.png."""
    folder = Path(folder or tempfile.mkdtemp(prefix="softprompt-smoke-")).resolve()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_run import make_tiny_encoder_folder, make_tiny_model_folder, toy_rows, write_csv

    builds = {SMOLLM2: make_tiny_model_folder, **({MINILM: make_tiny_encoder_folder} if encoder else {})}
    for hub_id, build in builds.items():
        snapshot = smoke_snapshot(folder, hub_id)
        if not (snapshot / "model.safetensors").is_file():
            build(snapshot)
            (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
            (snapshot.parents[1] / "refs" / "main").write_text(snapshot.name)
    data = folder / "data" / "twitter_complaints"
    if not (data / "test.csv").is_file():
        data.mkdir(parents=True, exist_ok=True)
        write_csv(data / "train.csv", toy_rows(8, seed=1))
        write_csv(data / "dev.csv", toy_rows(8, seed=2))
        write_csv(data / "test.csv", [{**row, "Label": 0} for row in toy_rows(24, seed=3)])  # unlabelled, as RAFT's
    os.environ[SMOKE_VARIABLE] = str(folder)
    os.environ["HF_HUB_CACHE"] = str(folder / "hub")  # a built-in name resolves to its tiny stand-in, never downloads
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_CACHE"] = str(folder / "datasets")  # the toy tables' Arrow copies stay in the folder
    try:
        from softprompt.training import metrics_log
    except ImportError:  # moved: the runs only take longer
        pass
    else:
        metrics_log.plot_metrics = lambda history, path: None  # metrics.png: 0.6 s an epoch, most of a tiny run
    print(f"smoke run: tiny random models and toy rows in {folder}; results in {folder / 'results'}", flush=True)
    return folder


def smoke_snapshot(folder: Path, hub_id: str) -> Path:
    """A built-in model's tiny stand-in in the smoke run's Hugging Face cache."""
    return folder / "hub" / ("models--" + hub_id.replace("/", "--")) / "snapshots" / ("0" * 40)


def model_name(name: str) -> str:
    """A model as a benchmark names it (smollm2-135m, all-minilm-l6-v2, ...); with --smoke, a built-in model's tiny
    stand-in (its folder)."""
    folder = smoke_folder()
    if folder is None:
        return name
    from softprompt.base_models import builtin

    known = builtin(name)
    return str(smoke_snapshot(folder, known.hub_id)) if known else name
