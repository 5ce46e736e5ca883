"""Configs validate on construction with messages that name the field and the fix; names and defaults are PEFT's."""

import peft
import pytest

import softprompt
from softprompt import (
    ConfigError,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)


@pytest.mark.parametrize("bad", [0, -3, None, 2.5, "20", True])
def test_num_virtual_tokens_must_be_a_positive_int(bad):
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        PromptTuningConfig(num_virtual_tokens=bad)


def test_text_init_needs_text():
    with pytest.raises(ConfigError, match="prompt_tuning_init_text"):
        PromptTuningConfig(num_virtual_tokens=8, prompt_tuning_init=PromptTuningInit.TEXT)
    with pytest.raises(ConfigError, match="prompt_tuning_init_text"):
        PromptTuningConfig(num_virtual_tokens=8, prompt_tuning_init="TEXT", prompt_tuning_init_text="   ")


def test_unknown_init_and_encoder_names():
    with pytest.raises(ConfigError, match="prompt_tuning_init='WORDS' is unknown"):
        PromptTuningConfig(num_virtual_tokens=8, prompt_tuning_init="WORDS")
    with pytest.raises(ConfigError, match="Use one of MLP, LSTM"):
        PromptEncoderConfig(num_virtual_tokens=8, encoder_reparameterization_type="GRU")


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_encoder_sizes_must_be_positive(bad):
    with pytest.raises(ConfigError, match="encoder_hidden_size"):
        PromptEncoderConfig(num_virtual_tokens=8, encoder_hidden_size=bad)
    with pytest.raises(ConfigError, match="encoder_hidden_size"):
        PrefixTuningConfig(num_virtual_tokens=8, encoder_hidden_size=bad)


def test_dropout_range_and_task_type():
    with pytest.raises(ConfigError, match="encoder_dropout"):
        PromptEncoderConfig(num_virtual_tokens=8, encoder_dropout=1.5)
    with pytest.raises(ConfigError, match="QUESTION_ANS.*SEQ_2_SEQ_LM"):  # question answering is not built yet
        PromptTuningConfig(num_virtual_tokens=8, task_type="QUESTION_ANS")
    for task_type in ("SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "FEATURE_EXTRACTION"):
        assert PromptTuningConfig(num_virtual_tokens=8, task_type=task_type).task_type == task_type


def test_unknown_method_name():
    with pytest.raises(ConfigError, match="Unknown prompt method 'lora'"):
        PromptLearningConfig.from_dict({"peft_type": "lora", "num_virtual_tokens": 4})
    with pytest.raises(ConfigError, match="no 'peft_type'"):
        PromptLearningConfig.from_dict({"num_virtual_tokens": 4})


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (PromptTuningConfig, peft.PromptTuningConfig),
        (PromptEncoderConfig, peft.PromptEncoderConfig),
        (PrefixTuningConfig, peft.PrefixTuningConfig),
    ],
)
def test_field_names_and_defaults_match_peft(ours, theirs):
    mine = ours(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20).to_dict()
    peft_dict = {
        k: getattr(v, "value", v) for k, v in theirs(task_type="CAUSAL_LM", num_virtual_tokens=20).to_dict().items()
    }
    peft_dict.pop("peft_version")
    assert mine == peft_dict


def test_json_round_trip_and_method_dispatch():
    config = PromptEncoderConfig(num_virtual_tokens=5, encoder_hidden_size=7, encoder_reparameterization_type="lstm")
    again = PromptLearningConfig.from_dict(config.to_dict())
    assert type(again) is PromptEncoderConfig and again == config
    assert again.encoder_reparameterization_type == "LSTM"


def test_peft_guide_names_are_exported():
    for name in [
        "PromptTuningConfig",
        "PromptEncoderConfig",
        "PrefixTuningConfig",
        "PromptTuningInit",
        "TaskType",
        "get_peft_model",
        "AutoPeftModelForCausalLM",
        "PeftModel",
        "PeftConfig",
    ]:
        assert name in softprompt.__all__ and hasattr(softprompt, name)
