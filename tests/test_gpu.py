"""On a CUDA device (skipped without one), in float32 and bfloat16: every task type x method runs with the model and
its inputs on the GPU, agrees with the same model run on the CPU in float32 to the dtype's precision, keeps padded
rows equal to rows alone, trains the prompt only, generates what forward scores, mixes adapters per row, and saves
and loads exactly. The default device stays the CPU, so a tensor the library makes on the wrong device fails here.

Run on a GPU machine: `pytest tests/test_gpu.py`; SOFTPROMPT_TEST_DEVICE names another device (e.g. "mps", or "cpu"
to check the tests themselves). The CPU tests of each family stay the reference for exactness.
"""

import copy
import os

import pytest
import torch

import test_encoders
import test_seq2seq
import test_seq_cls
from softprompt import PeftModel, Predictor, get_peft_model
from test_correctness import greedy_by_forward
from test_multi_adapter import LENGTHS, ROWS, alone, multi_adapter_model
from tiny_models import (
    METHOD_CONFIGS,
    OWN_LOSS,
    left_padded_batch,
    tiny_model,
    trainable,
    without_dropout,
)

CUDA = os.environ.get("SOFTPROMPT_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.skipif(CUDA == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]
# a dtype and how far its outputs may stray from the CPU's float32 ones: |got - expected| / |expected| (L2 norms)
DTYPES = {"float32": (torch.float32, 1e-4), "bfloat16": (torch.bfloat16, 0.1)}  # bfloat16: ~3-6% seen on tiny models


def assert_near(got, expected, tolerance, what=""):
    """The relative L2 error of `got` against `expected`, both read on the CPU in float32, is under `tolerance`."""
    got, expected = got.detach().float().cpu(), expected.detach().float().cpu()
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    error = ((got - expected).norm() / expected.norm().clamp(min=1e-6)).item()
    assert error <= tolerance, f"{what}: relative error {error:.3g} (allowed {tolerance:.3g})"


@pytest.fixture(autouse=True)
def no_tf32():
    """cuDNN runs float32 LSTMs (p-tuning's encoder) in TF32 by default, ~1e-3 off the CPU: compare true float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on_gpu(model, dtype):
    """A copy of the CPU model on the GPU in `dtype` (the prompt too, as `.to()` gives a user)."""
    return copy.deepcopy(model).to(CUDA, dtype)


def to_gpu(batch: dict) -> dict:
    return {key: value.to(CUDA) for key, value in batch.items()}


# ---- causal LMs ---------------------------------------------------------------------------------------------
CAUSAL = [(method, arch) for method in METHOD_CONFIGS for arch in ("llama_gqa", "gpt2")]


def causal(method, arch):
    torch.manual_seed(1)
    model = get_peft_model(tiny_model(arch), METHOD_CONFIGS[method]()).eval()
    with torch.no_grad():
        for p in trainable(model):
            p.normal_(0, 1)  # a prompt far from its start, so that it matters
    return model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method,arch", CAUSAL)
def test_causal_lm_on_the_gpu_equals_the_cpu_and_its_rows_alone(method, arch, dtype):
    dtype, tolerance = DTYPES[dtype]
    reference = causal(method, arch)
    model = on_gpu(reference, dtype)
    input_ids, attention_mask, rows = left_padded_batch()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
        got = model(**to_gpu(dict(input_ids=input_ids, attention_mask=attention_mask))).logits
        assert got.device.type == torch.device(CUDA).type and got.dtype == dtype
        for i, row in enumerate(rows):  # real positions only: padded ones are free to differ
            assert_near(got[i, -len(row) :], expected[i, -len(row) :], tolerance, f"row {i} against the CPU")
            alone_logits = model(input_ids=row[None].to(CUDA)).logits[0]
            assert_near(got[i, -len(row) :], alone_logits, tolerance, f"row {i} padded against alone")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method,arch", CAUSAL)
def test_causal_lm_generate_on_the_gpu_equals_step_by_step_forward(method, arch, dtype):
    model = on_gpu(causal(method, arch), DTYPES[dtype][0])
    settings = dict(max_new_tokens=5, do_sample=False, eos_token_id=None)
    _, _, rows = left_padded_batch(seed=3)
    for row in rows:
        row = row[None].to(CUDA)
        generated = model.generate(input_ids=row, **settings)[0]
        assert torch.equal(generated, greedy_by_forward(model, row, 5)[0]), "cached generate departs from forward()"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method,arch", CAUSAL)
def test_causal_lm_trains_the_prompt_only_on_the_gpu(method, arch, dtype):
    dtype, tolerance = DTYPES[dtype]
    reference = without_dropout(causal(method, arch)).train()  # train mode: cuDNN's LSTM backward needs it
    model = copy.deepcopy(reference).to(CUDA)
    model.base_model.to(dtype)  # a frozen base in the dtype, the trained prompt kept in float32 (as PEFT does)
    frozen = {name: p.detach().clone() for name, p in model.base_model.named_parameters()}
    input_ids, attention_mask, _ = left_padded_batch()
    batch = dict(
        input_ids=input_ids, attention_mask=attention_mask, labels=input_ids.masked_fill(attention_mask == 0, -100)
    )
    expected = reference(**batch).loss
    expected.backward()
    loss = model(**to_gpu(batch)).loss
    loss.backward()
    assert_near(loss, expected, tolerance, "loss")
    for (name, p), (_, p_cpu) in zip(
        model.prompt_source.named_parameters(), reference.prompt_source.named_parameters()
    ):
        if p_cpu.grad is None:
            assert p.grad is None, name  # CPT's frozen example embeddings
            continue
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        assert_near(p.grad, p_cpu.grad, tolerance * 4, f"gradient of {name}")
    torch.optim.AdamW(trainable(model), lr=1e-2).step()
    assert all(p.grad is None and torch.equal(p, frozen[name]) for name, p in model.base_model.named_parameters())
    if method not in OWN_LOSS:
        assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_adapters_per_row_on_the_gpu(dtype):
    dtype, tolerance = DTYPES[dtype]
    model = on_gpu(multi_adapter_model("llama_gqa"), dtype)
    input_ids, attention_mask, rows = left_padded_batch(lengths=LENGTHS)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        mixed = model(**to_gpu(dict(input_ids=input_ids, attention_mask=attention_mask)), adapter_names=ROWS).logits
        for i, (name, row) in enumerate(zip(ROWS, rows)):
            expected = alone(model, name, lambda row=row: model(input_ids=row[None].to(CUDA)).logits[0])
            assert_near(mixed[i, -len(row) :], expected, tolerance, f"row {i} ({name})")
    if dtype == torch.float32:  # greedy choices of a padded batch and of a row alone may part at bfloat16's ties
        generated = model.generate(
            **to_gpu(dict(input_ids=input_ids, attention_mask=attention_mask)), adapter_names=ROWS, **settings
        )
        for i, (name, row) in enumerate(zip(ROWS, rows)):
            expected = alone(model, name, lambda row=row: model.generate(input_ids=row[None].to(CUDA), **settings)[0])
            assert generated[i, -len(expected) :].tolist() == expected.tolist(), (name, i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_load_on_the_gpu_are_exact(dtype, tmp_path):
    dtype = DTYPES[dtype][0]
    model = on_gpu(causal("prefix_tuning", "llama_gqa"), dtype)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("llama_gqa").to(CUDA, dtype), tmp_path).eval()
    for (name, p), (_, q) in zip(model.prompt_source.named_parameters(), loaded.prompt_source.named_parameters()):
        assert q.device.type == torch.device(CUDA).type and torch.equal(p.to(q.dtype), q), name
    input_ids, attention_mask, _ = left_padded_batch()
    batch = to_gpu(dict(input_ids=input_ids, attention_mask=attention_mask))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


# ---- encoder-decoders ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch,method", test_seq2seq.CASES)
def test_seq2seq_on_the_gpu_equals_the_cpu_generates_what_forward_scores_and_trains(arch, method, dtype):
    dtype, tolerance = DTYPES[dtype]
    reference = test_seq2seq.wrapped(arch, method)
    model = on_gpu(reference, dtype)
    ids, mask, rows = test_seq2seq.right_padded((7, 4, 2))
    labels, label_mask, targets = test_seq2seq.labels_for((3, 5, 2))
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels, decoder_attention_mask=label_mask)
    with torch.no_grad():
        expected = reference(**batch).logits  # [B, T, V]
        got = model(**to_gpu(batch)).logits
        for i, (row, target) in enumerate(zip(rows, targets)):
            assert_near(got[i, : len(target)], expected[i, : len(target)], tolerance, f"row {i} against the CPU")
            alone_logits = model(input_ids=row[None].to(CUDA), labels=target[None].to(CUDA)).logits[0]
            assert_near(got[i, : len(target)], alone_logits, tolerance, f"row {i} padded against alone")
    generated = model.generate(**to_gpu(dict(input_ids=ids, attention_mask=mask)), max_new_tokens=4, do_sample=False)
    start = model.base_model.config.decoder_start_token_id
    for i, row in enumerate(rows if dtype == torch.float32 else rows[:1]):  # padded rows may part at bfloat16's ties
        decoder = torch.tensor([[start]], device=CUDA)
        with torch.no_grad():
            for _ in range(4):
                logits = model(input_ids=row[None].to(CUDA), decoder_input_ids=decoder).logits[:, -1]
                decoder = torch.cat([decoder, logits.argmax(-1, keepdim=True)], dim=1)
        if dtype == torch.float32:
            assert torch.equal(generated[i, : decoder.shape[1]], decoder[0]), (generated[i], decoder[0])
        else:
            alone_generated = model.generate(input_ids=row[None].to(CUDA), max_new_tokens=4, do_sample=False)[0]
            assert torch.equal(alone_generated[: decoder.shape[1]], decoder[0]), (alone_generated, decoder[0])
    model.train()
    model.base_model.to(dtype)
    loss = model(**to_gpu(batch)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.prompt_source.parameters())
    assert all(p.grad is None for p in model.base_model.parameters())


# ---- sequence classification: encoders and decoder heads ---------------------------------------------------
SEQ_CLS = [("encoder", arch, method) for arch in test_encoders.ENCODERS for method in test_encoders.METHODS]
SEQ_CLS += [("decoder", arch, method) for arch in test_seq_cls.ARCHS for method in test_seq_cls.METHODS]


def classifier(family, arch, method):
    if family == "encoder":
        return test_encoders.wrapped(method, arch), test_encoders.right_padded()
    model = test_seq_cls.wrapped(method, arch).eval()
    return model, left_padded_batch()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family,arch,method", SEQ_CLS)
def test_sequence_classification_on_the_gpu_equals_the_cpu_and_trains_prompt_and_head(family, arch, method, dtype):
    dtype, tolerance = DTYPES[dtype]
    reference, (ids, mask, rows) = classifier(family, arch, method)
    model = on_gpu(reference, dtype)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits  # [B, labels]
        got = model(**to_gpu(dict(input_ids=ids, attention_mask=mask))).logits
        assert_near(got, expected, tolerance, "logits against the CPU")
        for i, row in enumerate(rows):
            assert_near(
                got[i], model(input_ids=row[None].to(CUDA)).logits[0], tolerance, f"row {i} padded against alone"
            )
    model.train()
    labels = torch.tensor([0, 2, 1][: len(rows)])
    loss = model(**to_gpu(dict(input_ids=ids, attention_mask=mask, labels=labels))).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.prompt_source.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["default"].parameters())
    assert all(p.grad is None for p in model.base_model.parameters())


# ---- the Predictor on the GPU -------------------------------------------------------------------------------
TEXTS = ["my order never arrived", "thanks for the quick help", "@Shop3 wifi down all day", "love the new menu"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_predictor_on_the_gpu_gives_the_cpu_probabilities(trained_adapters, dtype):
    tolerance = DTYPES[dtype][1]
    names = ["complaints", "yesno", "ptuning", "yesno"]
    on_cpu = Predictor.from_pretrained(trained_adapters, device="cpu", dtype="float32")
    gpu = Predictor.from_pretrained(trained_adapters, device=CUDA, dtype=dtype)
    expected = [on_cpu.probabilities([text], name)[0] for text, name in zip(TEXTS, names)]
    mixed = gpu.classify(TEXTS, adapter=names)
    for text, name, row, probabilities in zip(TEXTS, names, mixed, expected):
        assert_near(torch.tensor(list(row["probabilities"].values())), probabilities, tolerance, f"{name}: {text}")
    texts = gpu.generate(TEXTS[:2], adapter="complaints", max_new_tokens=4)
    assert texts == on_cpu.generate(TEXTS[:2], adapter="complaints", max_new_tokens=4) or dtype == "bfloat16"


# ---- a prefix started from a text, computed on the GPU ------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_text_started_prefix_computed_on_the_gpu_reads_the_text_first(dtype, monkeypatch):
    from softprompt import PrefixTuningConfig
    from softprompt import base_models as models

    dtype, tolerance = DTYPES[dtype]
    text = [5, 6, 7, 8]  # what the stub tokenizer reads the init text as
    monkeypatch.setattr(
        models, "load_tokenizer", lambda name, **kwargs: lambda text_, **options: {"input_ids": list(text)}
    )

    def config():
        return PrefixTuningConfig(
            num_virtual_tokens=4, prefix_init_text="a task description", tokenizer_name_or_path="stub"
        )

    on_cpu = get_peft_model(tiny_model("llama_gqa"), config())
    model = get_peft_model(tiny_model("llama_gqa").to(CUDA, dtype), config()).eval()  # the table computed there
    table = model.prompt_source.embedding.weight
    assert table.dtype == torch.float32  # the trained prefix stays in float32 over a bfloat16 model
    assert_near(table, on_cpu.prompt_source.embedding.weight, tolerance, "the table against the CPU's")
    row = torch.tensor([[20, 21, 22]], device=CUDA)
    base = tiny_model("llama_gqa").to(CUDA, dtype).eval()
    with torch.no_grad():
        expected = base(input_ids=torch.cat([torch.tensor([text], device=CUDA), row], 1)).logits[:, len(text) :]
        assert_near(model(input_ids=row).logits, expected, tolerance, "against the base reading the text first")
