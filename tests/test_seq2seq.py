"""Encoder-decoder models (T5, BART), task_type SEQ_2_SEQ_LM: padding, batching, generation == step-by-step
forward, checkpointing, mixed adapters, PEFT files and logits both ways, and what PEFT gets wrong."""

import dataclasses

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, BartConfig, T5Config

from softprompt import (
    AutoPeftModelForSeq2SeqLM,
    ConfigError,
    DePTConfig,
    MultitaskPromptTuningConfig,
    PeftModel,
    PeftModelForSeq2SeqLM,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResidualPromptTuningConfig,
    ULPTConfig,
    get_peft_model,
)
from softprompt.compat import PrefixCall, prefix_attention_context
from tiny_models import tiny_model, without_dropout

pytestmark = [  # PEFT's own calls
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Both `past_key_values` and `cache` are set:FutureWarning"),
]
VOCAB = 128
MODELS = {
    "t5": lambda: T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    ),
    # 4 layers: PEFT's prefix layout hands layers 2 and 3 the prefixes of layers 0 and 1
    "bart": lambda: BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=4,
        decoder_layers=4,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    ),
}
METHODS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4),
    "p_tuning_mlp": lambda: PromptEncoderConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, encoder_hidden_size=16),
    "p_tuning_lstm": lambda: PromptEncoderConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
    ),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4),
    "prefix_projection": lambda: PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16
    ),
    # Li & Liang's placement: encoder and decoder (softprompt's own layout; PEFT cannot read it)
    "encoder_prefix": lambda: PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, encoder_prefix=True),
    # a prompt before the encoder's input and one before the decoder's (PEFT's table of 2P rows)
    "multitask": lambda: MultitaskPromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, num_tasks=1, num_ranks=2
    ),
    # offsets on the encoder's first tokens (softprompt's own method), started non-zero so they matter
    "dept": lambda: DePTConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, offset_length=5, offset_rank=2, offset_init_std=0.05
    ),
    # trained through an MLP or in 2 dimensions; saved as PEFT's PROMPT_TUNING table (its decoder block included)
    "residual": lambda: ResidualPromptTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, bottleneck_size=8, residual_init="layer_norm"
    ),  # 3: with 4, the tiny T5's greedy tokens happen to stay those of the bare model
    "ulpt": lambda: ULPTConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, low_rank=2),
}
CASES = [(arch, method) for arch in MODELS for method in METHODS]
# PEFT's multitask forward needs labels and returns the decoder prompt's positions too: compared on its own below
PEFT_CASES = [(arch, method) for arch, method in CASES if method not in ("encoder_prefix", "multitask", "dept")]
# PEFT reads these as PROMPT_TUNING tables, but has no such method to train
PEFT_WRITES = [(arch, method) for arch, method in PEFT_CASES if method not in ("residual", "ulpt")]


def base_model(arch, seed=0):
    torch.manual_seed(seed)
    config = MODELS[arch]()
    config.initializer_range = config.init_std = 0.2
    model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.forced_bos_token_id = model.generation_config.forced_eos_token_id = None
    return model


def wrapped(arch, method, seed=1):
    model = get_peft_model(base_model(arch), METHODS[method]()).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.prompt_source.parameters():
            p.normal_(0, 1)  # a prompt far from its start, so that it matters
    return model


def right_padded(lengths, seed=0, pad=0):
    """Random rows right-padded with `pad`: (ids [B, T], mask [B, T], rows)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]
    ids = torch.full((len(rows), max(lengths)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask, rows


def labels_for(lengths, seed=1):
    """Decoder targets right-padded with -100, and their mask."""
    ids, mask, rows = right_padded(lengths, seed)
    return ids.masked_fill(mask == 0, -100), mask, rows


@pytest.mark.parametrize("arch,method", CASES)
def test_padded_batch_equals_each_row_alone(arch, method):
    model = wrapped(arch, method)
    ids, mask, rows = right_padded((7, 4, 2))
    labels, label_mask, targets = labels_for((3, 5, 2))
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=label_mask).logits
        for i, (row, target) in enumerate(zip(rows, targets)):
            alone = model(input_ids=row[None], labels=target[None]).logits[0]  # [T_i, V]
            torch.testing.assert_close(batched[i, : len(target)], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch,method", CASES)
def test_training_reaches_the_prompt_only(arch, method):
    model = wrapped(arch, method).train()
    frozen = {name: p.clone() for name, p in model.base_model.named_parameters()}
    ids, mask, _ = right_padded((6, 3))
    labels, label_mask, _ = labels_for((4, 2))
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=label_mask).loss
    loss.backward()
    prompt = list(model.prompt_source.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompt)
    assert all(not p.requires_grad for p in model.base_model.parameters())
    torch.optim.SGD(prompt, lr=0.1).step()
    assert all(torch.equal(p, frozen[name]) for name, p in model.base_model.named_parameters())


@pytest.mark.parametrize("arch,method", CASES)
def test_greedy_generation_equals_step_by_step_forward(arch, method):
    model = wrapped(arch, method)
    ids, mask, rows = right_padded((6, 3))
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    start = model.base_model.config.decoder_start_token_id
    for i, row in enumerate(rows):
        decoder = torch.tensor([[start]])
        with torch.no_grad():
            for _ in range(5):
                logits = model(input_ids=row[None], decoder_input_ids=decoder).logits[:, -1]
                decoder = torch.cat([decoder, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(generated[i, : decoder.shape[1]], decoder[0]), (generated[i], decoder[0])
    with torch.no_grad(), model.disable_adapter():
        bare = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert not torch.equal(bare, generated)  # the prompt changes what is generated


@pytest.mark.parametrize("arch", MODELS)
def test_beam_search_and_several_sequences_run_after_the_prompt(arch):
    model = wrapped(arch, "prefix_tuning")
    ids, mask, _ = right_padded((5, 3))
    beams = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False
    )
    assert beams.shape[0] == 4
    one_beam = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, num_beams=1, do_sample=False)
    greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(one_beam, greedy)


@pytest.mark.parametrize("arch", MODELS)
def test_mixed_adapters_in_one_batch_equal_each_alone(arch):
    model = wrapped(arch, "prompt_tuning")
    model.add_adapter("prefix", METHODS["prefix_tuning"]())
    model.add_adapter("ptune", METHODS["p_tuning_mlp"]())
    model.eval()
    with torch.no_grad():
        for name in ("prefix", "ptune"):
            for p in model.prompt_encoder[name].parameters():
                p.normal_(0, 1)
    names = ["prefix", "default", None, "ptune"]
    ids, mask, rows = right_padded((5, 3, 6, 2))
    labels, label_mask, targets = labels_for((2, 4, 3, 3))
    with torch.no_grad():
        mixed = model(
            input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=label_mask, adapter_names=names
        )
        generated = model.generate(
            input_ids=ids, attention_mask=mask, adapter_names=names, max_new_tokens=4, do_sample=False
        )
        losses = []
        for i, name in enumerate(names):
            alone = model(input_ids=rows[i][None], labels=targets[i][None], adapter_names=[name]).logits[0]
            torch.testing.assert_close(mixed.logits[i, : len(targets[i])], alone, atol=1e-4, rtol=1e-4)
            one = model.generate(input_ids=rows[i][None], adapter_names=[name], max_new_tokens=4, do_sample=False)[0]
            assert torch.equal(generated[i, : len(one)], one)
            losses.append(torch.nn.functional.cross_entropy(alone, targets[i], reduction="sum"))
    torch.testing.assert_close(
        mixed.loss, torch.stack(losses).sum() / sum(len(t) for t in targets), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("arch,method", CASES)
def test_gradient_checkpointing_gives_the_same_gradients(arch, method):
    ids, mask, _ = right_padded((5, 3))
    labels, label_mask, _ = labels_for((3, 2))
    grads = []
    for checkpointing in (False, True):
        model = without_dropout(wrapped(arch, method)).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=label_mask).loss.backward()
        grads.append([p.grad.clone() for p in model.prompt_source.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch,method", CASES)
def test_save_and_load_round_trip_is_bit_exact(arch, method, tmp_path):
    model = wrapped(arch, method)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_model(arch), tmp_path).eval()
    assert isinstance(loaded, PeftModelForSeq2SeqLM)
    ids, mask, _ = right_padded((5, 3))
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3]).logits,
            loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :3]).logits,
        )


@pytest.mark.parametrize("arch,method", PEFT_CASES)
def test_peft_reads_our_adapter_with_the_same_logits(arch, method, tmp_path):
    model = wrapped(arch, method)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    theirs = peft.PeftModel.from_pretrained(base_model(arch), tmp_path).eval()
    assert theirs.peft_config["default"].num_transformer_submodules == 2
    ids, mask, _ = right_padded((5, 3))
    decoder = torch.tensor([[0, 7, 9], [0, 11, 4]])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        peft_logits = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    torch.testing.assert_close(ours, peft_logits, atol=1e-5, rtol=1e-5)
    assert set(saved) == {"prompt_embeddings"}


@pytest.mark.parametrize("arch,method", PEFT_WRITES)
def test_we_read_peft_adapter_with_the_same_logits(arch, method, tmp_path):
    torch.manual_seed(3)
    config = METHODS[method]()
    peft_config = getattr(peft, type(config).__name__)(**{k: v for k, v in config.to_dict().items() if v is not None})
    theirs = peft.get_peft_model(base_model(arch), peft_config).eval()
    with torch.no_grad():
        for p in theirs.prompt_encoder.parameters():
            p.normal_(0, 1)
    theirs.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(base_model(arch), tmp_path).eval()
    ids, mask, _ = right_padded((5, 3))
    decoder = torch.tensor([[0, 7, 9], [0, 11, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits,
            theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits,
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("arch", MODELS)
def test_peft_seq2seq_prefix_generation_drops_the_prefix_and_ours_does_not(arch, tmp_path):
    """PEFT 0.21 on transformers 5: its forward prefixes the decoder, its generate does not (it equals the bare
    model's). Ours generates what forward scores (test above)."""
    model = wrapped(arch, "prefix_tuning")
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(base_model(arch), tmp_path).eval()
    ids, mask, _ = right_padded((6, 4))
    with torch.no_grad():
        peft_generated = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        bare = base_model(arch).generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        ours = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(peft_generated, bare)
    assert not torch.equal(ours, bare)


def test_prompt_tuning_file_has_peft_decoder_block_and_we_read_its_first_rows(tmp_path):
    model = wrapped("t5", "prompt_tuning")
    model.save_pretrained(tmp_path)
    table = load_file(tmp_path / "adapter_model.safetensors")["prompt_embeddings"]
    assert table.shape == (8, 32)  # PEFT's [2P, H]: P encoder rows, then P rows no method reads
    torch.testing.assert_close(table[:4], model.prompt_table())
    assert torch.count_nonzero(table[4:]) == 0


def test_auto_class_loads_adapter_and_base_from_the_folder(tmp_path):
    base_model("t5").save_pretrained(tmp_path / "base")
    model = get_peft_model(
        base_model("t5"),
        PromptTuningConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, base_model_name_or_path=str(tmp_path / "base")
        ),
    )
    model.save_pretrained(tmp_path / "adapter")
    loaded = AutoPeftModelForSeq2SeqLM.from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded, PeftModelForSeq2SeqLM)
    torch.testing.assert_close(loaded.prompt_table(), model.prompt_table())


def test_clear_errors_for_the_wrong_task_type():
    with pytest.raises(ValueError, match="SEQ_2_SEQ_LM"):
        get_peft_model(base_model("t5"), PromptTuningConfig(num_virtual_tokens=4))  # CAUSAL_LM on T5
    with pytest.raises(ValueError, match="encoder-decoder"):
        get_peft_model(tiny_model("llama_gqa"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
    model = wrapped("t5", "prompt_tuning")
    with pytest.raises(AttributeError, match="has no score_continuations"):
        model.score_continuations(torch.tensor([[5, 6]]), [[[7]]])


@pytest.mark.parametrize("arch", MODELS)
def test_encoder_prefix_reaches_the_encoder_and_a_masked_one_changes_nothing(arch):
    """With encoder_prefix the encoder's states depend on the prefix; the same prefix with every position masked
    gives the bare encoder (the mask, and T5's relative position bias, are extended alike)."""
    model = wrapped(arch, "encoder_prefix")
    ids, mask, _ = right_padded((6, 3))
    states = model.prompt_states("default")
    encoder_layers = [
        (k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in states.layers[model.shape.num_layers :]
    ]
    assert len(encoder_layers) == model.shape.encoder_layers
    encoder = model.base_model.get_encoder()
    with torch.no_grad():
        bare = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        with prefix_attention_context(PrefixCall(encoder_layers, torch.zeros(2, states.length, dtype=torch.long))):
            masked = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        with prefix_attention_context(PrefixCall(encoder_layers, torch.ones(2, states.length, dtype=torch.long))):
            prefixed = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(masked, bare, atol=1e-5, rtol=0)
    assert (prefixed - bare)[mask.bool()].abs().max() > 1e-3


def test_encoder_prefix_layout_and_errors(tmp_path):
    model = wrapped("bart", "encoder_prefix")
    assert model.prompt_table().shape == (4, (4 + 4) * 2 * 32)  # decoder and encoder layers, keys and values
    model.save_pretrained(tmp_path)
    assert '"encoder_prefix": true' in (tmp_path / "adapter_config.json").read_text()
    with pytest.raises(Exception, match="size mismatch|shape"):  # PEFT refuses the wider table rather than misread it
        peft.PeftModel.from_pretrained(base_model("bart"), tmp_path)
    plain = wrapped("bart", "prefix_tuning")
    plain.save_pretrained(tmp_path / "plain")
    assert "encoder_prefix" not in (tmp_path / "plain" / "adapter_config.json").read_text()  # PEFT's JSON exactly
    with pytest.raises(ConfigError, match="SEQ_2_SEQ_LM"):
        PrefixTuningConfig(num_virtual_tokens=4, encoder_prefix=True)


# ---- multitask prompt tuning: a prompt for the encoder and one for the decoder, per task ---------------------
def peft_multitask(arch, tmp_path, seed=3):
    """PEFT's multitask model with a random prompt, saved to tmp_path, and ours read from that folder."""
    torch.manual_seed(seed)
    config = dataclasses.replace(METHODS["multitask"](), num_tasks=3)
    peft_config = peft.MultitaskPromptTuningConfig(**{k: v for k, v in config.to_dict().items() if v is not None})
    theirs = peft.get_peft_model(base_model(arch), peft_config).eval()
    with torch.no_grad():
        for p in theirs.prompt_encoder.parameters():
            p.normal_(0, 1)
    theirs.save_pretrained(tmp_path)
    return theirs, PeftModel.from_pretrained(base_model(arch), tmp_path).eval()


@pytest.mark.parametrize("arch", MODELS)
def test_multitask_equals_peft_forward_on_the_real_positions_both_ways(arch, tmp_path):
    """PEFT's forward puts rows P..2P of the task's table before the decoder's input (labels shifted right), with
    P -100 labels: its logits are [B, P+T, V]. Ours are its last T positions, with the same loss."""
    theirs, ours = peft_multitask(arch, tmp_path / "peft")
    ids, mask, _ = right_padded((5, 3))
    labels, _, _ = labels_for((3, 3))
    task_ids = torch.tensor([2, 0])
    with torch.no_grad():
        peft_out = theirs(input_ids=ids, attention_mask=mask, labels=labels, task_ids=task_ids)
        out = ours(input_ids=ids, attention_mask=mask, labels=labels, task_ids=task_ids)
        assert peft_out.logits.shape[1] == labels.shape[1] + 4
        torch.testing.assert_close(out.logits, peft_out.logits[:, 4:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.loss, peft_out.loss, atol=1e-5, rtol=1e-5)
        other = ours(input_ids=ids, attention_mask=mask, labels=labels, task_ids=torch.tensor([1, 1])).logits
        assert (other - out.logits).abs().max() > 1e-3  # the tasks' prompts differ
    ours.save_pretrained(tmp_path / "ours")  # and PEFT reads ours
    again = peft.PeftModel.from_pretrained(base_model(arch), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask, labels=labels, task_ids=task_ids).logits,
            peft_out.logits,
            atol=1e-5,
            rtol=1e-5,
        )
    shapes = {k: tuple(v.shape) for k, v in load_file(tmp_path / "ours" / "adapter_model.safetensors").items()}
    width = base_model(arch).config.d_model
    assert shapes == {"prompt_embeddings": (8, width), "prefix_task_cols": (3, 8, 2), "prefix_task_rows": (3, 2, width)}


@pytest.mark.parametrize("arch", MODELS)
def test_multitask_generation_follows_each_row_task_and_peft_drops_the_decoder_prompt(arch, tmp_path):
    theirs, ours = peft_multitask(arch, tmp_path)
    ids, mask, rows = right_padded((6, 4, 5))
    task_ids = torch.tensor([1, 0, 2])
    settings = {"max_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        mixed = ours.generate(input_ids=ids, attention_mask=mask, task_ids=task_ids, **settings)
        start = ours.base_model.config.decoder_start_token_id
        for i, (row, task) in enumerate(zip(rows, task_ids.tolist())):
            decoder = torch.tensor([[start]])  # greedy decoding through forward, one row alone
            for _ in range(5):
                logits = ours(input_ids=row[None], decoder_input_ids=decoder, task_ids=[task]).logits[:, -1]
                decoder = torch.cat([decoder, logits.argmax(-1, keepdim=True)], dim=1)
            assert torch.equal(mixed[i, : decoder.shape[1]], decoder[0]), (i, mixed[i], decoder[0])
        beams = ours.generate(
            input_ids=ids, attention_mask=mask, task_ids=task_ids, num_beams=3, num_return_sequences=2, max_new_tokens=4
        )
        assert beams.shape[0] == 6
        # PEFT's generate prompts the encoder only: what it generates is what its forward scores without the
        # decoder prompt, and differs from its own forward's greedy choice here
        peft_generated = theirs.generate(input_ids=ids, attention_mask=mask, task_ids=task_ids, **settings)
    assert not torch.equal(peft_generated[:, : mixed.shape[1]], mixed)
