"""Prompts on bidirectional encoders for sequence classification (BERT, RoBERTa, DistilBERT): exact under padding,
prefix tuning (P-tuning v2) through the attention interface equal to a cache reference, PEFT files both ways."""

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    MPNetConfig,
    RobertaConfig,
)

from softprompt import (
    DePTConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResidualPromptTuningConfig,
    ULPTConfig,
    get_peft_model,
)
from softprompt.compat import PrefixCall, frozen_prefix_cache, prefix_attention_context
from tiny_models import without_dropout

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT's call
VOCAB, LABELS = 128, 3
ENCODERS = {
    "bert": lambda: BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
    "distilbert": lambda: DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    # its attention bypasses transformers' attention interface: softprompt rewrites its forward (compat.py)
    "mpnet": lambda: MPNetConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    ),
}
METHODS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
    "p_tuning": lambda: PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=4, encoder_hidden_size=16),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
    "prefix_projection": lambda: PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16
    ),
    "dept": lambda: DePTConfig(task_type="SEQ_CLS", num_virtual_tokens=3, offset_length=5, offset_rank=2),
    "residual": lambda: ResidualPromptTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=4, bottleneck_size=8, residual_init="layer_norm"
    ),
    "ulpt": lambda: ULPTConfig(task_type="SEQ_CLS", num_virtual_tokens=4, low_rank=2),
}


def encoder(arch, seed=0, attn="eager"):
    torch.manual_seed(seed)
    config = ENCODERS[arch]()
    config.num_labels, config.initializer_range = LABELS, 0.2
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


def wrapped(method, arch, attn="eager"):
    torch.manual_seed(1)
    model = get_peft_model(encoder(arch, attn=attn), METHODS[method]()).eval()
    with torch.no_grad():
        for p in model.prompt_source.parameters():
            p.normal_(0, 1)  # a prompt far from its start, so that it matters
    return model


def right_padded(lengths=(7, 4, 2), seed=0, width=None):
    """Random rows right-padded with 0 to `width` (default: the longest): (ids [B, T], mask [B, T], rows)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, VOCAB, (n,), generator=generator) for n in lengths]
    ids = torch.zeros(len(rows), width or max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask, rows


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ENCODERS)
def test_padded_batch_equals_each_example_alone(method, arch):
    model = wrapped(method, arch)
    ids, mask, rows = right_padded()
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits  # [B, labels]
        for i, row in enumerate(rows):
            torch.testing.assert_close(batched[i], model(input_ids=row[None]).logits[0], atol=1e-5, rtol=0)
        with model.disable_adapter():
            bare = model(input_ids=ids, attention_mask=mask).logits
    assert (bare - batched).abs().max() > 1e-3  # the prompt reaches the classifier


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_prefix_attention_is_the_same_with_sdpa_and_eager(arch):
    ids, mask, _ = right_padded()
    with torch.no_grad():
        eager = wrapped("prefix_tuning", arch, "eager")(input_ids=ids, attention_mask=mask).logits
        sdpa = wrapped("prefix_tuning", arch, "sdpa")(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


def test_bert_prefix_equals_the_backbone_run_with_a_prefix_cache():
    """Reference: BertModel takes a cache of per-layer prefixes itself; the head then pools and classifies."""
    model = wrapped("prefix_tuning", "bert")
    ids, mask, _ = right_padded()
    base = model.base_model
    states = model.prompt_states("default")  # per layer [1, heads, P, head_dim]
    batch, virtual = ids.shape[0], states.length
    layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in states.layers]
    with torch.no_grad():
        hidden = base.bert(
            input_ids=ids,
            attention_mask=torch.cat([torch.ones(batch, virtual, dtype=torch.long), mask], 1),
            position_ids=torch.arange(ids.shape[1]).expand(batch, -1),
            cache=frozen_prefix_cache(layers),
        )
        reference = model.heads["default"](hidden.pooler_output)
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("arch", ["bert", "roberta", "mpnet"])
def test_peft_reads_ours_and_we_read_peft(method, arch, tmp_path):
    ours = wrapped(method, arch)
    with torch.no_grad():
        ours.heads["default"].apply(lambda m: [p.add_(0.2) for p in m.parameters(recurse=False)])
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    assert "prompt_embeddings" in saved and any(k.startswith("base_model.classifier.") for k in saved)
    theirs = peft.PeftModel.from_pretrained(encoder(arch), tmp_path / "ours").eval()
    ids, mask, _ = right_padded()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=ids, attention_mask=mask).logits,
            theirs(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    config = {"prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig}[method]
    extra = {"encoder_hidden_size": 16} if method == "p_tuning" else {}
    trained = peft.get_peft_model(encoder(arch), config(task_type="SEQ_CLS", num_virtual_tokens=4, **extra)).eval()
    trained.save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(encoder(arch), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits,
            trained(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_p_tuning_v2_runs_where_peft_refuses(tmp_path):
    theirs = peft.get_peft_model(encoder("bert"), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    ids, mask, _ = right_padded()
    with pytest.raises(ValueError, match="does not support past key values"):
        theirs(input_ids=ids, attention_mask=mask)
    theirs.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(encoder("bert"), tmp_path)
    assert loaded(input_ids=ids, attention_mask=mask).logits.shape == (3, LABELS)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_prompt_and_the_head_train_on_an_encoder(method):
    model = wrapped(method, "bert").train()
    ids, mask, _ = right_padded()
    loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt_source.parameters())
    assert all(p.grad is not None for p in model.heads["default"].parameters())
    assert all(p.grad is None for p in model.base_model.parameters())


def test_an_encoder_without_a_classification_head_is_refused_clearly():
    torch.manual_seed(0)
    masked_lm = AutoModelForMaskedLM.from_config(ENCODERS["bert"]())
    with pytest.raises(ValueError, match="bidirectional encoder"):
        get_peft_model(masked_lm, PromptTuningConfig(num_virtual_tokens=2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ENCODERS)
def test_gradient_checkpointing_gives_the_same_gradients(method, arch):
    """Layers recomputed during backward see the prefix their forward saw (it lives in a context variable)."""
    ids, mask, _ = right_padded()
    if arch == "mpnet":  # transformers' MPNet has no checkpointing: its own clear error reaches the user
        with pytest.raises(ValueError, match="does not support activation checkpointing"):
            wrapped(method, arch).gradient_checkpointing_enable()
        return
    grads = []
    for checkpointing in (False, True):
        model = without_dropout(wrapped(method, arch)).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss.backward()
        grads.append([p.grad.clone() for p in model.prompt_source.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed, atol=1e-6, rtol=1e-5)


def test_mpnet_rewritten_attention_equals_the_original():
    """MPNet's attention, rewritten to take a prefix, gives the original model's logits without one, and with a
    prefix whose every position is masked (the mask and MPNet's relative position bias are extended alike)."""
    ids, mask, _ = right_padded()
    original = encoder("mpnet")
    model = wrapped("prefix_tuning", "mpnet")
    states = model.prompt_states("default")
    layers = [(k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1)) for k, v in states.layers]
    with torch.no_grad():
        expected = original(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-6, rtol=0)
        with prefix_attention_context(PrefixCall(layers, torch.zeros(3, states.length, dtype=torch.long))):
            masked = model.base_model(input_ids=ids, attention_mask=mask).logits  # the base's own head
        torch.testing.assert_close(masked, expected, atol=1e-6, rtol=0)
        with prefix_attention_context(PrefixCall(layers, torch.ones(3, states.length, dtype=torch.long))):
            prefixed = model.base_model(input_ids=ids, attention_mask=mask).logits
    assert (prefixed - expected).abs().max() > 1e-3
