"""Every config under configs/ loads and means what it says: a broken shipped config is found here, not by a user."""

from pathlib import Path

import pytest

from softprompt.training import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


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


def test_every_task_folder_ships_the_three_prompt_methods():
    folders = {p.parent.name for p in CONFIGS} - {"transfer"}
    for folder in folders:
        assert {"prompt_tuning", "p_tuning", "prefix_tuning"} <= {p.stem for p in CONFIGS if p.parent.name == folder}
