"""Every benchmark's --smoke mode: `python benchmarks/SCRIPT.py --smoke DIR` runs on a tiny random model and toy rows,
exits 0 and writes its results file (with the figures its tables read) under DIR/results, never into
benchmarks/results. The selected scripts start together when the first test asks, two at a time, the longest first;
each test then waits for its own."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# script -> the results file its smoke run writes; the longest runs first
SMOKE = {
    "serve": "serve.json",
    "encoder_cv": "encoder_cv.json",
    "encoder": "encoder.json",
    "quality": "quality.json",
    "compare_peft": "epochs2.json",
    "recipe_cv": "recipe_cv.json",
    "self_training": "self_training_prompt_tuning.json",
    "probe": "probe.json",
    "channel": "channel.json",
    "multi_adapter": "multi_adapter.json",
    "gpu": "gpu.json",
}


def results_files() -> dict[str, float]:
    return {path.name: path.stat().st_mtime for path in RESULTS.iterdir()} if RESULTS.is_dir() else {}


def run_smoke(script: str, folder: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}.py", "--smoke", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    return done, time.perf_counter() - started


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """smoke(script) -> the results file of its --smoke run, once the run has exited 0."""
    selected = {item.name.removeprefix("test_") for item in request.session.items if item.path == request.path}
    before = results_files()
    folders = {script: tmp_path_factory.mktemp(script) for script in SMOKE if script in selected}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {script: pool.submit(run_smoke, script, folder) for script, folder in folders.items()}

        def result(script: str) -> dict:
            done, seconds = runs[script].result()
            output = f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
            assert done.returncode == 0, f"benchmarks/{script}.py --smoke exited {done.returncode}\n{output}"
            path = folders[script] / "results" / SMOKE[script]
            assert path.is_file(), f"benchmarks/{script}.py --smoke wrote no {path.name}\n{output}"
            print(f"{script} --smoke: {seconds:.1f} s")
            return json.loads(path.read_text())

        result.before = before
        result.wait_all = lambda: [run.result() for run in runs.values()]
        yield result


def test_channel(smoke):
    results = smoke("channel")
    assert [(r["repeat"], r["fold"]) for r in results["cv"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for run in results["cv"]:
        assert len(run["held_log_probs"]) == len(run["gold"]) and len(run["unlabelled_log_probs"]) == 4
        assert all(len(row) == 2 for row in run["held_log_probs"])
    assert [r["seed"] for r in results["dev"]] == [42] and len(results["dev"][0]["log_probs"]) == 8


def test_compare_peft(smoke):
    results = smoke("compare_peft")
    assert results["epochs"] == 2 and results["dev_tweets"] == 8
    assert set(results["runs"]) == {"prompt_tuning", "p_tuning", "prefix_tuning"}
    for libraries in results["runs"].values():
        peft, ours = libraries["peft"], libraries["softprompt"]
        for run in (peft, ours):
            assert run["seconds_per_epoch"] > 0 and run["real_tokens_per_second"] > 0 and run["peak_rss_mb"] > 0
        assert {"seconds", "accuracy", "macro_f1", "unmatched"} <= set(peft["generation"])
        assert {"seconds", "accuracy", "macro_f1"} <= set(ours["scoring"]) & set(ours["generation"])


def test_encoder(smoke):
    results = smoke("encoder")
    assert results["methods"] == ["prompt_tuning", "p_tuning", "prefix_tuning"] and results["dev_rows"] == 8
    for method, runs in results["runs"].items():
        trained = {"softprompt", "shipped"} | ({"peft", "peft_grouped"} if method != "prefix_tuning" else set())
        assert set(runs) == trained | {"peft"}
        for key in trained:
            assert 0 <= runs[key]["macro_f1"] <= 1 and runs[key]["examples_per_second"] > 0, (method, key)
        assert runs["softprompt"]["train_rows"] == runs["softprompt"]["epochs"] * 8  # balanced toy rows, 2 epochs
    assert "Model does not support past key values" in results["runs"]["prefix_tuning"]["peft"]["error"]
    assert "skipped" in results["setfit"] or "macro_f1" in results["setfit"]  # SetFit runs only where installed
    assert {"macro_f1", "accuracy"} <= set(results["probe"]["default"]) & set(results["probe"]["balanced"])


@pytest.fixture
def encoder_benchmark(monkeypatch):
    """benchmarks/encoder.py as a module (its helpers need only the standard library)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import encoder

    return encoder


@pytest.mark.parametrize("seed", range(5))
def test_encoder_benchmark_macro_f1_is_scikit_learns(encoder_benchmark, seed):
    """Over the classes in gold or predicted (banking77's dev lacks some intents a head predicts)."""
    from sklearn.metrics import accuracy_score, f1_score

    generator = random.Random(seed)
    gold = [generator.randrange(6) for _ in range(40)]
    predicted = [generator.choice([0, 1, 2, 7]) for _ in range(40)]  # 7: never gold; 3-5: never predicted
    ours = encoder_benchmark.macro_f1(gold, predicted)
    assert ours["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro"))
    assert ours["accuracy"] == pytest.approx(accuracy_score(gold, predicted))


def test_encoder_benchmark_seed_table(encoder_benchmark):
    """The --seeds table: each shipped config and SetFit by seed with mean (sd), the logistic regression once."""
    run = {"42": {"macro_f1": 0.5, "accuracy": 0.6}, "43": {"macro_f1": 0.7, "accuracy": 0.8}}
    results = {
        "runs": {"prompt_tuning": run, "p_tuning": {"42": {"error": "x"}}},
        "setfit": {"42": {**run["42"], "version": "1.2.0"}, "43": run["43"]},
        "probe": {"default": {"how": "sklearn", "macro_f1": 0.55, "accuracy": 0.65}},
    }
    lines = encoder_benchmark.seed_table(results).splitlines()
    assert lines[2] == "| minilm_prompt_tuning.yaml | 42: 0.500, 43: 0.700 | 0.600 (0.141) | 0.700 |"
    assert lines[3] == "| SetFit 1.2.0, defaults | 42: 0.500, 43: 0.700 | 0.600 (0.141) | 0.700 |"
    assert lines[4] == "| frozen mean-pooled embeddings, sklearn | (no seed) | 0.550 | 0.650 |" and len(lines) == 5


def test_encoder_benchmark_resumed_seeds_file_keeps_runs_and_names_every_command(encoder_benchmark):
    previous = {
        "command": "python benchmarks/encoder.py --seeds 42 --methods prompt_tuning",
        "runs": {"prompt_tuning": {"42": {"macro_f1": 0.5}}},
        "setfit": {"42": {"macro_f1": 0.4}, "skipped": "an old single-run entry"},
        "probe": {"default": {"macro_f1": 0.3}},
    }
    results = {"command": "python benchmarks/encoder.py --seeds 42 --methods p_tuning"}
    encoder_benchmark.carry_over(results, previous)
    assert results["runs"] == previous["runs"] and results["setfit"] == {"42": {"macro_f1": 0.4}}
    assert results["probe"] == previous["probe"]
    assert results["command"] == f"{previous['command']}; python benchmarks/encoder.py --seeds 42 --methods p_tuning"
    again = {"command": "python benchmarks/encoder.py --seeds 42 --methods prompt_tuning"}
    encoder_benchmark.carry_over(again, results)  # a command already named is not named twice
    assert again["command"] == results["command"]
    fresh = {"command": "python benchmarks/encoder.py --seeds 42"}
    encoder_benchmark.carry_over(fresh, {})
    assert fresh == {"command": "python benchmarks/encoder.py --seeds 42", "runs": {}, "setfit": {}}


def test_results_files_are_written_atomically(monkeypatch, tmp_path):
    """A write that fails half-way (here: the disk fills after 5 characters) leaves the previous results file whole
    and no partial file behind."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import common

    path = common.write_json(tmp_path / "results.json", {"runs": [1, 2]})
    write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        write_text(self, text[:5], *args, **kwargs)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", disk_full)
        with pytest.raises(OSError, match="No space"):
            common.write_json(path, {"runs": [1, 2, 3]})
    assert json.loads(path.read_text()) == {"runs": [1, 2]} and [f.name for f in tmp_path.iterdir()] == [path.name]
    common.write_json(path, {"runs": [1, 2, 3]}, indent=1)
    assert json.loads(path.read_text()) == {"runs": [1, 2, 3]} and [f.name for f in tmp_path.iterdir()] == [path.name]


def test_encoder_cv(smoke):
    results = smoke("encoder_cv")
    assert results["folds"] == 2
    screened = {e["name"] for e in results["candidates"] if e["fold_seed"] == 0}
    assert screened == {"pt-lr0.03", "mean-fit-ptuning-lr0.01", "mean-fit-prefix-lr0.01"}
    assert all(len(e["fold_macro_f1"]) == 2 and "pooled_macro_f1" in e for e in results["candidates"])
    assert len(results["selection"]["finalists"]) == 2 and results["selection"]["chosen"]["folds"] == 4
    assert results["dev"]["name"] == results["selection"]["chosen"]["name"] and 0 <= results["dev"]["macro_f1"] <= 1


def test_multi_adapter(smoke):
    results = smoke("multi_adapter")
    assert results["texts"] == 8 and [run["adapters"] for run in results["runs"]] == [1, 2]
    for run in results["runs"]:
        ours = run["softprompt"]
        assert ours["mixed"]["texts_per_second"] > 0 and ours["grouped"]["texts_per_second"] > 0
        assert ours["mixed_vs_grouped_max_abs_diff"] < 1e-4 and run["peft"]["texts_per_second"] > 0
        assert 0 <= run["agreement_with_peft"] <= 1
    assert "rss_mb_per_extra_adapter" in results["runs"][1]["softprompt"]
    assert "rss_mb_per_extra_adapter" in results["runs"][1]["peft"]


def test_probe(smoke):
    results = smoke("probe")
    for choice in (results["chosen_by_train_loo"], results["best_on_dev"]):
        assert {"train_loo_macro_f1", "dev_macro_f1", "dev_accuracy", "features"} <= set(choice)
    assert len(results["all"]) == 2 * 2 * 3  # pooling x the tiny model's 2 layers x 3 strengths


def test_quality(smoke):
    results = smoke("quality")
    assert results["task"] == "twitter_complaints" and results["overrides"] == {"epochs": 2}
    methods = {"prompt_tuning", "p_tuning", "prefix_tuning", "peft_guide", "lora"}
    assert {r["method"] for r in results["runs"]} == methods
    for run in results["runs"]:
        assert run["seed"] == 42 and len(run["log_probs"]) == 8 and len(run["unlabelled_log_probs"]) == 4
    assert {"mean_macro_f1", "ensemble_macro_f1"} <= set(results["summary"]["lora + prior"])


def test_recipe_cv(smoke):
    results = smoke("recipe_cv")
    entry = results["candidates"]["prompt_tuning/shipped"]
    assert entry["overrides"] == {"epochs": 2} and entry["unlabelled"] == 4
    assert [(r["repeat"], r["fold"]) for r in entry["runs"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for run in entry["runs"]:
        assert len(run["held_log_probs"]) == len(run["held"]) and len(run["content_free_log_probs"]) == 3


def test_self_training(smoke):
    results = smoke("self_training")
    assert results["per_class"] == 2 and [s["seed"] for s in results["students"]] == [42]
    assert {"accuracy", "macro_f1"} <= set(results["student_ensemble"])
    assert 0 <= results["pool_share_predicted_complaint"] <= 1


def test_serve(smoke):
    results = smoke("serve")
    assert results["requests"] == 4
    cells = {(r["task"], r["adapters"], r["clients"]) for r in results["rows"]}
    assert cells == {(task, 2, clients) for task in ("classify", "generate") for clients in (1, 2)}
    for row in results["rows"]:
        for way in ("mixed", "per_adapter", "peft"):
            assert row[way]["errors"] == 0 and row[way]["requests_per_second"] > 0, (row["task"], way)
        assert row["offline"]["p99_ms"] > 0


def test_smoke_runs_write_nothing_into_benchmarks_results(smoke):
    smoke.wait_all()
    assert results_files() == smoke.before


def test_gpu(smoke):
    results = smoke("gpu")
    assert [r["shape"] for r in results["shapes"]] == ["smollm2-1.7b", "qwen2.5-1.5b"]  # a Llama and a Qwen2
    for shape in results["shapes"]:
        assert set(shape["training"]) == {
            f"{m}/{lib}" for m in ("prompt_tuning", "prefix_tuning") for lib in ("peft", "softprompt")
        }
        assert all(run["tokens_per_s"] > 0 and run["peak_memory_mb"] > 0 for run in shape["training"].values())
        assert set(shape["serving"]) == {"1/peft", "1/softprompt", "4/peft", "4/softprompt"}
        assert all(rows > 0 for rows in shape["serving"].values())
