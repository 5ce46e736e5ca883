"""Data sources of a training config: files on the Hub by datasets' hf:// address (mocked: tests run offline), the
error when the Hub cannot be reached, local overrides, paths read from the config's folder, row samples, and the
shipped RAFT configs (tweet_eval_hate, banking77, twitter_complaints)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from softprompt import cli
from softprompt.data import DataError, load_table, sample_rows
from softprompt.training import TrainConfig, train
from tiny_run import run_config, toy_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RAFT = "hf://datasets/ought/raft@refs/convert/parquet/{}/train/*.parquet"


def raft_like(rows):
    """A split as datasets returns RAFT's Parquet export: Label a ClassLabel with 'Unlabeled' at 0."""
    features = datasets.Features(
        {
            "Tweet text": datasets.Value("string"),
            "ID": datasets.Value("int64"),
            "Label": datasets.ClassLabel(names=["Unlabeled", "complaint", "no complaint"]),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset answering hf:// addresses from memory (and recording the calls); local files as usual."""
    calls, real = [], datasets.load_dataset

    def load_dataset(path, *args, **kwargs):
        files = kwargs.get("data_files")
        if isinstance(files, str) and files.startswith("hf://"):
            calls.append((path, files, kwargs.get("split")))
            return raft_like(toy_rows(16, seed=5))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_files_load_through_datasets_parquet_reader(fake_hub):
    table = load_table(RAFT.format("twitter_complaints"))
    assert fake_hub == [("parquet", RAFT.format("twitter_complaints"), "train")]
    assert table.class_names == ["Unlabeled", "complaint", "no complaint"] and len(table.rows) == 16
    assert table.origin == RAFT.format("twitter_complaints")


def test_a_config_trains_from_the_hub_by_default_and_a_local_file_overrides_it(fake_hub, tmp_path):
    config = run_config(tmp_path, epochs=1, train_file=RAFT.format("twitter_complaints"))
    config["task"]["label_names"] = None  # the Hub's ClassLabel names them
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert TrainConfig.from_yaml(path).train_file == RAFT.format("twitter_complaints")  # not made a path
    train(TrainConfig.from_yaml(path))
    assert len(fake_hub) == 1
    task = json.loads((tmp_path / "run" / "adapter" / "task.json").read_text())
    assert task["label_names"] == ["Unlabeled", "complaint", "no complaint"]

    local = write_csv(tmp_path / "local.csv", toy_rows(8, seed=3))
    config = TrainConfig.from_yaml(
        path, {"train_file": str(local), "task.label_names": ["Unlabeled", "complaint", "no complaint"]}
    )
    assert config.train_file == str(local)
    train(config)
    assert len(fake_hub) == 1  # the override did not touch the Hub


class ConnectError(Exception):
    """What httpx raises when the Hub's address does not resolve."""


def test_an_unreachable_hub_names_the_problem_and_the_local_override(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as caught:
        load_table(RAFT.format("tweet_eval_hate"))
    message = str(caught.value)
    assert "the Hugging Face Hub cannot be reached" in message and "--train_file PATH" in message
    assert RAFT.format("tweet_eval_hate") in message

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(tmp_path, train_file=RAFT.format("twitter_complaints"))))
    assert cli.main(["train", "--config", str(config), "--epochs", "1"]) == 2
    error = capsys.readouterr().err
    assert "cannot be reached" in error and "--train_file PATH" in error
    with pytest.raises(DataError, match=r"--tasks\.1\.train_file PATH"):  # a task of a multitask run: its own field
        load_table(RAFT.format("banking_77"), field="tasks.1.train_file")


def test_offline_mode_with_the_real_datasets_library_gives_the_same_advice(tmp_path):
    """No mock: datasets and huggingface_hub in offline mode, as on a machine without network."""
    code = f"from softprompt.data import load_table\nload_table({RAFT.format('twitter_complaints')!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert done.returncode != 0
    assert "cannot be reached" in done.stderr and "--train_file PATH" in done.stderr, done.stderr[-2000:]


def test_other_sources_and_missing_local_files_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not end in a file type"):
        load_table("hf://datasets/ought/raft@refs/convert/parquet/twitter_complaints/train")
    with pytest.raises(DataError, match=r"does not exist \(eval_file\).*--eval_file PATH"):
        load_table(str(tmp_path / "absent.csv"), field="eval_file")


def test_relative_paths_in_tasks_and_method_options_are_read_from_the_config_folder(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "mpt.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "multitask_prompt_tuning",
                "method_options": {
                    "num_virtual_tokens": 4,
                    "prompt_tuning_init": "AVERAGE_SOURCE_TASKS",
                    "prompt_tuning_init_state_dict_path": "../runs/source/adapter",
                },
                "tasks": [
                    {"name": "a", "train_file": "../a.csv", "eval_file": "../a_dev.csv"},
                    {"name": "b", "train_file": RAFT.format("banking_77")},
                ],
            }
        )
    )
    config = TrainConfig.from_yaml(path)
    assert config.method_options["prompt_tuning_init_state_dict_path"] == str(tmp_path / "runs" / "source" / "adapter")
    assert [t.train_file for t in config.tasks] == [str(tmp_path / "a.csv"), RAFT.format("banking_77")]
    assert config.tasks[0].eval_file == str(tmp_path / "a_dev.csv")
    assert [(t.task.name, t.task.task_id) for t in config.tasks] == [("a", 0), ("b", 1)]
    assert config.method_config().num_tasks == 2  # follows tasks
    overridden = TrainConfig.from_yaml(path, {"tasks.1.train_file": "local.csv", "tasks.0.max_train_rows": 5})
    assert overridden.tasks[1].train_file == "local.csv" and overridden.tasks[0].max_train_rows == 5
    with pytest.raises(ValueError, match="'2' is not an index of a list of 2"):
        TrainConfig.from_yaml(path, {"tasks.2.train_file": "x.csv"})


@pytest.mark.parametrize(
    "change,message",
    [
        ({"train_file": "x.csv"}, "tasks replaces train_file"),
        ({"method": "prompt_tuning"}, "needs a prompt per task: method multitask_prompt_tuning"),
        ({"method_options": {"num_virtual_tokens": 4, "num_tasks": 3}}, "num_tasks is 3 but tasks lists 2"),
        (
            {"tasks": [{"name": "a", "train_file": "a.csv"}, {"name": "a", "train_file": "b.csv"}]},
            "task names must differ",
        ),
        ({"tasks": [{"name": "a", "train_file": "a.csv", "task": {"task_id": 1}}]}, "task id come from the list"),
        ({"tasks": [{"name": "a", "file": "a.csv"}]}, r"tasks\[0\]: unknown fields \['file'\]"),
        ({"task_type": "SEQ_CLS", "tasks": [{"name": "a", "train_file": "a.csv"}]}, "must be CAUSAL_LM"),
        ({"tasks": [{"name": "a", "train_file": "a.csv", "task": {"task_type": "SEQ_CLS"}}]}, "task_type is the run's"),
        ({"best_metric": "last", "early_stopping_patience": 2}, "early_stopping_patience needs a best_metric"),
        ({"max_train_rows": 0}, "max_train_rows must be a positive integer"),
    ],
)
def test_multitask_config_errors_name_the_field(change, message):
    data = {
        "method": "multitask_prompt_tuning",
        "method_options": {"num_virtual_tokens": 4},
        "tasks": [{"name": "a", "train_file": "a.csv"}, {"name": "b", "train_file": "b.csv"}],
        **change,
    }
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(data)


def test_max_train_rows_is_a_seeded_sample_in_file_order(tmp_path):
    table = load_table(str(write_csv(tmp_path / "t.csv", toy_rows(30, seed=1))))
    sample = sample_rows(table, 10, seed=42)
    ids = [row["ID"] for row in sample.rows]
    assert len(ids) == 10 and ids == sorted(ids) and ids == [row["ID"] for row in sample_rows(table, 10, seed=42).rows]
    assert ids != [row["ID"] for row in sample_rows(table, 10, seed=43).rows]
    assert sample_rows(table, 100, seed=42) is table and sample_rows(table, None, seed=42) is table


def test_best_metric_last_keeps_the_last_epoch_whatever_the_eval_data_say(tmp_path):
    lines = train(TrainConfig.from_dict(run_config(tmp_path, epochs=2, best_metric="last", lr=0.3)))
    assert lines["epoch"] == 2
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    checkpoint = load_file(str(tmp_path / "run" / "checkpoint" / "adapter_model.safetensors"))
    assert all((adapter[k] == checkpoint[k]).all() for k in adapter)  # the adapter is the last epoch's


RAFT_CONFIGS = sorted((ROOT / "configs" / "tweet_eval_hate").glob("*.yaml")) + sorted(
    (ROOT / "configs" / "banking77").glob("*.yaml")
)


@pytest.mark.parametrize("path", RAFT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_raft_configs_read_raft_from_the_hub_with_its_label_names(path):
    config = TrainConfig.from_yaml(path)
    task = path.parent.name
    assert config.train_file == RAFT.format({"banking77": "banking_77"}.get(task, task))
    encoder = path.stem.startswith("minilm_")  # a classification head: no verbalizer
    assert config.best_metric == "last" and config.task_type == ("SEQ_CLS" if encoder else "CAUSAL_LM")
    names = config.task.label_names
    assert names[0] == "Unlabeled"
    assert config.eval_file is None  # no default reaches outside the repository (dev data are a command-line option)
    if task == "banking77":
        assert len(names) == 78
        if not encoder:
            assert len(set(config.task.verbalizer.values())) == 77  # 77 distinct answers
        label_file = SHARED / "banking77" / "raft_label_names.txt"
        if label_file.is_file():  # RAFT's order, as the local files' label ids (and the Hub's ClassLabel) are
            assert names == label_file.read_text().split()
    else:
        assert names == ["Unlabeled", "hate speech", "not hate speech"]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tiny_run import make_tiny_model_folder

    return AutoTokenizer.from_pretrained(make_tiny_model_folder(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.mark.skipif(
    not (SHARED / "banking77").is_dir() or not (SHARED / "tweet_eval_hate").is_dir(),
    reason="../shared/data (RAFT files) is absent",
)
@pytest.mark.parametrize(
    "task,train_name,dev_name,dev_rows",
    [
        ("tweet_eval_hate", "raft_train.csv", "dev.csv", 400),
        ("banking77", "raft_train.csv", "raft_test_gold.csv", 5000),
    ],
)
def test_the_local_raft_files_fit_the_configs(task, train_name, dev_name, dev_rows, tiny_tokenizer):
    """The documented override (--train_file ../shared/data/TASK/raft_train.csv) and the dev file read
    with the config's task."""
    import dataclasses

    from softprompt.data import RowTokenizer

    config = TrainConfig.from_yaml(ROOT / "configs" / task / "prompt_tuning.yaml")
    spec = dataclasses.replace(config.task, max_length=1024)  # the tiny tokenizer cuts words finer than SmolLM2's
    encoder = RowTokenizer(tiny_tokenizer, spec, spec.label_names)
    train_rows = encoder.encode_table(load_table(str(SHARED / task / train_name)))
    dev = encoder.encode_table(load_table(str(SHARED / task / dev_name), field="eval_file"))
    assert len(train_rows) == 50 and len(dev) == dev_rows
    assert {e.label for e in train_rows + dev} <= set(range(len(encoder.class_names)))
