"""The correctness points where PEFT 0.21 is wrong, for every method on every architecture."""

import inspect

import pytest
import torch

from softprompt import get_peft_model
from tiny_models import ARCHITECTURES, METHOD_CONFIGS, METHODS, OWN_LOSS, left_padded_batch, tiny_model, trainable

CASES = [(method, arch) for method in METHODS for arch in ARCHITECTURES]


def wrapped(method, arch, seed=0):
    torch.manual_seed(seed + 1)
    return get_peft_model(tiny_model(arch, seed), METHOD_CONFIGS[method]())


@pytest.mark.parametrize("method,arch", CASES)
def test_only_the_prompt_trains_and_the_base_stays_bit_identical(method, arch):
    model = wrapped(method, arch)
    before = {name: p.detach().clone() for name, p in model.base_model.named_parameters()}
    prompt_before = [p.detach().clone() for p in trainable(model)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    input_ids, attention_mask, _ = left_padded_batch()
    model.train()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
    loss.backward()
    assert all(p.grad is None for p in model.base_model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable(model))
    optimizer.step()
    for name, p in model.base_model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(prompt_before, trainable(model)))


@pytest.mark.parametrize("method,arch", CASES)
def test_left_padded_batch_equals_each_example_alone(method, arch):
    model = wrapped(method, arch).eval()
    input_ids, attention_mask, rows = left_padded_batch()
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
        assert batched.shape == (*input_ids.shape, model.base_model.config.vocab_size)
        for i, row in enumerate(rows):
            alone = model(input_ids=row[None]).logits[0]  # [n, V]
            torch.testing.assert_close(batched[i, -len(row) :], alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method,arch", [(m, a) for m, a in CASES if m not in OWN_LOSS])
def test_loss_ignores_virtual_and_masked_positions(method, arch):
    model = wrapped(method, arch).eval()
    input_ids, attention_mask, rows = left_padded_batch(lengths=(6, 6))
    labels = input_ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        # reference: our own logits, shifted by hand; only rows that predict a labelled token count
        logits = output.logits
        reference = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
    torch.testing.assert_close(output.loss, reference)


def greedy_by_forward(model, ids, steps):
    """Reference decoding: the full sequence through forward() at every step, no cache."""
    for _ in range(steps):
        with torch.no_grad():
            next_token = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
    return ids


@pytest.mark.parametrize("method,arch", CASES)
def test_generate_matches_forward_differs_from_base_and_batches(method, arch):
    model = wrapped(method, arch).eval()
    input_ids, attention_mask, rows = left_padded_batch(seed=3)
    steps = 6
    settings = dict(max_new_tokens=steps, do_sample=False, eos_token_id=None)
    batched = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    assert batched.shape == (input_ids.shape[0], input_ids.shape[1] + steps)
    differs_from_base = False
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], **settings)[0]
        reference = greedy_by_forward(model, row[None], steps)[0]
        assert torch.equal(alone, reference), "cached generate departs from forward()"
        assert torch.equal(batched[i, -len(alone) :], alone), "left-padded batch generates differently"
        base = model.base_model.generate(input_ids=row[None], attention_mask=torch.ones_like(row[None]), **settings)[0]
        differs_from_base |= not torch.equal(base, alone)
    assert differs_from_base, "the prompt has no effect on generation"


@pytest.mark.parametrize("method,arch", [(m, "llama_gqa") for m in METHODS] + [(m, "bloom") for m in METHODS])
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(method, arch, reentrant):
    input_ids, attention_mask, _ = left_padded_batch()
    grads = []
    for checkpointing in (False, True):
        model = wrapped(method, arch)
        model.train()  # no dropout in the tiny configs, so train mode is deterministic
        if checkpointing and reentrant:
            with pytest.warns(UserWarning, match="use_reentrant=False"):
                model.gradient_checkpointing_enable({"use_reentrant": True})
        elif checkpointing:
            model.gradient_checkpointing_enable()
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.base_model.modules())
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
        loss.backward()
        grads.append([p.grad.clone() for p in trainable(model)])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method,arch", [(m, a) for m in METHODS for a in ("llama_gqa", "gpt2")])
def test_logits_to_keep_gives_the_same_loss_and_gradients(method, arch):
    """The LM head on the last K positions only: same loss as the full head when labels sit at the end."""
    input_ids, attention_mask, _ = left_padded_batch(lengths=(7, 5, 3))
    labels = torch.full_like(input_ids, -100)
    labels[:, -2:] = input_ids[:, -2:]
    results = []
    for keep in (0, 3):
        model = wrapped(method, arch)
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, logits_to_keep=keep)
        output.loss.backward()
        results.append((output, [p.grad for p in trainable(model)]))
    (full, full_grads), (kept, kept_grads) = results
    assert kept.logits.shape[1] == 3
    torch.testing.assert_close(kept.logits, full.logits[:, -3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept.loss, full.loss, atol=1e-6, rtol=1e-6)
    # multitask's factors' gradients multiply two summations' rounding; ULPT's scale and shift sum over every token
    rtol = 1e-4 if method in ("multitask", "ulpt") else 1e-5
    for a, b in zip(full_grads, kept_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=rtol)
    with pytest.raises(ValueError, match="raise logits_to_keep"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, logits_to_keep=2)


def concatenated_reference(model, input_ids, attention_mask):
    """The textbook embedding injection: [virtual][pad][text] embeddings in one sequence, positions from the mask."""
    base = model.base_model
    table = model.prompt_table()
    batch, num_virtual = input_ids.shape[0], table.shape[0]
    embeds = torch.cat([table.unsqueeze(0).expand(batch, -1, -1), base.get_input_embeddings()(input_ids)], dim=1)
    mask = torch.cat([torch.ones(batch, num_virtual, dtype=torch.long), attention_mask], dim=1)
    kwargs = {}
    if "position_ids" in inspect.signature(base.forward).parameters:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return base(inputs_embeds=embeds, attention_mask=mask, **kwargs).logits[:, num_virtual - 1 :]  # [B, 1+L, V]


@pytest.mark.parametrize(
    "method,arch",
    [(m, a) for m in ("prompt_tuning", "p_tuning_mlp", "p_tuning_lstm", "multitask") for a in ARCHITECTURES],
)
def test_shared_prompt_pass_equals_prepending_embeddings_to_every_row(method, arch):
    """The virtual tokens run once per batch; logits, loss and gradients equal the concatenated reference."""
    model = wrapped(method, arch).eval()
    input_ids, attention_mask, _ = left_padded_batch()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()
    ours = [p.grad.clone() for p in trainable(model)]
    model.zero_grad()
    reference = concatenated_reference(model, input_ids, attention_mask)  # [B, 1+L, V]
    real = attention_mask.bool()
    torch.testing.assert_close(output.logits[real], reference[:, 1:][real], atol=1e-5, rtol=1e-5)
    targets = torch.cat([labels, torch.full_like(labels[:, :1], -100)], dim=1)  # row t predicts token t
    loss = torch.nn.functional.cross_entropy(reference.reshape(-1, reference.shape[-1]), targets.reshape(-1))
    torch.testing.assert_close(output.loss, loss, atol=1e-6, rtol=1e-5)
    loss.backward()
    for a, b in zip(ours, [p.grad for p in trainable(model)]):
        # float32 rounding of two summation orders: errors scale with the gradient's largest entry (up to ~10 here)
        torch.testing.assert_close(a, b, atol=2e-6 * max(1.0, b.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("method,arch", CASES)
def test_cached_continuation_scores_equal_full_forward_scores(method, arch):
    """Scoring labels from the inputs' cache equals running input + label through forward() row by row."""
    model = wrapped(method, arch).eval()
    input_ids, attention_mask, rows = left_padded_batch()
    continuations = [[5], [7, 9, 11], [13, 4]]
    scores = model.score_continuations(input_ids, attention_mask, continuations)
    for i, row in enumerate(rows):
        for k, tokens in enumerate(continuations):
            ids = torch.cat([row, torch.tensor(tokens)])[None]
            with torch.no_grad():
                log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
            reference = sum(log_probs[len(row) - 1 + j, t] for j, t in enumerate(tokens))
            torch.testing.assert_close(scores[i, k], reference, atol=1e-4, rtol=1e-5)
