"""Hugging Face's Trainer on softprompt models: transformers.Trainer trains the prompt of every method and task
type with the base frozen; softprompt.Trainer's checkpoints hold the adapters only (PEFT's files), resume
exactly and give load_best_model_at_end the best checkpoint's adapter.

A task type is one entry of TASKS (base model, data rows, methods): a new wrapper is one more entry.
"""

import dataclasses
import json
import os
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    Seq2SeqTrainingArguments,
    T5Config,
)

from softprompt import PeftModel, PrefixTuningConfig, Seq2SeqTrainer, Trainer, get_peft_model
from tiny_models import CONFIGS, METHOD_CONFIGS, VOCAB, tiny_model

LABELS, LENGTH = 3, 8
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "prompt_source.safetensors"}
TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}


def decoder_classifier():
    config = CONFIGS["llama_gqa"]()
    config.pad_token_id, config.num_labels, config.initializer_range = 0, LABELS, 0.2
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def bert_classifier(auto_class=AutoModelForSequenceClassification):
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    config.num_labels, config.initializer_range = LABELS, 0.2
    return auto_class.from_config(config, attn_implementation="eager")


def t5():
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        initializer_range=0.2,
    )
    return AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager")


def lm_rows(count, seed=0):
    """Unpadded rows of LENGTH tokens; the labels are the tokens themselves."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(3, VOCAB, (LENGTH,), generator=generator)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": ids.clone()})
    return rows


def class_rows(count, seed=0):
    rows = lm_rows(count, seed)
    for i, row in enumerate(rows):
        row["labels"] = torch.tensor(i % LABELS)
    return rows


def token_rows(count, seed=0):
    """One class per token."""
    rows = lm_rows(count, seed)
    for row in rows:
        row["labels"] = row["labels"] % LABELS
    return rows


def seq2seq_rows(count, seed=0):
    """LENGTH input tokens, LENGTH // 2 target tokens."""
    rows = lm_rows(count, seed)
    for row in rows:
        row["labels"] = row["labels"][: LENGTH // 2].flip(0)
    return rows


SEQ_CLS_METHODS = ["prompt_tuning", "p_tuning_mlp", "p_tuning_lstm", "prefix_tuning", "prefix_projection", "multitask"]
SEQ_CLS_METHODS += ["residual", "ulpt", "dept"]  # the methods PEFT lacks
SEQ2SEQ_METHODS = ["prompt_tuning", "p_tuning_mlp", "p_tuning_lstm", "prefix_tuning", "prefix_projection", "multitask"]
SEQ2SEQ_METHODS += ["residual", "ulpt", "dept"]
# task type -> (base model, data rows, methods); CPT is for causal LMs only
TASKS = {
    "CAUSAL_LM": (lambda: tiny_model("llama_gqa"), lm_rows, list(METHOD_CONFIGS)),
    "SEQ_CLS-llama": (decoder_classifier, class_rows, SEQ_CLS_METHODS),
    "SEQ_CLS-bert": (bert_classifier, class_rows, SEQ_CLS_METHODS),
    "TOKEN_CLS-bert": (
        lambda: bert_classifier(AutoModelForTokenClassification),
        token_rows,
        ["prompt_tuning", "prefix_tuning"],
    ),
    "SEQ_2_SEQ_LM-t5": (t5, seq2seq_rows, SEQ2SEQ_METHODS),
}
CASES = [(task, method) for task, (_, _, methods) in TASKS.items() for method in methods]


def make_model(task, method, prompt_seed=1):
    """The same frozen base every time (seed 0); `prompt_seed` draws the new prompt (and head copy)."""
    torch.manual_seed(0)
    base = TASKS[task][0]()
    config = METHOD_CONFIGS[method]()
    if task != "CAUSAL_LM":
        config = dataclasses.replace(config, task_type=task.split("-")[0])
    torch.manual_seed(prompt_seed)
    return get_peft_model(base, config)


def rows(task, count, seed=0):
    return TASKS[task][1](count, seed)


def arguments(output_dir, **overrides) -> Seq2SeqTrainingArguments:
    """TrainingArguments for either trainer (Seq2SeqTrainer needs the seq2seq subclass)."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        learning_rate=0.05,
        max_steps=4,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return Seq2SeqTrainingArguments(**{**settings, **overrides})


def trained_state(model) -> dict[str, torch.Tensor]:
    """Everything training changes: every adapter's prompt source, and a classifier's head copies."""
    state = {f"prompt_encoder.{k}": v for k, v in model.prompt_encoder.state_dict().items()}
    if hasattr(model, "heads"):
        state.update({f"heads.{k}": v for k, v in model.heads.state_dict().items()})
    return {k: v.detach().clone() for k, v in state.items()}


def assert_same(actual: dict, expected: dict, atol=1e-6):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("task, method", CASES)
def test_the_unmodified_trainer_trains_the_prompt_and_leaves_the_base_frozen(task, method, tmp_path):
    model = make_model(task, method)
    base_before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    before = trained_state(model)
    trainer = transformers.Trainer(
        model=model, args=arguments(tmp_path), train_dataset=rows(task, 8), eval_dataset=rows(task, 4, seed=1)
    )
    trainer.train()
    after = dict(model.named_parameters())
    for name, value in trained_state(model).items():
        if name in after and after[name].requires_grad:  # CPT keeps its example embeddings, ULPT its projection
            assert not torch.equal(value, before[name]), f"{name} did not train"
    for name, value in model.base_model.state_dict().items():
        assert torch.equal(value, base_before[name]), f"the frozen {name} changed"
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """The loss is a per-batch mean (accepts_loss_kwargs=False): the Trainer divides it by the accumulation steps."""
    results = []
    for batch, steps in [(4, 1), (2, 2)]:
        model = make_model("CAUSAL_LM", "prompt_tuning")
        args = arguments(
            tmp_path / str(batch),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=steps,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            max_grad_norm=0,
        )
        transformers.Trainer(model=model, args=args, train_dataset=lm_rows(8)).train()
        results.append(trained_state(model))
    assert_same(results[1], results[0])


@pytest.mark.parametrize(
    "task, method, trainer_class",
    [
        ("CAUSAL_LM", "prefix_projection", Trainer),
        ("CAUSAL_LM", "multitask", Seq2SeqTrainer),
        ("SEQ_CLS-llama", "prompt_tuning", Trainer),
        ("SEQ_CLS-bert", "p_tuning_lstm", Trainer),
        ("SEQ_2_SEQ_LM-t5", "prompt_tuning", Seq2SeqTrainer),
    ],
)
def test_checkpoints_hold_the_adapter_files_only(task, method, trainer_class, tmp_path):
    model = make_model(task, method)
    trainer = trainer_class(
        model=model,
        args=arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=rows(task, 8),
    )
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert set(os.listdir(checkpoint)) == ADAPTER_FILES | TRAINER_FILES  # no model.safetensors
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert len(optimizer_state) == len([p for p in model.parameters() if p.requires_grad])  # the prompt's only
    # the files save_pretrained writes (PEFT's format), and they load for inference
    model.save_pretrained(tmp_path / "saved", include_prompt_source=True)
    for name in ("adapter_model.safetensors", "prompt_source.safetensors"):
        assert_same(load_file(checkpoint / name), load_file(tmp_path / "saved" / name), atol=0)
    assert json.loads((checkpoint / "adapter_config.json").read_text()) == json.loads(
        (tmp_path / "saved" / "adapter_config.json").read_text()
    )
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(TASKS[task][0](), checkpoint).eval()
    batch = transformers.default_data_collator(rows(task, 3, seed=2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model.eval()(**batch).logits, atol=1e-5, rtol=0)
    trainer.save_model()  # the final save: the adapter folder in output_dir
    assert ADAPTER_FILES <= set(os.listdir(tmp_path)) and "model.safetensors" not in os.listdir(tmp_path)


RESUME_CASES = [("CAUSAL_LM", method) for method in METHOD_CONFIGS] + [
    ("SEQ_CLS-llama", "prefix_tuning"),
    ("SEQ_CLS-bert", "prefix_projection"),
    ("SEQ_2_SEQ_LM-t5", "p_tuning_lstm"),
    ("TOKEN_CLS-bert", "prefix_tuning"),
]


@pytest.mark.parametrize("task, method", RESUME_CASES)
def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(task, method, tmp_path):
    """6 steps straight vs. the same run stopped at checkpoint-3 (mid-epoch) and resumed on a fresh model."""
    straight = make_model(task, method)
    args = dict(max_steps=6, save_strategy="steps", save_steps=3)
    Trainer(model=straight, args=arguments(tmp_path / "straight", **args), train_dataset=rows(task, 8)).train()
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-6")  # as if the run had stopped after checkpoint-3
    resumed = make_model(task, method, prompt_seed=2)  # another start: everything comes from the checkpoint
    trainer = Trainer(model=resumed, args=arguments(tmp_path / "resumed", **args), train_dataset=rows(task, 8))
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6
    assert_same(trained_state(resumed), trained_state(straight))
    # resumed from the full source (p-tuning's encoder), which then trained on
    at_checkpoint = load_file(tmp_path / "straight" / "checkpoint-3" / "prompt_source.safetensors")
    assert at_checkpoint.keys() == resumed.prompt_source.state_dict().keys()
    assert any(not torch.equal(v, resumed.prompt_source.state_dict()[k]) for k, v in at_checkpoint.items())


BEST_CASES = [("CAUSAL_LM", method) for method in METHOD_CONFIGS] + [
    ("SEQ_CLS-llama", "p_tuning_lstm"),
    ("SEQ_CLS-bert", "prefix_tuning"),
    ("SEQ_2_SEQ_LM-t5", "prefix_projection"),
]


@pytest.mark.parametrize("task, method", BEST_CASES)
def test_load_best_model_at_end_restores_the_best_checkpoints_adapter(task, method, tmp_path):
    model = make_model(task, method)
    scores = iter([1.0, 3.0, 2.0])  # epoch 2 of 3 is the best
    args = arguments(
        tmp_path,
        max_steps=-1,
        num_train_epochs=3,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows(task, 8),
        eval_dataset=rows(task, 4, seed=1),
        compute_metrics=lambda _: {"score": next(scores)},
    )
    trainer.train()
    best, last = tmp_path / "checkpoint-8", tmp_path / "checkpoint-12"  # 4 steps per epoch
    assert trainer.state.best_model_checkpoint == str(best)
    assert_same(dict(model.prompt_source.state_dict()), load_file(best / "prompt_source.safetensors"), atol=0)
    model.save_pretrained(tmp_path / "final")
    assert_same(
        load_file(tmp_path / "final" / "adapter_model.safetensors"),
        load_file(best / "adapter_model.safetensors"),
        atol=0,
    )
    last_table = load_file(last / "adapter_model.safetensors")["prompt_embeddings"]
    assert not torch.equal(last_table, load_file(best / "adapter_model.safetensors")["prompt_embeddings"])


def two_adapter_model(prompt_seed=1):
    """ "default" (prompt tuning) and the active "other" (prefix projection)."""
    model = make_model("CAUSAL_LM", "prompt_tuning", prompt_seed)
    model.add_adapter("other", PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16))
    model.set_adapter("other")
    return model


def test_the_active_adapter_trains_and_checkpoints_hold_every_adapter(tmp_path):
    """As PEFT's Trainer path: checkpoints save all adapters ("default" at the top, others in sub-folders);
    resuming restores each in place and the active one trains on."""
    straight = two_adapter_model()
    default_before = dict(straight.prompt_encoder["default"].state_dict())
    args = dict(max_steps=4, save_strategy="steps", save_steps=2)
    Trainer(model=straight, args=arguments(tmp_path / "straight", **args), train_dataset=lm_rows(8)).train()
    assert_same(dict(straight.prompt_encoder["default"].state_dict()), default_before, atol=0)  # not the active one
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert set(os.listdir(checkpoint)) == ADAPTER_FILES | TRAINER_FILES | {"other"}
    assert set(os.listdir(checkpoint / "other")) == ADAPTER_FILES
    assert json.loads((checkpoint / "other" / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    resumed = two_adapter_model(prompt_seed=2)
    trainer = Trainer(model=resumed, args=arguments(tmp_path / "resumed", **args), train_dataset=lm_rows(8))
    trainer.train(resume_from_checkpoint=True)
    assert resumed.active_adapter == "other"
    assert_same(trained_state(resumed), trained_state(straight))


def test_a_checkpoint_without_the_active_adapter_is_refused_clearly(tmp_path):
    model = make_model("CAUSAL_LM", "prompt_tuning")
    Trainer(
        model=model,
        args=arguments(tmp_path, max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=lm_rows(2),
    ).train()
    other = two_adapter_model()
    trainer = Trainer(model=other, args=arguments(tmp_path, max_steps=2), train_dataset=lm_rows(2))
    with pytest.raises(ValueError, match="holds no adapter 'other'"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


@pytest.mark.parametrize(
    "task, method, column",
    [("CAUSAL_LM", "cpt", "input_type_mask"), ("SEQ_CLS-bert", "prompt_tuning", "token_type_ids")],
)
def test_dataset_columns_the_wrapper_passes_on_are_kept(task, method, column, tmp_path):
    """CPT's input_type_mask and the base model's own arguments are not named in the wrapper's signature."""
    datasets = pytest.importorskip("datasets")
    data = [{**{k: v.tolist() for k, v in row.items()}, column: [0] * LENGTH, "note": "x"} for row in rows(task, 4)]
    trainer = Trainer(
        model=make_model(task, method), args=arguments(tmp_path), train_dataset=datasets.Dataset.from_list(data)
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert column in batch and "note" not in batch


def test_label_smoothing_is_refused_for_causal_lms(tmp_path):
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        Trainer(model=make_model("CAUSAL_LM", "prompt_tuning"), args=arguments(tmp_path, label_smoothing_factor=0.1))
