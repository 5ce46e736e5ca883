"""Several adapters on one frozen model: per-row adapters in one batch equal each row alone with its own adapter."""

import peft
import pytest
import torch

from softprompt import (
    AdapterError,
    DePTConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResidualPromptTuningConfig,
    ULPTConfig,
    get_peft_model,
)
from tiny_models import ARCHITECTURES, left_padded_batch, tiny_model

# Different methods and prompt lengths; "pt" comes first so that it is the active adapter.
ADAPTERS = {
    "pt": lambda: PromptTuningConfig(num_virtual_tokens=3),
    "lstm": lambda: PromptEncoderConfig(
        num_virtual_tokens=5, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
    ),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=6),
    "projection": lambda: PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=16),
}
ROWS = [
    "lstm",
    None,
    "prefix",
    "pt",
    "__base__",
    "projection",
]  # one adapter per row; None and "__base__": the bare model
LENGTHS = (7, 4, 2, 5, 3, 6)


def multi_adapter_model(arch, seed=0):
    torch.manual_seed(seed + 1)
    names = list(ADAPTERS)
    model = get_peft_model(tiny_model(arch, seed), ADAPTERS[names[0]](), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, ADAPTERS[name]())
    return model.eval()


def alone(model, name, fn):
    """Run fn() with `name` active, or with adapters off for the bare model."""
    if name in (None, "__base__"):
        with model.disable_adapter():
            return fn()
    model.set_adapter(name)
    return fn()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_adapter_batch_gives_each_row_its_own_adapters_logits(arch):
    model = multi_adapter_model(arch)
    input_ids, attention_mask, rows = left_padded_batch(lengths=LENGTHS)
    with torch.no_grad():
        mixed = model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=ROWS).logits  # [B, T, V]
        for i, (name, row) in enumerate(zip(ROWS, rows)):
            expected = alone(model, name, lambda row=row: model(input_ids=row[None]).logits[0])
            torch.testing.assert_close(mixed[i, -len(row) :], expected, atol=1e-4, rtol=0)
        # the bare-model rows equal the base model itself
        base = model.base_model(input_ids=rows[1][None]).logits[0]
        torch.testing.assert_close(mixed[1, -len(rows[1]) :], base, atol=1e-4, rtol=0)
        # and the adapters really differ from each other (the comparison above can fail)
        model.set_adapter("pt")
        other = model(input_ids=rows[0][None]).logits[0]
        assert (other - mixed[0, -len(rows[0]) :]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_adapter_greedy_generation_equals_each_row_alone(arch):
    model = multi_adapter_model(arch)
    input_ids, attention_mask, rows = left_padded_batch(lengths=LENGTHS)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    mixed = model.generate(input_ids=input_ids, attention_mask=attention_mask, adapter_names=ROWS, **settings)
    for i, (name, row) in enumerate(zip(ROWS, rows)):
        expected = alone(model, name, lambda row=row: model.generate(input_ids=row[None], **settings)[0])
        assert mixed[i, -len(expected) :].tolist() == expected.tolist(), (name, i)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_adapter_label_scores_equal_each_row_alone(arch):
    model = multi_adapter_model(arch)
    input_ids, attention_mask, rows = left_padded_batch(lengths=LENGTHS)
    # each row its own label set: different counts and lengths
    per_row = [[[5, 6], [7]], [[9, 10, 11]], [[12], [13, 14], [15]], [[16, 17]], [[18], [19]], [[20, 21, 22], [23]]]
    mixed = model.score_continuations(input_ids, attention_mask, per_row, adapter_names=ROWS)  # [B, 3]
    assert mixed.shape == (len(ROWS), 3)
    for i, (name, row) in enumerate(zip(ROWS, rows)):
        expected = alone(
            model,
            name,
            lambda row=row, i=i: model.score_continuations(row[None], torch.ones_like(row[None]), per_row[i])[0],
        )
        torch.testing.assert_close(mixed[i, : len(per_row[i])], expected, atol=1e-4, rtol=0)
        assert torch.isinf(mixed[i, len(per_row[i]) :]).all()
        # the same as summing the log-probabilities from full forwards of input + continuation
        for k, tokens in enumerate(per_row[i]):
            full = torch.cat([row, torch.tensor(tokens)])[None]
            logits = alone(model, name, lambda full=full: model(input_ids=full).logits[0])
            logprobs = logits[len(row) - 1 : -1].log_softmax(-1)
            reference = logprobs[torch.arange(len(tokens)), torch.tensor(tokens)].sum()
            torch.testing.assert_close(mixed[i, k], reference, atol=1e-4, rtol=0)


def test_mixed_batch_with_beams_matches_each_row_alone():
    model = multi_adapter_model("llama_gqa")
    input_ids, attention_mask, rows = left_padded_batch(lengths=LENGTHS)
    settings = dict(
        max_new_tokens=4, do_sample=False, num_beams=2, num_return_sequences=2, pad_token_id=0, eos_token_id=None
    )
    mixed = model.generate(input_ids=input_ids, attention_mask=attention_mask, adapter_names=ROWS, **settings)
    for i, (name, row) in enumerate(zip(ROWS, rows)):
        expected = alone(model, name, lambda row=row: model.generate(input_ids=row[None], **settings))
        for j in range(2):
            assert mixed[2 * i + j, -expected.shape[1] :].tolist() == expected[j].tolist()


def test_a_mixed_batch_trains_every_adapter_in_it():
    model = multi_adapter_model("llama_gqa").train()
    for source in model.prompt_encoder.values():
        source.requires_grad_(True)
    input_ids, attention_mask, _ = left_padded_batch(lengths=LENGTHS)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, adapter_names=ROWS).loss
    loss.backward()
    for name, source in model.prompt_encoder.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in source.parameters()), name
    assert all(p.grad is None for p in model.base_model.parameters())


def test_prompt_states_are_cached_until_the_weights_change():
    model = multi_adapter_model("llama_gqa")
    ids = torch.randint(3, 128, (1, 5))
    with torch.no_grad():
        first = model(input_ids=ids, adapter_names=["prefix"]).logits
        states = model.prompt_states("prefix")
        assert model.prompt_states("prefix") is states  # computed once
        assert model.prompt_cache_bytes() >= states.nbytes() > 0
        model.prompt_encoder["prefix"].embedding.weight.add_(0.5)  # e.g. an optimizer step
        changed = model(input_ids=ids, adapter_names=["prefix"]).logits
    assert model.prompt_states("prefix") is not states
    model.add_adapter("late", ADAPTERS["pt"]())  # added to a model in eval mode: cached too
    assert not model.prompt_encoder["late"].training
    with torch.no_grad():
        assert model.prompt_states("late") is model.prompt_states("late")
    assert (changed - first).abs().max() > 1e-3
    model.train()  # training never uses the cache: gradients must reach the prompt
    model.prompt_encoder["prefix"].requires_grad_(True)
    model(input_ids=ids, labels=ids, adapter_names=["prefix"]).loss.backward()
    assert model.prompt_encoder["prefix"].embedding.weight.grad is not None


def test_the_prompt_states_cache_keeps_to_its_byte_limit():
    model = multi_adapter_model("llama_gqa")
    with torch.no_grad():
        sizes = {name: model.prompt_states(name).nbytes() for name in ADAPTERS}
        model.states_cache.clear()
        model.states_cache_limit = sizes["lstm"] + sizes["prefix"]
        for name in ["pt", "lstm", "prefix"]:
            model.prompt_states(name)
        assert (
            list(model.states_cache) == [("lstm", 0), ("prefix", 0)]
            and model.prompt_cache_bytes() <= model.states_cache_limit
        )
        ids = torch.randint(3, 128, (2, 4))
        evicted = model(input_ids=ids, adapter_names=["pt", "prefix"]).logits  # recomputed after eviction: same numbers
        model.states_cache_limit = None
        torch.testing.assert_close(evicted, model(input_ids=ids, adapter_names=["pt", "prefix"]).logits)


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_loading_adapters_from_folders_into_one_model(arch, tmp_path):
    model = multi_adapter_model(arch)
    model.save_pretrained(tmp_path)  # PEFT's layout: "default" at the root, others in sub-folders
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(ADAPTERS)
    loaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path / "pt", adapter_name="pt")
    ids = torch.randint(3, 128, (1, 6))
    with torch.no_grad():
        before = loaded(input_ids=ids).logits
        for name in ["lstm", "prefix", "projection"]:
            loaded.load_adapter(tmp_path / name, adapter_name=name)
        after = loaded(input_ids=ids).logits  # "pt" is still active: loading others changed nothing
        assert torch.equal(before, after)
        assert loaded.active_adapter == "pt" and sorted(loaded.peft_config) == sorted(ADAPTERS)
        for name in ADAPTERS:
            model.set_adapter(name)
            loaded.set_adapter(name)
            torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT's call
def test_peft_reads_a_multi_adapter_save(tmp_path):
    # PEFT holds several adapters of one method only ("Cannot combine adapters with different peft types")
    torch.manual_seed(3)
    model = get_peft_model(tiny_model("llama_gqa"), PromptTuningConfig(num_virtual_tokens=3)).eval()
    model.add_adapter("second", PromptTuningConfig(num_virtual_tokens=5))
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path)
    theirs.load_adapter(tmp_path / "second", adapter_name="second")
    ids = torch.randint(3, 128, (1, 6))
    with torch.no_grad():
        for name in ["default", "second"]:
            theirs.set_adapter(name)
            model.set_adapter(name)
            expected = theirs(input_ids=ids).logits[:, -ids.shape[1] :]
            torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_default_adapter_is_saved_at_the_root(tmp_path):
    model = get_peft_model(tiny_model("gpt2"), PromptTuningConfig(num_virtual_tokens=2))
    model.add_adapter("other", PrefixTuningConfig(num_virtual_tokens=3))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "other" / "adapter_config.json").is_file()


def test_delete_and_disable_adapters():
    model = multi_adapter_model("qwen2")
    ids = torch.randint(3, 128, (1, 5))
    with torch.no_grad():
        base = model.base_model(input_ids=ids).logits
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, base)
        with pytest.warns(UserWarning, match="pt was active"):
            model.delete_adapter("pt")
        assert model.active_adapter == "lstm" and "pt" not in model.prompt_encoder
        with pytest.warns(UserWarning, match="is now active"):
            model.delete_adapter("lstm")
            model.delete_adapter("prefix")
        model.delete_adapter("projection")  # the last one: nothing becomes active
        assert model.active_adapter is None
        torch.testing.assert_close(model(input_ids=ids).logits, base)  # no adapters: the bare model


def test_adapter_errors_are_clear(tmp_path):
    model = multi_adapter_model("llama_gqa")
    ids, mask, _ = left_padded_batch(lengths=(3, 2))
    with pytest.raises(
        ValueError, match=r"Unknown adapter 'nope'. Loaded adapters: \['lstm', 'prefix', 'projection', 'pt'\]"
    ):
        model(input_ids=ids, attention_mask=mask, adapter_names=["pt", "nope"])
    with pytest.raises(ValueError, match="adapter_names has 3 entries but the batch has 2 rows"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["pt", "pt", "pt"])
    with pytest.raises(ValueError, match="Unknown adapter 'nope'"):
        model.set_adapter("nope")
    with pytest.raises(ValueError, match="already loaded"):
        model.add_adapter("pt", PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="Invalid adapter name"):
        model.add_adapter("a.b", PromptTuningConfig(num_virtual_tokens=2))
    # an adapter made for another base model is refused, and the loaded ones are untouched
    other = get_peft_model(tiny_model("gpt2"), PrefixTuningConfig(num_virtual_tokens=2))
    other.save_pretrained(tmp_path / "gpt2")
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, adapter_names=["prefix", "pt"]).logits
        with pytest.raises(AdapterError, match="does not fit this base model"):
            model.load_adapter(tmp_path / "gpt2", adapter_name="gpt2")
        assert "gpt2" not in model.peft_config
        after = model(input_ids=ids, attention_mask=mask, adapter_names=["prefix", "pt"]).logits
    assert torch.equal(before, after)


def test_transformers_own_adapter_methods_are_not_reachable_through_the_wrapper():
    model = multi_adapter_model("llama_gqa")
    assert type(model).load_adapter is PeftModel.load_adapter
    for name in ("enable_adapters", "disable_adapters", "get_adapter_state_dict"):
        with pytest.raises(AttributeError, match="bypass softprompt's adapters"):
            getattr(model, name)
    assert model.config is model.base_model.config  # ordinary attributes still forward


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "qwen2"])
def test_the_methods_peft_lacks_mix_per_row_with_every_other_method(arch):
    model = multi_adapter_model(arch)
    model.add_adapter(
        "residual", ResidualPromptTuningConfig(num_virtual_tokens=4, bottleneck_size=8, residual_init="layer_norm")
    )
    model.add_adapter("ulpt", ULPTConfig(num_virtual_tokens=2, low_rank=2))
    model.add_adapter("dept", DePTConfig(num_virtual_tokens=3, offset_length=4, offset_rank=2, offset_init_std=0.05))
    model.eval()
    names = ["dept", "residual", None, "lstm", "ulpt", "prefix", "dept", "projection", "pt"]
    input_ids, attention_mask, rows = left_padded_batch(lengths=(7, 4, 2, 5, 3, 6, 3, 5, 4))
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        mixed = model(input_ids=input_ids, attention_mask=attention_mask, adapter_names=names).logits  # [B, T, V]
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, adapter_names=names, **settings)
        for i, (name, row) in enumerate(zip(names, rows)):
            expected = alone(model, name, lambda row=row: model(input_ids=row[None]).logits[0])
            torch.testing.assert_close(mixed[i, -len(row) :], expected, atol=1e-4, rtol=0)
            greedy = alone(model, name, lambda row=row: model.generate(input_ids=row[None], **settings)[0])
            assert generated[i, -len(greedy) :].tolist() == greedy.tolist(), (name, i)
