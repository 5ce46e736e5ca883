"""Saving and loading: bit-exact round trips, exact resume, atomic saves, clear errors on bad input."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from softprompt import (
    AdapterError,
    AutoPeftModelForCausalLM,
    ConfigError,
    PeftModel,
    PrefixTuningConfig,
    get_peft_model,
)
from softprompt import adapter_io as adapter_files
from tiny_models import METHOD_CONFIGS, METHODS, tiny_model, trainable

ARCH = "llama_gqa"


def trained(method, steps=2):
    """A wrapped tiny model whose prompt has taken a few optimizer steps."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(ARCH), METHOD_CONFIGS[method]())
    optimizer = torch.optim.AdamW(trainable(model), lr=0.05)
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, ids


@pytest.mark.parametrize("method", METHODS)
def test_inference_adapter_round_trip_is_bit_exact(method, tmp_path):
    model, ids = trained(method)
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(tiny_model(ARCH), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded.prompt_table(), model.prompt_table())
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # the inference adapter carries no encoder: nothing to pay for at inference (a multitask prompt keeps its tasks)
    if loaded.prompt_source.collapses:
        assert set(loaded.prompt_source.state_dict()) == {"embedding.weight"}


@pytest.mark.parametrize("method", METHODS)
def test_training_checkpoint_keeps_the_full_source_and_resumes_exactly(method, tmp_path):
    model, ids = trained(method)
    model.save_pretrained(tmp_path, include_prompt_source=True)
    resumed = PeftModel.from_pretrained(tiny_model(ARCH), tmp_path, is_trainable=True)
    for name, value in model.prompt_source.state_dict().items():
        assert torch.equal(resumed.prompt_source.state_dict()[name], value), name
    # one more identical step on both gives identical parameters
    for m in (model, resumed):
        optimizer = torch.optim.SGD(trainable(m), lr=0.1)
        m(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    for a, b in zip(model.prompt_source.parameters(), resumed.prompt_source.parameters()):
        assert torch.equal(a, b)


def test_loading_for_training_without_source_warns_for_encoders(tmp_path):
    model, _ = trained("p_tuning_mlp")
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="collapsed prompt table"):
        loaded = PeftModel.from_pretrained(tiny_model(ARCH), tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in loaded.prompt_source.parameters())


def test_auto_model_loads_base_from_adapter_folder_alone(tmp_path):
    base = tiny_model(ARCH)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(tiny_model(ARCH), METHOD_CONFIGS["prompt_tuning"]())
    model.config_.base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    ids = torch.randint(3, 128, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_auto_model_with_missing_base_model_says_what_to_do(tmp_path):
    model = get_peft_model(tiny_model(ARCH), METHOD_CONFIGS["prompt_tuning"]())
    model.config_.base_model_name_or_path = str(tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(OSError, match="Could not load base model"):
        AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")


def test_crash_mid_save_leaves_the_previous_adapter_intact(tmp_path, monkeypatch):
    model, ids = trained("prompt_tuning")
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "notes.txt").write_text("mine")
    good = load_file(tmp_path / "adapter" / "adapter_model.safetensors")["prompt_embeddings"]

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    with torch.no_grad():
        model.prompt_source.embedding.weight.add_(1.0)
    monkeypatch.setattr(type(model.config_), "save_pretrained", crash)  # dies after the weights are written
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "adapter")
    assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no staging folder left behind
    assert torch.equal(load_file(tmp_path / "adapter" / "adapter_model.safetensors")["prompt_embeddings"], good)
    monkeypatch.undo()
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "notes.txt").read_text() == "mine"  # other files survive a save
    assert not torch.equal(load_file(tmp_path / "adapter" / "adapter_model.safetensors")["prompt_embeddings"], good)


@pytest.fixture
def saved(tmp_path):
    model, _ = trained("prefix_tuning", steps=0)
    model.save_pretrained(tmp_path)
    return tmp_path


def test_missing_folder(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        PeftModel.from_pretrained(tiny_model(ARCH), tmp_path / "missing" / "adapter")


def test_missing_weights_file(saved):
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="No adapter_model.safetensors"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)


def test_pickle_weights_are_refused(saved):
    (saved / "adapter_model.safetensors").rename(saved / "adapter_model.bin")
    with pytest.raises(AdapterError, match="never loads"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)


def test_corrupt_weights(saved):
    (saved / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)


def test_weights_without_prompt_embeddings(saved):
    save_file({"lora_A": torch.zeros(2, 2)}, saved / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="no tensor 'prompt_embeddings'"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)


def test_corrupt_config(saved):
    (saved / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)


def test_unknown_method_in_config(saved):
    config = json.loads((saved / "adapter_config.json").read_text())
    config["peft_type"] = "LORA"
    (saved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="Unknown prompt method 'LORA'"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)


@pytest.mark.parametrize("other_arch", ["gpt2", "qwen2", "bloom"])  # other hidden size / KV heads / layers
def test_adapter_for_another_model_shape_is_refused(saved, other_arch):
    with pytest.raises(AdapterError, match="this base model needs"):
        PeftModel.from_pretrained(tiny_model(other_arch), saved)


def test_prefix_for_wrong_layer_count_is_refused(tmp_path):
    from transformers import AutoModelForCausalLM

    model = get_peft_model(tiny_model(ARCH), PrefixTuningConfig(num_virtual_tokens=3))
    model.save_pretrained(tmp_path)
    config = tiny_model(ARCH).config
    config.num_hidden_layers = 3
    with pytest.raises(AdapterError, match=r"num_layers=2 \(this model: 3\)"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_config(config), tmp_path)


def test_save_into_a_file_path_is_refused(tmp_path):
    model, _ = trained("prompt_tuning", steps=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterError, match="it is a file"):
        model.save_pretrained(tmp_path / "file")


def test_push_to_hub_offline_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    model, _ = trained("prompt_tuning", steps=0)
    with pytest.raises(ConnectionError, match="Nothing was uploaded"):
        model.push_to_hub("someone/adapter", token="hf_fake")


def test_the_source_file_is_checked_against_the_config(tmp_path):
    model, _ = trained("p_tuning_mlp", steps=0)
    model.save_pretrained(tmp_path, include_prompt_source=True)
    save_file({"embedding.weight": torch.zeros(4, 48)}, tmp_path / adapter_files.SOURCE_NAME)
    with pytest.raises(AdapterError, match="does not fit"):
        PeftModel.from_pretrained(tiny_model(ARCH), tmp_path, is_trainable=True)


def test_table_that_does_not_match_its_config_is_refused(saved):
    save_file({"prompt_embeddings": torch.zeros(5, 128)}, saved / "adapter_model.safetensors")  # config says 4 rows
    with pytest.raises(AdapterError, match=r"has shape \(5, 128\), but this base model needs \(4, 128\)"):
        PeftModel.from_pretrained(tiny_model(ARCH), saved)
