"""Prefix tuning started from a text (prefix_init_text): before any training, the prefixed model is the frozen
model reading that text before each input, for every architecture; the option's errors; PEFT reads the table."""

import json

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt import ConfigError, PeftModel, PrefixTuningConfig, get_peft_model
from softprompt import base_models as models
from test_encoders import encoder
from test_seq2seq import base_model as seq2seq_model
from test_seq_cls import classifier
from tiny_models import ARCHITECTURES, left_padded_batch, tiny_model
from tiny_run import make_tiny_model_folder

pytestmark = [  # PEFT's own calls
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
]
TEXT_IDS = [5, 6, 7]  # what the stub tokenizer below reads any init text as


@pytest.fixture
def stub_text(monkeypatch):
    """A tokenizer that reads any text as TEXT_IDS (the tiny models have no tokenizer of their own)."""
    monkeypatch.setattr(
        models, "load_tokenizer", lambda name, **kwargs: lambda text, **options: {"input_ids": list(TEXT_IDS)}
    )


def text_config(count=4, **options):
    return PrefixTuningConfig(
        num_virtual_tokens=count, prefix_init_text="a task description", tokenizer_name_or_path="stub", **options
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_text_started_prefix_is_the_model_reading_the_text_first(arch, stub_text):
    model = get_peft_model(tiny_model(arch), text_config(count=5)).eval()  # 3 text tokens repeated, cut to 5
    text = torch.tensor((TEXT_IDS * 2)[:5])
    base = tiny_model(arch)
    input_ids, attention_mask, rows = left_padded_batch()
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
        for i, row in enumerate(rows):
            expected = base(input_ids=torch.cat([text, row])[None]).logits[0, len(text) :]  # [T_i, V]
            torch.testing.assert_close(model(input_ids=row[None]).logits[0], expected, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batched[i, -len(row) :], expected, atol=1e-4, rtol=1e-4)
        other = base(input_ids=torch.cat([torch.tensor([9, 9, 9, 9, 9]), rows[0]])[None]).logits[0, 5:]
    assert (other - batched[0, -len(rows[0]) :]).abs().max() > 1e-3  # the text read matters: the check can fail


def test_a_decoder_classifier_with_a_text_started_prefix_reads_the_text_first(stub_text):
    model = get_peft_model(classifier("llama_gqa"), text_config(count=3, task_type="SEQ_CLS")).eval()
    base = classifier("llama_gqa")
    row = torch.tensor([[20, 21, 22, 23]])
    with torch.no_grad():
        expected = base(input_ids=torch.cat([torch.tensor([TEXT_IDS]), row], 1)).logits  # [1, labels]
        torch.testing.assert_close(model(input_ids=row).logits, expected, atol=1e-4, rtol=1e-4)


def test_the_init_text_is_read_with_the_models_tokenizer_and_peft_reads_the_table(tmp_path):
    folder = make_tiny_model_folder(tmp_path / "model")
    text = "Tweet text : Label : complaint"
    text_ids = AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]
    config = PrefixTuningConfig(num_virtual_tokens=len(text_ids), prefix_init_text=text)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), config).eval()  # the tokenizer: the model's
    row = torch.tensor([[10, 11, 12, 13]])
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = base(input_ids=torch.cat([torch.tensor([text_ids]), row], 1)).logits[:, len(text_ids) :]
        torch.testing.assert_close(model(input_ids=row).logits, expected, atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["prefix_init_text"] == text and saved["prefix_projection"] is False
    # loading takes the table from the file (no tokenizer needed) and PEFT reads it as the same prefix
    ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter").eval()
    with pytest.warns(UserWarning, match="prefix_init_text"):
        theirs = peft.PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter"
        ).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=row).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            theirs(input_ids=row, attention_mask=torch.ones_like(row)).logits, expected, atol=1e-4, rtol=1e-4
        )


def test_prefix_init_text_errors_are_clear(stub_text):
    with pytest.raises(ConfigError, match="prefix_projection=False"):
        text_config(prefix_projection=True)
    with pytest.raises(ConfigError, match="prefix_projection=False"):
        text_config(init_weights="zero")
    with pytest.raises(ConfigError, match="empty"):
        PrefixTuningConfig(num_virtual_tokens=4, prefix_init_text="  ")
    with pytest.raises(ConfigError, match="decoder-only"):
        get_peft_model(encoder("bert"), text_config(task_type="SEQ_CLS"))
    with pytest.raises(ConfigError, match="decoder-only"):
        get_peft_model(seq2seq_model("t5"), text_config(task_type="SEQ_2_SEQ_LM"))
    # without the option the JSON is PEFT's own
    assert "prefix_init_text" not in PrefixTuningConfig(num_virtual_tokens=4).to_dict()


def test_a_model_built_from_a_config_needs_a_tokenizer_named():
    with pytest.raises(ConfigError, match="set tokenizer_name_or_path"):  # tiny models name no folder or hub id
        get_peft_model(tiny_model("llama_gqa"), PrefixTuningConfig(num_virtual_tokens=4, prefix_init_text="a task"))


def test_a_cache_of_another_shape_is_refused(stub_text, monkeypatch):
    from softprompt import compat

    real = compat.layer_states
    monkeypatch.setattr(compat, "layer_states", lambda cache: real(cache)[:1])  # as if layers shared their keys/values
    with pytest.raises(ConfigError, match="leave the option out"):
        get_peft_model(tiny_model("llama_gqa"), text_config())
