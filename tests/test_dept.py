"""DePT: a shorter prompt plus low-rank offsets to the embeddings of the input's first s real tokens. The reference
is the base model run on the prompt and the offset embeddings, one unpadded row at a time; rows past the s-th token,
padding, generated tokens and mixed batches must all agree with it."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig, TrainingArguments

import softprompt
from softprompt import DePTConfig, PeftModel, PromptTuningConfig, get_peft_model
from softprompt.training import TrainConfig, train
from tiny_models import left_padded_batch, tiny_model
from tiny_run import run_config

OFFSET_LENGTH = 5  # shorter than the longest rows, so some tokens get no offset


def dept(arch="llama_gqa", **options):
    torch.manual_seed(1)
    config = DePTConfig(
        num_virtual_tokens=3, offset_length=OFFSET_LENGTH, offset_rank=2, offset_init_std=0.05, **options
    )
    return get_peft_model(tiny_model(arch), config).eval()


def offset_embeddings(model, row: torch.Tensor, name: str = "default") -> torch.Tensor:
    """The row's token embeddings [L, H] with the first s shifted by the adapter's offsets."""
    embeds = model.base_model.get_input_embeddings()(row)
    offsets = model.prompt_encoder[name].input_offsets()  # [s, H]
    count = min(len(row), offsets.shape[0])
    return torch.cat([embeds[:count] + offsets[:count], embeds[count:]])


def reference_logits(model, row: torch.Tensor) -> torch.Tensor:
    """The base model on [prompt; offset embeddings], unpadded: logits of the row's L positions [L, V]."""
    prompt = model.prompt_source.embedding.weight  # [P, H]
    full = torch.cat([prompt, offset_embeddings(model, row)])[None]
    return model.base_model(inputs_embeds=full).logits[0, -len(row) :]


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_forward_equals_the_prompt_before_the_offset_embeddings_run_unpadded(arch):
    model = dept(arch)
    ids, mask, rows = left_padded_batch(lengths=(7, 4, 2))
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            torch.testing.assert_close(batched[i, -len(row) :], reference_logits(model, row), atol=1e-5, rtol=1e-5)
        without = model.prompt_source.lora_embedding_B.clone()
        model.prompt_source.lora_embedding_B.zero_()
        assert (model(input_ids=ids, attention_mask=mask).logits - batched).abs().max() > 1e-3  # the offsets matter
        model.prompt_source.lora_embedding_B.copy_(without)


def test_a_new_adapter_starts_with_no_offsets():
    model = get_peft_model(tiny_model("llama_gqa"), DePTConfig(num_virtual_tokens=3, offset_rank=4))
    assert torch.equal(model.prompt_source.input_offsets(), torch.zeros(256, 48))  # B starts at zero
    assert model.prompt_source.lora_embedding_A.abs().max() <= 4**-0.5  # LoRA's A: U(+-1/sqrt(r))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * 48 + 4 * (256 + 48)


def greedy_by_reference(model, row: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        row = torch.cat([row, reference_logits(model, row)[-1].argmax()[None]])
    return row


def test_generated_tokens_get_the_offsets_of_their_positions_too():
    model = dept()
    steps = 4  # the rows grow past the s-th token while generating
    ids, mask, rows = left_padded_batch(lengths=(3, 2), seed=2)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False)
        for i, row in enumerate(rows):
            expected = greedy_by_reference(model, row, steps)
            assert torch.equal(batched[i, -steps:], expected[-steps:])
            alone = model.generate(input_ids=row[None], max_new_tokens=steps, do_sample=False)[0]  # no padding
            assert torch.equal(alone, expected)


def test_a_mixed_batch_gives_each_row_its_adapters_offsets_or_none():
    model = dept()
    torch.manual_seed(2)
    model.add_adapter("plain", PromptTuningConfig(num_virtual_tokens=4))
    model.add_adapter("wide", DePTConfig(num_virtual_tokens=2, offset_length=7, offset_rank=3, offset_init_std=0.05))
    names = ["default", "plain", None, "wide"]
    ids, mask, rows = left_padded_batch(lengths=(7, 5, 4, 6), seed=4)
    settings = dict(max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask, adapter_names=names).logits
        generated = model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, **settings)
        scores = model.score_continuations(ids, mask, [[5], [6, 7]], adapter_names=names)
        for i, (row, name) in enumerate(zip(rows, names)):
            alone = model(input_ids=row[None], adapter_names=[name]).logits[0]
            torch.testing.assert_close(mixed[i, -len(row) :], alone, atol=1e-5, rtol=1e-5)
            alone_ids = model.generate(input_ids=row[None], adapter_names=[name], **settings)[0]
            assert torch.equal(generated[i, -3:], alone_ids[-3:])
            alone_scores = model.score_continuations(row[None], torch.ones_like(row[None]), [[5], [6, 7]], [name])
            torch.testing.assert_close(scores[i], alone_scores[0], atol=1e-4, rtol=1e-5)


def test_an_encoder_sees_the_offsets_on_its_first_tokens():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    bert = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    options = dict(task_type="SEQ_CLS", num_virtual_tokens=3, offset_length=OFFSET_LENGTH, offset_rank=2)
    model = get_peft_model(bert, DePTConfig(**options, offset_init_std=0.05)).eval()
    rows = [torch.randint(5, 128, (n,), generator=torch.Generator().manual_seed(n)) for n in (7, 3)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # right-padded with 0
    mask = (torch.arange(ids.shape[1]) < torch.tensor([7, 3])[:, None]).long()
    with torch.no_grad():
        hidden = model.run_encoder(bert.bert, "default", None, ids, None, mask).last_hidden_state  # [B, P+L, H]
        for i, row in enumerate(rows):
            full = torch.cat([model.prompt_source.embedding.weight, offset_embeddings(model, row)])[None]
            reference = bert.bert(inputs_embeds=full).last_hidden_state[0]
            torch.testing.assert_close(hidden[i, : 3 + len(row)], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "FEATURE_EXTRACTION"])
def test_a_decoder_classifier_and_feature_extractor_see_the_offsets_too(task_type):
    torch.manual_seed(0)
    base = tiny_model("llama_gqa")
    if task_type == "SEQ_CLS":
        base.config.num_labels = 3
        base = AutoModelForSequenceClassification.from_config(base.config, attn_implementation="eager").eval()
    else:
        base = base.model  # the backbone: hidden states
    options = dict(num_virtual_tokens=3, offset_length=OFFSET_LENGTH, offset_rank=2, offset_init_std=0.05)
    model = get_peft_model(base, DePTConfig(task_type=task_type, **options)).eval()
    ids, mask, rows = left_padded_batch(lengths=(7, 4, 2))
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask)
        for i, row in enumerate(rows):
            full = torch.cat([model.prompt_source.embedding.weight, offset_embeddings(model, row)])[None]
            reference = base(inputs_embeds=full)  # the last real token classifies; states of the row's tokens
            if task_type == "SEQ_CLS":
                torch.testing.assert_close(batched.logits[i], reference.logits[0], atol=1e-5, rtol=1e-5)
            else:
                got, want = batched.last_hidden_state[i, -len(row) :], reference.last_hidden_state[0, -len(row) :]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_file_holds_prompt_and_offsets_and_loads_back_equal(tmp_path):
    model = dept()
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == {
        "prompt_embeddings",
        "lora_embedding_A",
        "lora_embedding_B",
    }
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "DEPT" and saved["offset_length"] == OFFSET_LENGTH
    assert "PEFT has no method DEPT" in (tmp_path / "README.md").read_text()
    loaded = PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path).eval()
    ids, mask, _ = left_padded_batch()
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
        )


def test_the_offsets_train_at_their_own_learning_rate(tmp_path):
    model = dept(offset_learning_rate=2e-4)
    groups = model.parameter_groups(0.3)
    assert [(group["lr"], len(group["params"])) for group in groups] == [(0.3, 1), (2e-4, 2)]
    trainer = softprompt.Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "hf"), report_to=[]))
    assert {group["lr"] for group in trainer.create_optimizer().param_groups} == {2e-4, trainer.args.learning_rate}
    # softprompt's own loop: offsets that start at zero and take a tiny rate barely move; the prompt does
    options = {"num_virtual_tokens": 3, "offset_rank": 2, "offset_length": 8, "offset_learning_rate": 1e-9}
    train(TrainConfig.from_dict(run_config(tmp_path, "dept", epochs=1, method_options=options)))
    tensors = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert 0 < tensors["lora_embedding_B"].abs().max() < 1e-6
