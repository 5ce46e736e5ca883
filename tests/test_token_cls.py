"""task_type TOKEN_CLS: per-token logits [B, L, C] aligned with the input, a loss that lines up with the labels,
one head per adapter in PEFT's file names; encoders (BERT, RoBERTa) and a decoder (Llama)."""

import peft
import pytest
import torch
from transformers import AutoModelForTokenClassification, BertConfig, LlamaConfig, RobertaConfig

from softprompt import (
    PeftModel,
    PeftModelForTokenClassification,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT's call
VOCAB, LABELS = 128, 5
MODELS = {
    "bert": lambda: BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        pad_token_id=0,
    ),
}
METHODS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="TOKEN_CLS", num_virtual_tokens=4),
    "p_tuning": lambda: PromptEncoderConfig(task_type="TOKEN_CLS", num_virtual_tokens=4, encoder_hidden_size=16),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="TOKEN_CLS", num_virtual_tokens=4),
}
CASES = [(arch, method) for arch in MODELS for method in METHODS]


def classifier(arch, seed=0):
    torch.manual_seed(seed)
    config = MODELS[arch]()
    config.num_labels, config.initializer_range = LABELS, 0.2
    return AutoModelForTokenClassification.from_config(config, attn_implementation="eager").eval()


def wrapped(arch, method):
    model = get_peft_model(classifier(arch), METHODS[method]()).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.prompt_source.parameters():
            p.normal_(0, 1)
    return model


def padded(arch, lengths=(7, 4, 2)):
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, VOCAB, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    ids, mask, spans = (
        torch.zeros(len(rows), width, dtype=torch.long),
        torch.zeros(len(rows), width, dtype=torch.long),
        [],
    )
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if arch == "llama" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
        spans.append((row, span))
    return ids, mask, spans


@pytest.mark.parametrize("arch,method", CASES)
def test_padded_batch_equals_each_row_alone_and_the_loss_lines_up(arch, method):
    model = wrapped(arch, method)
    assert isinstance(model, PeftModelForTokenClassification)
    ids, mask, rows = padded(arch)
    labels = torch.randint(0, LABELS, ids.shape, generator=torch.Generator().manual_seed(2)).masked_fill(
        mask == 0, -100
    )
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, labels=labels)
        assert output.logits.shape == (*ids.shape, LABELS)
        for i, (row, span) in enumerate(rows):
            torch.testing.assert_close(
                output.logits[i, span], model(input_ids=row[None]).logits[0], atol=1e-5, rtol=1e-5
            )
        expected = torch.nn.functional.cross_entropy(output.logits[mask.bool()], labels[mask.bool()])
        torch.testing.assert_close(output.loss, expected)
        with model.disable_adapter():
            bare = model(input_ids=ids, attention_mask=mask).logits
    assert (bare - output.logits)[mask.bool()].abs().max() > 1e-3


@pytest.mark.parametrize("arch,method", CASES)
def test_prompt_and_head_train_and_round_trip(arch, method, tmp_path):
    model = wrapped(arch, method).train()
    ids, mask, _ = padded(arch)
    labels = torch.zeros_like(ids).masked_fill(mask == 0, -100)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt_source.parameters())
    assert all(p.grad is not None for p in model.heads["default"].parameters())
    assert all(p.grad is None for p in model.base_model.parameters())
    model.eval().save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(classifier(arch), tmp_path)
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
        )


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_logits_after_its_virtual_positions_match_and_its_loss_cannot_line_up(arch, tmp_path):
    ours = wrapped(arch, "prompt_tuning")
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(classifier(arch), tmp_path).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        peft_logits = theirs(input_ids=ids).logits  # [B, P+L, C]
        torch.testing.assert_close(ours(input_ids=ids).logits, peft_logits[:, 4:], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError):  # PEFT: logits [B*(P+L), C] against labels [B*L]
            theirs(input_ids=ids, labels=torch.zeros_like(ids))
