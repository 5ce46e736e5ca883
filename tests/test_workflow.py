"""The whole workflow on a tiny model: CLI train/eval/predict/info, resume after kill -9, NaN stop, DDP, configs."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from softprompt import cli
from softprompt.data import Example, read_task
from softprompt.task_types import causal_lm as model_module
from softprompt.training import TrainConfig, TrainingDiverged, train
from softprompt.training import loop as train_module
from tiny_run import run_config, toy_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]


def write_yaml(tmp_path, config, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args, env=None, **kwargs):
    """Run `python -m softprompt.cli ...` in a fresh process (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "softprompt.cli", *args], capture_output=True, text=True, env=full_env, **kwargs
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One CLI training run on the tiny model, shared by the tests that read its outputs."""
    tmp_path = tmp_path_factory.mktemp("run")
    config = write_yaml(tmp_path, run_config(tmp_path, lr=0.3))
    assert cli.main(["train", "--config", str(config), "--epochs", "4"]) == 0
    return tmp_path


def test_cli_train_writes_adapter_checkpoint_metrics_and_plot(trained_run):
    run = trained_run / "run"
    assert sorted(os.listdir(run)) == ["adapter", "checkpoint", "metrics.jsonl", "metrics.png", "run_config.yaml"]
    assert sorted(os.listdir(run / "adapter")) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "task.json"
    ]  # fmt: skip
    assert {"optimizer.safetensors", "prompt_source.safetensors", "trainer_state.json"} <= set(
        os.listdir(run / "checkpoint")
    )
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    for key in ("train_loss", "train_ppl", "eval_loss", "eval_ppl", "eval_accuracy", "eval_macro_f1"):
        assert key in lines[0]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learns
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    resolved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert resolved["epochs"] == 4 and resolved["method"] == "prompt_tuning"  # the override is recorded


def test_cli_predict_eval_and_info(trained_run, tmp_path):
    adapter = str(trained_run / "run" / "adapter")
    done = run_cli(["predict", adapter, "my order never arrived", "thanks for the quick help"])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["Tweet text"] for r in rows] == ["my order never arrived", "thanks for the quick help"]
    assert all(r["label"] in ("complaint", "no complaint") for r in rows)
    assert all(abs(r["p(complaint)"] + r["p(no complaint)"] - 1) < 1e-3 for r in rows)

    out = tmp_path / "predictions.csv"
    done = run_cli(["predict", adapter, "--input", str(trained_run / "dev.csv"), "--output", str(out)])
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines()[0].startswith("Tweet text,ID,Label,label")
    done = run_cli(["predict", adapter, "--input", "-"], input="first message\nsecond message\n")
    assert len(done.stdout.splitlines()) == 2

    done = run_cli(["eval", adapter, "--data", str(trained_run / "dev.csv")])
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["count"] == 12 and 0 <= metrics["accuracy"] <= 1 and len(metrics["confusion"]) == 2

    done = run_cli(["predict", adapter, "--generate", "--max-new-tokens", "3", "hello there"])
    assert done.returncode == 0, done.stderr
    assert "generated" in json.loads(done.stdout)

    done = run_cli(["info", adapter])
    info = json.loads(done.stdout)
    assert info["method"] == "PROMPT_TUNING" and info["prompt_embeddings"] == [4, 32]
    assert info["labels"] == ["Unlabeled", "complaint", "no complaint"]


def test_ensemble_averages_the_adapters_probabilities(trained_run, tmp_path):
    adapter = trained_run / "run" / "adapter"
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    tensors = load_file(str(other / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(0)  # another prompt of the same shape: a different member
    save_file(
        {name: torch.randn(t.shape, generator=generator) for name, t in tensors.items()},
        str(other / "adapter_model.safetensors"),
    )
    texts = ["my order never arrived", "thanks for the quick help", "wifi down all day"]

    def probabilities(*args):
        done = run_cli(["predict", *args, "--", *texts])
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["p(complaint)"] for line in done.stdout.splitlines()]

    alone, second, together = (
        probabilities(str(adapter)),
        probabilities(str(other)),
        probabilities(str(adapter), "--ensemble", str(other)),
    )
    assert alone != second
    assert together == pytest.approx([(a + b) / 2 for a, b in zip(alone, second)], abs=2e-4)
    done = run_cli(["eval", str(adapter), "--ensemble", str(other), "--data", str(trained_run / "dev.csv")])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["adapters"] == 2

    task = json.loads((other / "task.json").read_text())
    (other / "task.json").write_text(
        json.dumps({**task, "label_names": ["Unlabeled", "good", "bad"], "verbalizer": {}})
    )
    done = run_cli(["predict", str(adapter), "--ensemble", str(other), "--", "hello"])
    assert done.returncode == 2 and "an ensemble needs adapters trained for the same labels" in done.stderr
    done = run_cli(
        [
            "eval",
            str(adapter),
            "--ensemble",
            str(other),
            "--method",
            "generation",
            "--data",
            str(trained_run / "dev.csv"),
        ]
    )
    assert done.returncode == 2 and "use it with --method scoring" in done.stderr
    (other / "task.json").unlink()  # an adapter without its task (e.g. from PEFT): say what to add
    done = run_cli(["predict", str(other), "hello"])
    assert done.returncode == 2 and "has no task.json" in done.stderr and "TaskSpec" in done.stderr


def test_cli_push_uploads_the_adapter_with_its_task_in_one_commit(trained_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    adapter = trained_run / "run" / "adapter"
    calls, cards = [], []

    class FakeApi:  # records what would reach the Hub
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            cards.append((Path(folder_path) / "README.md").read_text())
            return "https://huggingface.co/me/tweets/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert cli.main(["push", str(adapter), "me/tweets", "--private", "--token", "hf_x"]) == 0
    assert calls == [
        ("token", "hf_x"),
        ("create", "me/tweets", True, True),
        ("upload", "me/tweets", ["README.md", "adapter_config.json", "adapter_model.safetensors", "task.json"]),
    ]
    assert "softprompt predict me/tweets" in capsys.readouterr().out
    assert 'Predictor.from_pretrained("me/tweets")' in cards[0] and "PATH_OR_HUB_ID" not in cards[0]  # names the repo
    assert "PATH_OR_HUB_ID" in (adapter / "README.md").read_text()  # the local folder is left as it was

    damaged = tmp_path / "damaged"
    shutil.copytree(adapter, damaged)
    (damaged / "adapter_model.safetensors").unlink()
    calls.clear()
    assert cli.main(["push", str(damaged), "me/tweets"]) == 2
    assert calls == [] and "No adapter_model.safetensors" in capsys.readouterr().err

    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}  # nothing listens there
    done = run_cli(["push", str(adapter), "me/tweets", "--token", "hf_fake"], env=offline)
    assert done.returncode == 2 and "Nothing was uploaded" in done.stderr


def test_the_task_of_a_pushed_adapter_comes_from_the_hub(trained_run, monkeypatch):
    import huggingface_hub

    adapter = trained_run / "run" / "adapter"
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(adapter / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert read_task("me/tweets").label_names == ["Unlabeled", "complaint", "no complaint"]
    assert asked == [("me/tweets", "task.json")]


def test_python_api_classifies_like_the_cli(trained_run):
    from softprompt import Predictor
    from softprompt.task_types.causal_lm import score_labels

    adapter = str(trained_run / "run" / "adapter")
    predictor = Predictor.from_pretrained(adapter)
    probabilities = predictor.probabilities(["my order never arrived"])  # [1, 2]
    done = run_cli(["predict", adapter, "my order never arrived"])
    row = json.loads(done.stdout)
    assert probabilities[0].tolist() == pytest.approx([row["p(complaint)"], row["p(no complaint)"]], abs=1e-4)
    # the same numbers as the training loop's scorer
    encoder = predictor.row_tokenizer()
    examples = [encoder.encode({"Tweet text": "my order never arrived"}, labelled=False)]
    torch.testing.assert_close(
        score_labels(predictor.model, encoder, examples, progress=False).softmax(-1), probabilities
    )


def test_cli_errors_are_clear(tmp_path):
    done = run_cli(["train", "--train_file", str(tmp_path / "missing.csv"), "--model", "x", "--method", "lora"])
    assert done.returncode == 2 and "Unknown prompt method 'lora'" in done.stderr
    done = run_cli(["predict", str(tmp_path / "nothing"), "hello"])
    assert done.returncode == 2 and "does not exist" in done.stderr


# `softprompt ...` in a process that dies by SIGKILL right after the checkpoint of epoch 2 is written
KILLED_AFTER_EPOCH_2 = """
import os, signal, sys
from softprompt import cli
from softprompt.training import loop

def save_then_die(folder, model, rows, optimizer, scheduler, state, real=loop.save_checkpoint):
    real(folder, model, rows, optimizer, scheduler, state)
    if state["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)

loop.save_checkpoint = save_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("method", METHODS)
def test_resume_after_kill_9_ends_with_the_same_adapter(tmp_path, method):
    # Unbalanced training rows with balance_classes: the per-epoch resampling must resume exactly too.
    options = {
        "balance_classes": True,
        "train_file": str(write_csv(tmp_path / "skewed.csv", toy_rows(16, seed=1)[:-5])),
    }
    straight = write_yaml(
        tmp_path, run_config(tmp_path, method, output_dir=str(tmp_path / "straight"), **options), "a.yaml"
    )
    killed = write_yaml(
        tmp_path, run_config(tmp_path, method, output_dir=str(tmp_path / "killed"), **options), "b.yaml"
    )
    assert run_cli(["train", "--config", str(straight)]).returncode == 0
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_EPOCH_2, "train", "--config", str(killed)], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    state = json.loads((tmp_path / "killed" / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 2
    done = run_cli(["train", "--config", str(killed), "--resume"])
    assert done.returncode == 0, done.stderr
    for folder, name in [("adapter", "adapter_model.safetensors"), ("checkpoint", "prompt_source.safetensors")]:
        a = load_file(tmp_path / "straight" / folder / name)
        b = load_file(tmp_path / "killed" / folder / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{folder}/{name} differs"

    def history(run):
        return (tmp_path / run / "metrics.jsonl").read_text().splitlines()

    assert len(history("killed")) == 3

    def strip(lines):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert strip(history("killed")) == strip(history("straight"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    poisoned = {"on": False}
    real_save, real_loss = train_module.save_checkpoint, model_module.causal_lm_loss

    def save_then_poison(*args, **kwargs):
        real_save(*args, **kwargs)
        poisoned["on"] = True

    def loss(logits, labels, num_virtual):
        value = real_loss(logits, labels, num_virtual)
        return value * float("nan") if poisoned["on"] else value

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_poison)
    monkeypatch.setattr(model_module, "causal_lm_loss", loss)
    config = TrainConfig.from_dict(run_config(tmp_path))
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 2.*epoch 1\) is intact. Lower lr"):
        train(config)
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["epoch"] == 1
    assert (
        load_file(tmp_path / "run" / "checkpoint" / "adapter_model.safetensors")["prompt_embeddings"].isfinite().all()
    )


def test_accelerate_two_processes_train_and_save_one_adapter(tmp_path):
    config = write_yaml(tmp_path, run_config(tmp_path, epochs=2))
    launcher = Path(sys.executable).with_name("accelerate")
    done = subprocess.run(
        [
            str(launcher),
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "softprompt.cli",
            "train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trainable params:") == 1  # only the main process reports
    assert sorted(os.listdir(tmp_path / "run")) == [
        "adapter",
        "checkpoint",
        "metrics.jsonl",
        "metrics.png",
        "run_config.yaml",
    ]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "src/softprompt/demo_data").glob("*.yaml")),
    ids=str,
)
def test_every_shipped_config_is_valid(path):
    data = yaml.safe_load(path.read_text())
    if "tasks" not in data:
        data.setdefault("train_file", "placeholder.csv")  # the demo config gets its files from the package
    config = TrainConfig.from_dict(data, origin=str(path))
    assert config.method_config().num_virtual_tokens >= 1
    if "configs" in path.parts:  # data from the Hub (local copies are command-line overrides); runs under ROOT/runs
        config = TrainConfig.from_yaml(path)
        for file in [config.train_file, config.eval_file] + [
            f for t in config.tasks or [] for f in (t.train_file, t.eval_file)
        ]:
            assert file is None or file.startswith("hf://datasets/"), file
        assert Path(config.output_dir).parent == ROOT / "runs" / path.parent.name


def test_config_paths_are_read_from_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    write_csv(tmp_path / "project" / "train.csv", toy_rows(4, seed=1))
    (tmp_path / "project" / "my-model").mkdir()
    path = write_yaml(folder, {"train_file": "../train.csv", "output_dir": "../runs/a", "model": "../my-model"})
    monkeypatch.chdir(tmp_path)  # anywhere else
    config = TrainConfig.from_yaml(path)
    assert config.train_file == str(tmp_path / "project" / "train.csv")
    assert config.output_dir == str(tmp_path / "project" / "runs" / "a")
    assert config.model == str(tmp_path / "project" / "my-model")
    assert (
        TrainConfig.from_yaml(write_yaml(folder, {"train_file": "x.csv", "model": "me/model"})).model == "me/model"
    )  # a hub id
    # command-line overrides are typed in the current folder and stay relative to it
    assert TrainConfig.from_yaml(path, {"train_file": "other.csv"}).train_file == "other.csv"
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        TrainConfig.from_yaml(write_yaml(folder, ["a", "b"], "list.yaml"))


def test_package_metadata_uses_an_spdx_license_and_ships_the_text():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_balance_classes_repeats_the_smaller_classes_each_epoch():
    examples = [Example([i], [7], label=0 if i < 8 else 1, truncated=False, text=str(i)) for i in range(10)]  # 8 vs 2
    config = TrainConfig.from_dict({"train_file": "x.csv", "balance_classes": True})
    first = train_module.epoch_examples(examples, config, 0)
    assert sorted(e.label for e in first) == [0] * 8 + [1] * 8
    assert all(e in first for e in examples)  # every original row stays
    assert first == train_module.epoch_examples(examples, config, 0)  # a function of (seed, epoch): resumable
    assert train_module.epoch_examples(examples, TrainConfig.from_dict({"train_file": "x.csv"}), 0) is examples


def test_learning_rate_defaults_per_method():
    assert TrainConfig.from_dict({"train_file": "x.csv"}).lr == 3e-2
    assert TrainConfig.from_dict({"train_file": "x.csv", "method": "prefix_tuning"}).lr == 1e-2
    assert TrainConfig.from_dict({"train_file": "x.csv", "method": "prefix_tuning", "lr": 0.5}).lr == 0.5


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown fields \\['epoch'\\]"):
        TrainConfig.from_dict({"train_file": "x.csv", "epoch": 3})
    with pytest.raises(ValueError, match="not fields of PromptTuningConfig"):
        TrainConfig.from_dict(
            {"train_file": "x.csv", "method_options": {"num_virtual_tokens": 4, "prefix_projection": True}}
        )
    with pytest.raises(ValueError, match="give train_file"):
        TrainConfig.from_dict({})
