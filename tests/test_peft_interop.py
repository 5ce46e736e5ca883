"""PEFT reads our adapters and we read PEFT's, with the same logits where PEFT is right (unpadded input)."""

import json

import peft
import pytest
import torch
from safetensors.torch import load_file

from softprompt import PeftModel, get_peft_model
from tiny_models import ARCHITECTURES, METHOD_CONFIGS, METHODS, tiny_model

PEFT_CONFIGS = {
    "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "p_tuning_mlp": lambda: peft.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
    ),
    "p_tuning_lstm": lambda: peft.PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
    ),
    "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    "prefix_projection": lambda: peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16
    ),
    "multitask": lambda: peft.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, num_tasks=1, num_ranks=2
    ),
    "cpt": lambda: peft.CPTConfig(
        task_type="CAUSAL_LM",
        cpt_token_ids=[40, 41, 42, 43, 44],
        cpt_mask=[1] * 5,
        cpt_tokens_type_mask=[1, 2, 2, 3, 4],
    ),
}
# Methods PEFT does not have are saved, once trained, as a method it has (their prompt collapsed to its table)
EXPORTED_AS = {"residual": "prompt_tuning", "ulpt": "prompt_tuning"}
SOFTPROMPT_ONLY = {"dept"}  # PEFT has no DePT, and its input offsets have no place in a PEFT file
CASES = [(method, arch) for method in METHODS if method not in SOFTPROMPT_ONLY for arch in ARCHITECTURES]
PEFT_CASES = [(method, arch) for method, arch in CASES if method in PEFT_CONFIGS]  # PEFT trains these itself
# PEFT's own calls into transformers 5.24 use names it deprecates; softprompt's do not (their warnings show).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


def unpadded_ids(seed=0):
    return torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(seed))


def peft_logits(model, ids):
    """PEFT returns logits for virtual positions too (peft#482): keep the last L rows."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), **peft_task_ids(model, ids)).logits[
            :, -ids.shape[1] :
        ]


def peft_task_ids(model, ids) -> dict:
    """PEFT's multitask prompts want task_ids even with one task."""
    multitask = model.active_peft_config.peft_type == peft.PeftType.MULTITASK_PROMPT_TUNING
    return {"task_ids": torch.zeros(ids.shape[0], dtype=torch.long)} if multitask else {}


def our_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method,arch", CASES)
def test_peft_loads_our_adapter_with_the_same_logits(method, arch, tmp_path):
    torch.manual_seed(1)
    ours = get_peft_model(tiny_model(arch), METHOD_CONFIGS[method]()).eval()
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path).eval()
    ids = unpadded_ids()
    torch.testing.assert_close(peft_logits(theirs, ids), our_logits(ours, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,arch", PEFT_CASES)
def test_we_load_peft_adapter_with_the_same_logits(method, arch, tmp_path):
    torch.manual_seed(1)
    theirs = peft.get_peft_model(tiny_model(arch), PEFT_CONFIGS[method]()).eval()
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    ids = unpadded_ids()
    torch.testing.assert_close(our_logits(ours, ids), peft_logits(theirs, ids), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in ours.parameters())  # loaded for inference


@pytest.mark.parametrize("method", [method for method in METHODS if method not in SOFTPROMPT_ONLY])
def test_same_files_fields_tensor_names_and_shapes_as_peft(method, tmp_path):
    arch = "llama_gqa"
    torch.manual_seed(1)
    get_peft_model(tiny_model(arch), METHOD_CONFIGS[method]()).save_pretrained(tmp_path / "ours")
    peft.get_peft_model(tiny_model(arch), PEFT_CONFIGS[EXPORTED_AS.get(method, method)]()).save_pretrained(
        tmp_path / "peft"
    )
    ours_config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    peft_config.pop("peft_version")
    assert ours_config == peft_config
    ours_tensors = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours_tensors.items()} == {k: v.shape for k, v in peft_tensors.items()}


@pytest.mark.parametrize("method", list(PEFT_CONFIGS))
def test_peft_logits_agree_on_training_forward_loss(method):
    """Same prompt weights in both libraries: same loss (the first token is predicted by the last virtual one)."""
    arch = "llama_gqa"
    torch.manual_seed(1)
    theirs = peft.get_peft_model(tiny_model(arch), PEFT_CONFIGS[method]())
    torch.manual_seed(1)
    ours = get_peft_model(tiny_model(arch), METHOD_CONFIGS[method]())
    ours.prompt_source.load_state_dict(
        {k.removeprefix("default."): v for k, v in theirs.prompt_encoder.state_dict().items()}
    )
    ids = unpadded_ids()
    labels = ids.clone()
    labels[:, :2] = -100
    with torch.no_grad():
        peft_loss = theirs(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, **peft_task_ids(theirs, ids)
        ).loss
        our_loss = ours(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(our_loss, peft_loss)


def test_peft_loads_our_text_initialised_prompt(tmp_path):
    from transformers import AutoModelForCausalLM

    from softprompt import PromptTuningConfig
    from tiny_run import make_tiny_model_folder

    folder = make_tiny_model_folder(tmp_path / "model")
    config = PromptTuningConfig(
        num_virtual_tokens=4, prompt_tuning_init="TEXT", prompt_tuning_init_text="great service"
    )
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), config).eval()
    ours.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["tokenizer_name_or_path"] == str(folder)  # PEFT refuses TEXT init without one
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter").eval()
    ids = torch.randint(3, 100, (1, 5))
    torch.testing.assert_close(peft_logits(theirs, ids), our_logits(ours, ids), atol=1e-5, rtol=1e-5)
