"""task_type FEATURE_EXTRACTION: hidden states [B, L, H] aligned with the input tokens, for encoders (BERT,
RoBERTa, MPNet) and decoders (Llama); padding changes no row; PEFT's outputs (minus its virtual positions)."""

import peft
import pytest
import torch
from transformers import AutoModel, BertConfig, LlamaConfig, MPNetConfig, RobertaConfig

from softprompt import (
    DePTConfig,
    PeftModel,
    PeftModelForFeatureExtraction,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResidualPromptTuningConfig,
    ULPTConfig,
    get_peft_model,
)

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT's call
VOCAB = 128
BACKBONES = {
    "bert": lambda: BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "mpnet": lambda: MPNetConfig(
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
    "prompt_tuning": lambda: PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=4),
    "p_tuning": lambda: PromptEncoderConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=4, encoder_hidden_size=16
    ),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=4),
    "residual": lambda: ResidualPromptTuningConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=4, bottleneck_size=8
    ),
    "ulpt": lambda: ULPTConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=4, low_rank=2),
    # offsets on the first 5 real tokens (left padding on the decoder: counted from each row's first real token)
    "dept": lambda: DePTConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=3, offset_length=5, offset_rank=2),
}
CASES = [(arch, method) for arch in BACKBONES for method in METHODS]


def backbone(arch, seed=0):
    torch.manual_seed(seed)
    config = BACKBONES[arch]()
    config.initializer_range = 0.2
    return AutoModel.from_config(config, attn_implementation="eager").eval()


def wrapped(arch, method):
    model = get_peft_model(backbone(arch), METHODS[method]()).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.prompt_source.parameters():
            p.normal_(0, 1)
    return model


def padded(arch, lengths=(7, 4, 2), seed=0):
    """Rows padded as the family pads: right for encoders, left for the decoder. -> (ids, mask, [(row, slice)])."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, VOCAB, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    ids, mask, where = (
        torch.zeros(len(rows), width, dtype=torch.long),
        torch.zeros(len(rows), width, dtype=torch.long),
        [],
    )
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if arch == "llama" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
        where.append((row, span))
    return ids, mask, where


@pytest.mark.parametrize("arch,method", CASES)
def test_padded_batch_equals_each_row_alone_and_states_align_with_the_input(arch, method):
    model = wrapped(arch, method)
    assert isinstance(model, PeftModelForFeatureExtraction)
    ids, mask, rows = padded(arch)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert batched.shape[:2] == ids.shape
        for i, (row, span) in enumerate(rows):
            alone = model(input_ids=row[None]).last_hidden_state[0]
            torch.testing.assert_close(batched[i, span], alone, atol=1e-5, rtol=1e-5)
        with model.disable_adapter():
            bare = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (bare - batched)[mask.bool()].abs().max() > 1e-3


@pytest.mark.parametrize("arch", BACKBONES)
def test_prompt_tuning_equals_the_backbone_with_the_prompt_in_front(arch):
    model = wrapped(arch, "prompt_tuning")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    table = model.prompt_table()  # [P, H]
    with torch.no_grad():
        embeds = torch.cat([table[None], model.base_model.get_input_embeddings()(ids)], dim=1)
        reference = model.base_model(inputs_embeds=embeds).last_hidden_state[:, table.shape[0] :]
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_peft_gives_the_same_states_after_its_virtual_positions(arch, method, tmp_path):
    ours = wrapped(arch, method)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(backbone(arch), tmp_path / "ours").eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        peft_states = theirs(input_ids=ids).last_hidden_state  # [B, P+L, H]: PEFT keeps the virtual positions
        torch.testing.assert_close(ours(input_ids=ids).last_hidden_state, peft_states[:, 4:], atol=1e-5, rtol=1e-5)
    loaded = PeftModel.from_pretrained(backbone(arch), tmp_path / "ours")
    assert isinstance(loaded, PeftModelForFeatureExtraction)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, ours(input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_training_reaches_the_prompt_only(arch):
    model = wrapped(arch, "prefix_tuning").train()
    ids, mask, _ = padded(arch)
    model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt_source.parameters())
    assert all(p.grad is None for p in model.base_model.parameters())
    with pytest.raises(AttributeError, match="has no generate"):  # a feature extractor has none to inherit
        model.generate(input_ids=ids)
