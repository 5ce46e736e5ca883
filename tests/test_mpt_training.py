"""Multitask prompt tuning through `softprompt train`: a source trained on two tasks at once (task ids per row, each
task scored over its own labels), eval/predict of one of its tasks, and targets started from it as PEFT starts them."""

import json

import peft
import pytest
import torch
from safetensors.torch import load_file

from softprompt import MultitaskPromptTuningConfig, PeftModel, Predictor, cli, get_peft_model
from softprompt.base_models import load_base_model, load_tokenizer
from softprompt.data import Example, collate_training
from softprompt.training import TrainConfig, train
from softprompt.training.examples import load_tasks_data
from tiny_run import BAD, GOOD, run_config, toy_rows, write_csv

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def mood_rows(count: int, seed: int) -> list[dict]:
    """A second toy task with its own columns, label strings, template and label words."""
    return [
        {"text": row["Tweet text"], "mood": "cross" if row["Label"] == 1 else "glad"} for row in toy_rows(count, seed)
    ]


def source_config(tmp_path, **overrides) -> dict:
    config = run_config(
        tmp_path, "multitask_prompt_tuning", epochs=2, lr=0.1, method_options={"num_virtual_tokens": 4, "num_ranks": 2}
    )
    for name in ("train_file", "eval_file", "task"):
        config.pop(name)
    config["tasks"] = [
        {
            "name": "complaints",
            "train_file": str(tmp_path / "train.csv"),
            "eval_file": str(tmp_path / "dev.csv"),
            "task": {"label_names": ["Unlabeled", "complaint", "no complaint"], "max_length": 32},
        },
        {
            "name": "mood",
            "train_file": str(write_csv(tmp_path / "mood.csv", mood_rows(16, seed=3))),
            "eval_file": str(write_csv(tmp_path / "mood_dev.csv", mood_rows(8, seed=4))),
            "max_train_rows": 12,
            "task": {"text_columns": ["text"], "label_column": "mood", "template": "{text} feels", "max_length": 32},
        },
    ]
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mpt")
    config = source_config(tmp_path)
    lines = train(TrainConfig.from_dict(config))
    return tmp_path, config, lines


def test_a_two_task_source_trains_saves_both_tasks_and_reports_each(source):
    tmp_path, _, last = source
    adapter = tmp_path / "run" / "adapter"
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert tensors["prefix_task_cols"].shape == (2, 4, 2) and tensors["prefix_task_rows"].shape[:2] == (2, 2)
    tasks = json.loads((adapter / "task.json").read_text())["tasks"]
    assert [(t["name"], t["task_id"]) for t in tasks] == [("complaints", 0), ("mood", 1)]
    assert tasks[1]["label_names"] == ["cross", "glad"] and tasks[1]["template"] == "{text} feels"
    for key in ("eval_accuracy", "eval_macro_f1", "eval_complaints_accuracy", "eval_mood_accuracy", "eval_mood_loss"):
        assert key in last
    assert last["eval_accuracy"] == pytest.approx((last["eval_complaints_accuracy"] + last["eval_mood_accuracy"]) / 2)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert json.loads((tmp_path / "run" / "checkpoint" / "task.json").read_text())["tasks"] == tasks  # resumable


def test_rows_carry_their_task_id_and_get_their_tasks_prompt(source):
    tmp_path, config, _ = source
    config = TrainConfig.from_dict(config)
    tokenizer = load_tokenizer(config.model)
    parts = load_tasks_data(config, tokenizer)
    assert [len(p.train) for p in parts] == [24, 12]  # max_train_rows samples the second task
    assert {e.task for e in parts[0].train} == {0} and {e.task for e in parts[1].train} == {1}
    mixed = [parts[0].train[0], parts[1].train[0], parts[0].train[1], parts[1].train[1]]
    batch = collate_training(mixed, tokenizer.pad_token_id)
    assert batch["task_ids"].tolist() == [0, 1, 0, 1]
    assert "task_ids" not in collate_training(
        [Example([5], [6], 0, False, "x")], tokenizer.pad_token_id
    )  # one task: as before

    model = PeftModel.from_pretrained(load_base_model(config.model), str(tmp_path / "run" / "adapter")).eval()
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        ids = torch.tensor([mixed[1].prompt_ids + mixed[1].target_ids])
        as_task = {task: model(input_ids=ids, task_ids=[task]).logits[0] for task in (0, 1)}
    row = together[1, -ids.shape[1] :]
    torch.testing.assert_close(row, as_task[1], atol=1e-4, rtol=0)  # the batch ran row 1 with task 1's prompt
    assert (as_task[0] - as_task[1]).abs().max() > 1e-3  # and task 0's prompt gives other logits


def test_eval_and_predict_pick_a_task_by_name_or_id(source, capsys):
    tmp_path, _, _ = source
    adapter = str(tmp_path / "run" / "adapter")
    assert cli.main(["eval", adapter, "--task", "mood", "--data", str(tmp_path / "mood_dev.csv")]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert by_name["count"] == 8 and list(by_name["per_class"]) == ["cross", "glad"]
    assert cli.main(["eval", adapter, "--task", "1", "--data", str(tmp_path / "mood_dev.csv")]) == 0
    assert json.loads(capsys.readouterr().out) == by_name
    assert cli.main(["eval", adapter, "--data", str(tmp_path / "mood_dev.csv")]) == 2
    assert "trained on 2 tasks (0: complaints, 1: mood): choose one" in capsys.readouterr().err
    assert cli.main(["eval", adapter, "--task", "weather", "--data", str(tmp_path / "mood_dev.csv")]) == 2
    assert "has no task 'weather'" in capsys.readouterr().err

    assert cli.main(["predict", adapter, "--task", "mood", "--", BAD[0], GOOD[0]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r) for r in rows] == [{"text", "label", "p(cross)", "p(glad)"}] * 2
    assert cli.main(["predict", adapter, "--task", "mood", "--generate", "--max-new-tokens", "2", "hello"]) == 0
    assert "generated" in json.loads(capsys.readouterr().out)  # a prompt as written, run with the chosen task's prompt
    assert (
        cli.main(
            ["eval", adapter, "--task", "mood", "--method", "generation", "--data", str(tmp_path / "mood_dev.csv")]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["count"] == 8
    assert cli.main(["info", adapter]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)["tasks"]] == ["complaints", "mood"]

    predictor = Predictor.from_pretrained(adapter, task="complaints")
    assert set(predictor.classify(BAD[0])[0]["probabilities"]) == {"complaint", "no complaint"}
    mood = Predictor.from_pretrained(adapter, task="mood")
    scores = mood.probabilities([BAD[0]])
    model = mood.model
    encoder = mood.row_tokenizer()
    ids = torch.tensor([encoder.encode({"text": BAD[0]}, labelled=False).prompt_ids])
    by_hand = model.score_continuations(
        ids, torch.ones_like(ids), [encoder.target_ids(k) for k in range(2)], task_ids=[1]
    )
    torch.testing.assert_close(scores, by_hand.softmax(-1), atol=1e-5, rtol=0)  # scored with task 1's prompt


@pytest.mark.parametrize("init", ["AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED"])
def test_a_target_from_the_trained_source_starts_as_peft_starts_it(init, source):
    tmp_path, config, _ = source
    weights = str(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    options = dict(
        num_virtual_tokens=4,
        num_ranks=2,
        num_tasks=1,
        prompt_tuning_init=init,
        prompt_tuning_init_state_dict_path=weights,
        prompt_tuning_init_task=1,
    )
    ours = get_peft_model(load_base_model(config["model"]), MultitaskPromptTuningConfig(**options)).prompt_source
    theirs = peft.get_peft_model(
        load_base_model(config["model"]), peft.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", **options)
    ).prompt_encoder["default"]
    assert torch.equal(ours.embedding.weight, theirs.embedding.weight)
    if init == "ONLY_SOURCE_SHARED":  # the factors start fresh in both (PEFT's random draw)
        source = load_file(weights)
        assert not torch.equal(ours.prefix_task_cols, source["prefix_task_cols"][1:2])
        assert ours.prefix_task_cols.shape == theirs.prefix_task_cols.shape
    else:
        torch.testing.assert_close(ours.prefix_task_cols, theirs.prefix_task_cols, atol=0, rtol=0)
        torch.testing.assert_close(ours.prefix_task_rows, theirs.prefix_task_rows, atol=0, rtol=0)


def test_a_target_config_trains_from_the_source_folder(source, tmp_path):
    source_dir, _, _ = source
    config = run_config(
        source_dir,
        "multitask_prompt_tuning",
        epochs=1,
        output_dir=str(tmp_path / "target"),
        method_options={
            "num_virtual_tokens": 4,
            "num_ranks": 2,
            "prompt_tuning_init": "EXACT_SOURCE_TASK",
            "prompt_tuning_init_task": 0,
            "prompt_tuning_init_state_dict_path": str(source_dir / "run" / "adapter"),
        },
    )
    assert train(TrainConfig.from_dict(config))["epoch"] == 1
    saved = load_file(str(tmp_path / "target" / "adapter" / "adapter_model.safetensors"))
    assert saved["prefix_task_cols"].shape == (1, 4, 2)
    assert "tasks" not in json.loads((tmp_path / "target" / "adapter" / "task.json").read_text())  # one task: as before
    assert Predictor.from_pretrained(str(tmp_path / "target" / "adapter")).probabilities([BAD[0]]).shape == (1, 2)
