"""CPT: PEFT's loss and gradients, label tokens kept fixed, deltas kept in their bounds, PEFT's files both ways."""

import copy

import peft
import pytest
import torch

from softprompt import ConfigError, CPTConfig, PeftModel, PrefixTuningConfig, get_peft_model
from tiny_models import left_padded_batch, tiny_model

# two in-context examples: template (1), input (2), output template (3), label (4); then the same types + 4
# PEFT's own calls into transformers 5.24 use a name it deprecates; softprompt's do not (their warnings show).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
TOKEN_IDS = [10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 25]
TYPES = [1, 2, 2, 3, 4, 4, 4, 5, 6, 6, 7, 8, 8]


def configs(decay="decay"):
    options = dict(
        cpt_token_ids=TOKEN_IDS,
        cpt_tokens_type_mask=TYPES,
        opt_weighted_loss_type=decay,
        opt_loss_decay_factor=0.5,
        opt_projection_epsilon=0.5,
        opt_projection_format_epsilon=0.3,
    )
    return CPTConfig(**options), peft.CPTConfig(task_type="CAUSAL_LM", cpt_mask=[1] * len(TOKEN_IDS), **options)


def pair(arch="llama_gqa", decay="decay"):
    """Our CPT model and PEFT's on the same base weights, with the same (non-zero) deltas."""
    ours_config, peft_config = configs(decay)
    ours = get_peft_model(tiny_model(arch), ours_config)
    theirs = peft.get_peft_model(tiny_model(arch), peft_config)
    delta = torch.randn(len(TOKEN_IDS), ours.shape.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.05
    with torch.no_grad():
        ours.prompt_source.delta_embedding.weight.copy_(delta)
        theirs.prompt_encoder["default"].delta_embedding.weight.copy_(delta)
    return ours, theirs


@pytest.mark.parametrize("decay", ["none", "decay"])
@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "opt"])
def test_loss_and_gradients_equal_peft(arch, decay):
    ours, theirs = pair(arch, decay)
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    input_type_mask = torch.tensor([[1, 1, 2, 2, 4, 4, 4], [1, 2, 2, 2, 3, 4, 4]])
    mask = torch.ones_like(ids)
    our_loss = ours(input_ids=ids, attention_mask=mask, labels=labels, input_type_mask=input_type_mask).loss
    their_loss = theirs(input_ids=ids, attention_mask=mask, labels=labels, input_type_mask=input_type_mask.clone()).loss
    torch.testing.assert_close(our_loss, their_loss, atol=1e-5, rtol=1e-5)
    our_loss.backward()
    their_loss.backward()
    ours_grad = ours.prompt_source.delta_embedding.weight.grad
    torch.testing.assert_close(
        ours_grad, theirs.prompt_encoder["default"].delta_embedding.weight.grad, atol=1e-5, rtol=1e-4
    )
    labels_rows = torch.tensor(TYPES) % 4 == 0
    assert ours_grad[labels_rows].abs().sum() == 0 and ours_grad[~labels_rows].abs().sum() > 0  # labels stay fixed
    assert ours.prompt_source.embedding.weight.grad is None
    copied = copy.deepcopy(ours)  # a tensor hook on the delta would not survive this copy (it did not, before)
    copied.zero_grad()
    copied(input_ids=ids, attention_mask=mask, labels=labels, input_type_mask=input_type_mask).loss.backward()
    torch.testing.assert_close(copied.prompt_source.delta_embedding.weight.grad, ours_grad)
    # without an input_type_mask every input label counts, as in PEFT
    plain = ours(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(
        plain, theirs(input_ids=ids, attention_mask=mask, labels=labels).loss, atol=1e-5, rtol=1e-5
    )


def test_deltas_stay_inside_their_bounds():
    ours, _ = pair()
    source = ours.prompt_source
    with torch.no_grad():
        source.delta_embedding.weight.normal_(0, 10)
    source()
    norms = source.delta_embedding.weight.norm(dim=1)
    assert (norms <= source.epsilon * (1 + 1e-5)).all()
    scale = (ours.shape.hidden_size / 2048) ** 0.5
    assert source.epsilon[1] == pytest.approx(0.5 * scale) and source.epsilon[0] == pytest.approx(0.3 * scale)
    assert source.epsilon[4] < 1e-9  # a label token


def test_peft_reads_our_cpt_adapter_and_we_read_peft(tmp_path):
    ours, theirs = pair()
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(2))
    loaded_by_peft = peft.PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path / "ours").eval()
    loaded_by_us = PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path / "peft").eval()
    with torch.no_grad():
        expected = ours.eval()(input_ids=ids).logits
        torch.testing.assert_close(
            loaded_by_peft(input_ids=ids).logits[:, -ids.shape[1] :], expected, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(loaded_by_us(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_cpt_prompt_is_exact_under_left_padding():
    ours, _ = pair("qwen2")
    ours.eval()
    input_ids, attention_mask, rows = left_padded_batch()
    with torch.no_grad():
        batched = ours(input_ids=input_ids, attention_mask=attention_mask).logits
        for i, row in enumerate(rows):
            torch.testing.assert_close(batched[i, -len(row) :], ours(input_ids=row[None]).logits[0], atol=1e-4, rtol=0)


def test_cpt_config_errors_are_clear():
    with pytest.raises(ConfigError, match="needs cpt_token_ids"):
        CPTConfig()
    with pytest.raises(ConfigError, match="same length"):
        CPTConfig(cpt_token_ids=[1, 2], cpt_tokens_type_mask=[1])
    with pytest.raises(ConfigError, match="'none' or 'decay'"):
        CPTConfig(cpt_token_ids=[1], opt_weighted_loss_type="linear")
    assert CPTConfig(cpt_token_ids=[1, 2, 3]).num_virtual_tokens == 3
    model = get_peft_model(tiny_model("gpt2"), PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="input_type_mask is for CPT adapters"):
        ids = torch.randint(3, 128, (1, 4))
        model(input_ids=ids, labels=ids, input_type_mask=torch.ones_like(ids))


def test_the_training_workflow_takes_a_cpt_prompt(tmp_path):
    from softprompt import Predictor
    from softprompt.training import TrainConfig, train
    from tiny_run import run_config

    options = {"cpt_token_ids": [40, 41, 42, 43, 44], "cpt_tokens_type_mask": [1, 2, 2, 3, 4]}
    config = run_config(tmp_path, "cpt", epochs=2, lr=0.01, method_options=options)
    assert train(TrainConfig.from_dict(config))["epoch"] == 2
    predictor = Predictor.from_pretrained(str(tmp_path / "run" / "adapter"))
    assert predictor.model.peft_config[predictor.adapter_names[0]].num_virtual_tokens == 5
    assert predictor.probabilities(["my order never arrived"]).shape == (1, 2)


def test_resuming_a_cpt_prompt_keeps_its_example_embeddings_frozen(tmp_path):
    ours, _ = pair()
    ours.save_pretrained(tmp_path, include_prompt_source=True)
    resumed = PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path, is_trainable=True).prompt_source
    assert not resumed.embedding.weight.requires_grad and resumed.delta_embedding.weight.requires_grad
    torch.testing.assert_close(resumed.delta_embedding.weight, ours.prompt_source.delta_embedding.weight)
