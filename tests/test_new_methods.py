"""Methods PEFT does not have: residual prompt tuning and ULPT. Trained, each is a plain prompt table, saved as PEFT's
PROMPT_TUNING adapter (PEFT reads it with equal logits: tests/test_peft_interop.py); training checkpoints keep the
method's own parts (the MLP; the low-dimensional prompt and its projection) and resume exactly."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from softprompt import PeftModel, ResidualPromptTuningConfig, ULPTConfig, get_peft_model
from softprompt.training import TrainConfig, train
from tiny_models import tiny_model
from tiny_run import run_config

HIDDEN = 48  # llama_gqa's


def test_a_residual_prompt_starts_as_its_table_and_adds_the_mlp_branch():
    model = get_peft_model(tiny_model("llama_gqa"), ResidualPromptTuningConfig(num_virtual_tokens=3, bottleneck_size=8))
    source = model.prompt_source
    torch.testing.assert_close(model.prompt_table(), source.embedding.weight)  # zero start: the branch adds nothing
    paper = get_peft_model(
        tiny_model("llama_gqa"),
        ResidualPromptTuningConfig(num_virtual_tokens=3, bottleneck_size=8, residual_init="layer_norm"),
    )
    table = paper.prompt_source.embedding.weight
    branch = torch.nn.functional.layer_norm(paper.prompt_source.mlp[:4](table), (HIDDEN,))
    torch.testing.assert_close(paper.prompt_table(), table + branch)  # P + LN(MLP(P)), one MLP for every row
    trainable = sum(p.numel() for p in paper.parameters() if p.requires_grad)
    assert trainable == 3 * HIDDEN + (HIDDEN * 8 + 8) + (8 * HIDDEN + HIDDEN) + 2 * HIDDEN


def test_ulpt_trains_few_parameters_through_a_frozen_seeded_projection():
    config = ULPTConfig(num_virtual_tokens=5, low_rank=2)
    model = get_peft_model(tiny_model("llama_gqa"), config)
    source = model.prompt_source
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 5 * 2 + 2 * HIDDEN
    assert not source.projection.requires_grad and "projection" in source.state_dict()  # kept in checkpoints
    bound = (6 / (2 + HIDDEN)) ** 0.5
    assert source.projection.abs().max() <= bound
    again = get_peft_model(tiny_model("llama_gqa"), ULPTConfig(num_virtual_tokens=5, low_rank=2)).prompt_source
    assert torch.equal(again.projection, source.projection)  # the seed fixes it
    torch.testing.assert_close(
        model.prompt_table(), source.shift + source.scale * (source.low_dim.weight @ source.projection)
    )


@pytest.mark.parametrize("method,options", [("residual", {"bottleneck_size": 8}), ("ulpt", {"low_rank": 2})])
def test_trained_adapters_are_prompt_tables_and_checkpoints_resume_the_method(method, options, tmp_path):
    config = run_config(tmp_path, method, epochs=2, method_options={"num_virtual_tokens": 4, **options})
    train(TrainConfig.from_dict(config))
    adapter, checkpoint = tmp_path / "run" / "adapter", tmp_path / "run" / "checkpoint"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["num_virtual_tokens"] == 4
    peft_type = {"residual": "RESIDUAL_PROMPT_TUNING", "ulpt": "ULPT"}[method]
    assert f"by {peft_type} (saved as its PROMPT_TUNING table)" in (adapter / "README.md").read_text()
    assert json.loads((checkpoint / "adapter_config.json").read_text())["peft_type"] == peft_type
    model_folder = tmp_path / "tiny-model"

    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_folder), adapter)
    resumed = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_folder), checkpoint, is_trainable=True
    )
    assert type(resumed.prompt_source).__name__ != "PromptTable"  # the method's own source, to train on
    with torch.no_grad():
        torch.testing.assert_close(resumed.prompt_table(), served.prompt_table())
