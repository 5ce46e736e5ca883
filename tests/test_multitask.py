"""Multitask prompt tuning: per-row tasks, PEFT's file format both ways, the source-task inits, clear errors."""

import peft
import pytest
import torch
from safetensors.torch import load_file

from softprompt import ConfigError, MultitaskPromptTuningConfig, PeftModel, PrefixTuningConfig, get_peft_model
from tiny_models import ARCHITECTURES, left_padded_batch, tiny_model

# PEFT's own calls into transformers 5.24 use a name it deprecates; softprompt's do not (their warnings show).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
TASKS = 3


def multitask_model(arch, tasks=TASKS, seed=0, **options):
    torch.manual_seed(seed + 1)
    config = MultitaskPromptTuningConfig(num_virtual_tokens=4, num_tasks=tasks, num_ranks=2, **options)
    model = get_peft_model(tiny_model(arch, seed), config)
    with torch.no_grad():  # factors far from their small start, so that the tasks differ clearly
        source = model.prompt_source
        source.prefix_task_cols.normal_(0, 1)
        source.prefix_task_rows.normal_(0, 1)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rows_of_different_tasks_in_one_batch_equal_each_task_alone(arch):
    model = multitask_model(arch)
    model.add_adapter("prefix", PrefixTuningConfig(num_virtual_tokens=3))
    input_ids, attention_mask, rows = left_padded_batch(lengths=(6, 3, 5, 4))
    tasks, names = [2, 0, 1, 0], ["default", "default", "default", "prefix"]
    with torch.no_grad():
        mixed = model(
            input_ids=input_ids, attention_mask=attention_mask, adapter_names=names, task_ids=torch.tensor(tasks)
        ).logits
        for i, row in enumerate(rows):
            model.set_adapter(names[i])
            alone = model(input_ids=row[None], task_ids=[tasks[i]]).logits[0]
            torch.testing.assert_close(mixed[i, -len(row) :], alone, atol=1e-4, rtol=0)
        model.set_adapter("default")
        same_rows = model(input_ids=input_ids, attention_mask=attention_mask, task_ids=[1, 1, 1, 1]).logits
        other = model(input_ids=input_ids, attention_mask=attention_mask, task_ids=[2, 2, 2, 2]).logits
    assert (same_rows - other).abs().max() > 1e-3  # the tasks' prompts differ
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, task_ids=[2, 0, 1, 1], **settings)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], task_ids=[[2, 0, 1, 1][i]], **settings)[0]
        assert generated[i, -len(alone) :].tolist() == alone.tolist()


def test_training_moves_the_shared_prompt_and_the_task_factors_only():
    model = multitask_model("llama_gqa").train()
    model.prompt_source.requires_grad_(True)
    input_ids, attention_mask, _ = left_padded_batch(lengths=(5, 4))
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, task_ids=[0, 2]).loss
    loss.backward()
    source = model.prompt_source
    assert source.embedding.weight.grad.abs().sum() > 0
    assert source.prefix_task_cols.grad[[0, 2]].abs().sum() > 0 and source.prefix_task_cols.grad[1].abs().sum() == 0
    assert all(p.grad is None for p in model.base_model.parameters())


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "qwen2"])
def test_peft_reads_ours_and_we_read_peft_with_the_same_logits(arch, tmp_path):
    ours = multitask_model(arch)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), tmp_path / "ours").eval()
    ids = torch.randint(3, 128, (3, 6), generator=torch.Generator().manual_seed(0))
    tasks = torch.tensor([0, 1, 2])
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=torch.ones_like(ids), task_ids=tasks).logits[:, -ids.shape[1] :]
        torch.testing.assert_close(ours(input_ids=ids, task_ids=tasks).logits, expected, atol=1e-5, rtol=1e-5)
    # the other way: PEFT trains (moves) its factors, we load them
    config = peft.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, num_tasks=TASKS, num_ranks=2)
    peft_model = peft.get_peft_model(tiny_model(arch), config)
    with torch.no_grad():
        for p in peft_model.prompt_encoder["default"].parameters():
            p.normal_(0, 1)
    peft_model.save_pretrained(tmp_path / "peft")
    saved = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert set(saved) == set(load_file(str(tmp_path / "ours" / "adapter_model.safetensors")))  # same tensor names
    loaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path / "peft").eval()
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids), task_ids=tasks).logits[
            :, -ids.shape[1] :
        ]
        torch.testing.assert_close(loaded(input_ids=ids, task_ids=tasks).logits, expected, atol=1e-5, rtol=1e-5)


def test_save_and_load_are_bit_exact_and_keep_every_task(tmp_path):
    model = multitask_model("llama_gqa")
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path)
    for name, value in model.prompt_source.state_dict().items():
        assert torch.equal(loaded.prompt_source.state_dict()[name], value), name
    resumed = PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path, is_trainable=True)
    assert all(p.requires_grad for p in resumed.prompt_source.parameters())


@pytest.mark.parametrize("init", ["AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED"])
def test_a_target_task_starts_from_a_source_adapter(init, tmp_path):
    source = multitask_model("llama_gqa")
    source.save_pretrained(tmp_path / "source")
    trained = source.prompt_source
    config = MultitaskPromptTuningConfig(
        num_virtual_tokens=4,
        num_tasks=1,
        num_ranks=2,
        prompt_tuning_init=init,
        prompt_tuning_init_state_dict_path=str(tmp_path / "source"),
        prompt_tuning_init_task=2,
    )
    target = get_peft_model(tiny_model("llama_gqa"), config).prompt_source
    assert torch.equal(target.embedding.weight, trained.embedding.weight)
    expected = {
        "AVERAGE_SOURCE_TASKS": (trained.prefix_task_cols.mean(0), trained.prefix_task_rows.mean(0)),
        "EXACT_SOURCE_TASK": (trained.prefix_task_cols[2], trained.prefix_task_rows[2]),
    }.get(init)
    if expected is None:  # only the shared prompt: the factors start small and fresh
        assert target.prefix_task_cols.abs().max() < 0.2
    else:
        torch.testing.assert_close(target.prefix_task_cols[0], expected[0])
        torch.testing.assert_close(target.prefix_task_rows[0], expected[1])


def test_multitask_errors_are_clear(tmp_path):
    model = multitask_model("llama_gqa")
    ids = torch.randint(3, 128, (2, 4))
    with pytest.raises(ValueError, match="has several tasks: pass task_ids"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match=r"Task id 3 is out of range: adapter 'default' has 3 task\(s\)"):
        model(input_ids=ids, task_ids=[0, 3])
    with pytest.raises(ValueError, match="task_ids has 1 entries but the batch has 2 rows"):
        model(input_ids=ids, task_ids=[0])
    with pytest.raises(ConfigError, match="starts from a source adapter"):
        MultitaskPromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="EXACT_SOURCE_TASK")
    model.save_pretrained(tmp_path / "source")
    config = MultitaskPromptTuningConfig(
        num_virtual_tokens=4,
        prompt_tuning_init="EXACT_SOURCE_TASK",
        prompt_tuning_init_state_dict_path=str(tmp_path / "source"),
        prompt_tuning_init_task=7,
    )
    with pytest.raises(ConfigError, match="the source adapter has 3 tasks"):
        get_peft_model(tiny_model("llama_gqa"), config)
    single = get_peft_model(tiny_model("llama_gqa"), MultitaskPromptTuningConfig(num_virtual_tokens=4))
    assert single(input_ids=ids).logits.shape == (2, 4, 128)  # one task: task_ids may be left out


def test_the_training_workflow_and_predictor_take_a_single_task_multitask_prompt(tmp_path):
    from softprompt import Predictor
    from softprompt.training import TrainConfig, train
    from tiny_run import run_config

    config = run_config(
        tmp_path, "multitask_prompt_tuning", epochs=2, method_options={"num_virtual_tokens": 4, "num_ranks": 2}
    )
    lines = train(TrainConfig.from_dict(config))
    assert lines["epoch"] == 2
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    predictor = Predictor.from_pretrained(str(tmp_path / "run" / "adapter"))
    assert predictor.probabilities(["my order never arrived"]).shape == (1, 2)
