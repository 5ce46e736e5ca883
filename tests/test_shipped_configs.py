"""Every config under configs/ loads and means what it says: a broken shipped config is found here, not by a user."""

import shutil
from pathlib import Path

import pytest

from softprompt.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_shipped_config_loads_and_its_task_fits_together(path):
    config = TrainConfig.from_yaml(path)  # validates fields, method and method options
    for task in [config.task] + [t.task for t in config.tasks or []]:
        task.template_fields()  # raises if the template reads a column that is not a text column
        if task.label_names and task.verbalizer:
            assert set(task.verbalizer) <= set(task.label_names), "a verbalizer entry names no class"
    if config.calibration:
        assert config.calibration.texts_file.startswith("hf://datasets/"), "calibration reads the task's hub test split"
    if (
        not config.tasks
    ):  # a RAFT task's config reads RAFT on the hub; the local copy is an override (multitask sources: local)
        assert config.train_file.startswith("hf://datasets/ought/raft@"), (
            "read the hub by default; local files are overrides"
        )


PROMPT_METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]


def test_every_task_folder_ships_the_prompt_methods_the_new_ones_and_the_encoder_route():
    """Each task: the three PEFT prompt methods and the three PEFT lacks on SmolLM2, and the three prompt methods
    with a classification head on the MiniLM encoder."""
    folders = {p.parent.name for p in CONFIGS} - {"transfer"}
    assert folders == {"twitter_complaints", "tweet_eval_hate", "banking77"}
    for folder in folders:
        names = {p.stem for p in CONFIGS if p.parent.name == folder}
        assert {*PROMPT_METHODS, "residual_prompt_tuning", "ulpt", "dept"} <= names, folder
        for method in PROMPT_METHODS:
            assert f"minilm_{method}" in names, (folder, method)
            config = TrainConfig.from_yaml(ROOT / "configs" / folder / f"minilm_{method}.yaml")
            assert (config.model, config.method, config.task_type) == ("all-minilm-l6-v2", method, "SEQ_CLS")
            assert config.output_dir.endswith(f"runs/{folder}/minilm_{method}")


# ---- every shipped config's first step, from a copy of the repository with nothing beside it ------------------
COLUMNS = {  # the Hub tables the configs read: text column, label column
    "twitter_complaints": ("Tweet text", "Label"),
    "tweet_eval_hate": ("Tweet", "Label"),
    "banking_77": ("Query", "Label"),
    "sst2": ("sentence", "label"),
}


def hub_table(source: str, field: str = "train_file"):
    """What the Hub would give for a config's hf:// address: a few rows with the table's columns (label ids, as the
    Parquet files hold them; RAFT's test split unlabelled)."""
    from softprompt.data import Table

    name = next(key for key in COLUMNS if key in source)
    text, label = COLUMNS[name]
    classes = {"banking_77": 77, "sst2": 2}.get(name, 2)
    first = 0 if name == "sst2" else 1  # RAFT: 0 is Unlabeled
    test = "/test/" in source
    rows = [{text: f"row {i} of {name}", "ID": i, label: 0 if test else first + i % classes} for i in range(12)]
    return Table(rows, source)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """The repository's configs in an empty folder (no ../shared beside them), and tiny stand-ins for the models."""
    from tiny_run import make_tiny_encoder_folder, make_tiny_model_folder

    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(ROOT / "configs", root / "repo" / "configs")
    models = {
        "CAUSAL_LM": make_tiny_model_folder(root / "tiny-lm"),
        "SEQ_CLS": make_tiny_encoder_folder(root / "tiny-bert"),
    }
    return root / "repo", models


def first_step(path: Path, models: dict, extra: dict | None = None) -> Path:
    config = TrainConfig.from_yaml(path)
    overrides = {"model": str(models[config.task_type]), "epochs": 1, "max_train_rows": 4, "progress": False}
    for n in range(len(config.tasks or [])):
        overrides[f"tasks.{n}.max_train_rows"] = 4
    if config.calibration:
        overrides["calibration.limit"] = 4
    config = TrainConfig.from_yaml(path, {**overrides, **(extra or {})})
    train(config)
    return Path(config.output_dir)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_shipped_config_runs_from_a_fresh_clone(path, fresh_clone, monkeypatch, tmp_path):
    """The first epoch of every config, in a copy of the repository with no data beside it and the Hub answered by
    stand-in tables: a path that reaches outside the repository fails here."""
    from softprompt.data import tables

    repo, models = fresh_clone
    monkeypatch.chdir(tmp_path)  # relative paths must come from the config's folder, not the current one
    monkeypatch.setattr(tables, "load_remote_table", hub_table)
    copy = repo / path.relative_to(ROOT)
    if path.stem == "mpt_transfer":  # step 2 of two: without step 1, a message that says what to run
        source = repo / "runs" / "transfer" / "mpt_source"
        shutil.rmtree(source, ignore_errors=True)
        with pytest.raises(ValueError, match="configs/transfer/mpt_source.yaml"):
            first_step(copy, models)
        first_step(repo / "configs" / "transfer" / "mpt_source.yaml", models)
    out = first_step(copy, models)
    assert out.is_relative_to(repo) and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "calibration.json").is_file() == bool(TrainConfig.from_yaml(copy).calibration)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
