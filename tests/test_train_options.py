"""Training options for real hardware and from Python: the base model's dtype, mixed precision, gradient
checkpointing, the device; training rows given as a DataFrame, a datasets.Dataset or a list of dicts."""

import json

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from softprompt.training import TrainConfig, train
from tiny_run import run_config, toy_rows


def table(run) -> torch.Tensor:
    return load_file(run / "adapter" / "adapter_model.safetensors")["prompt_embeddings"]


def test_gradient_checkpointing_trains_the_same_prompt(tmp_path):
    plain = run_config(tmp_path, "prefix_tuning", epochs=2, output_dir=str(tmp_path / "plain"))
    checkpointed = {**plain, "gradient_checkpointing": True, "output_dir": str(tmp_path / "checkpointed")}
    train(TrainConfig.from_dict(plain))
    train(TrainConfig.from_dict(checkpointed))
    torch.testing.assert_close(table(tmp_path / "checkpointed"), table(tmp_path / "plain"), atol=1e-5, rtol=1e-5)


def test_dtype_and_mixed_precision_reach_the_model(tmp_path, monkeypatch):
    from softprompt.training import loop

    seen = {}
    real = loop.get_peft_model

    def record(base, config):
        seen["dtype"] = base.dtype
        return real(base, config)

    monkeypatch.setattr(loop, "get_peft_model", record)
    config = run_config(tmp_path, epochs=1, dtype="bfloat16", mixed_precision="bf16", device="cpu")
    final = train(TrainConfig.from_dict(config))
    assert seen["dtype"] == torch.bfloat16 and final["epoch"] == 1
    assert torch.isfinite(table(tmp_path / "run")).all()  # the saved table is float32 whatever the base's dtype
    assert table(tmp_path / "run").dtype == torch.float32


@pytest.mark.parametrize(
    "field,value",
    [("mixed_precision", "fp8"), ("dtype", "int8"), ("device", "cuda:3")],
    ids=["precision", "dtype", "device"],
)
def test_hardware_options_are_checked(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        TrainConfig.from_dict(run_config(tmp_path, **{field: value}))


@pytest.mark.parametrize("kind", ["dataframe", "dataset", "rows"])
def test_training_rows_from_python(tmp_path, kind):
    import datasets

    rows = toy_rows(24, seed=1)
    data = {"dataframe": pd.DataFrame(rows), "dataset": datasets.Dataset.from_list(rows), "rows": rows}[kind]
    config = run_config(tmp_path, epochs=1, output_dir=str(tmp_path / kind))
    del config["train_file"], config["eval_file"]
    by_file = run_config(tmp_path, epochs=1, eval_file=None, output_dir=str(tmp_path / "file"))
    train(TrainConfig(**{**config, "train_file": data, "eval_file": pd.DataFrame(toy_rows(12, seed=2))}))
    train(TrainConfig.from_dict(by_file))  # the same rows read from a CSV file
    torch.testing.assert_close(table(tmp_path / kind), table(tmp_path / "file"))
    saved = yaml.safe_load((tmp_path / kind / "run_config.yaml").read_text())
    assert saved["train_file"] == f"<{type(data).__name__} of 24 rows, given in Python>"
    assert "eval_accuracy" in json.loads((tmp_path / kind / "metrics.jsonl").read_text().splitlines()[0])


def test_rows_of_another_kind_are_refused_by_name(tmp_path):
    config = run_config(tmp_path, epochs=1)
    config["train_file"] = 42
    with pytest.raises(ValueError, match="train_file: got a int"):
        train(TrainConfig(**config))
