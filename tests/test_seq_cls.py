"""Sequence classification on decoder models with a head (Llama, Qwen2): exact under padding, the head trains and
is saved as PEFT saves modules_to_save, PEFT reads ours and we read PEFT's."""

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from softprompt import (
    AutoPeftModelForSequenceClassification,
    ConfigError,
    DePTConfig,
    PeftModel,
    PeftModelForSequenceClassification,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResidualPromptTuningConfig,
    TaskType,
    ULPTConfig,
    get_peft_model,
)
from tiny_models import CONFIGS, VOCAB, left_padded_batch

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # PEFT's call
ARCHS = ["llama_gqa", "qwen2"]
LABELS = 3
METHODS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
    "p_tuning": lambda: PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=4, encoder_hidden_size=16),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
    "residual": lambda: ResidualPromptTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=4, bottleneck_size=8, residual_init="layer_norm"
    ),
    "ulpt": lambda: ULPTConfig(task_type="SEQ_CLS", num_virtual_tokens=4, low_rank=2),
    "dept": lambda: DePTConfig(
        task_type="SEQ_CLS", num_virtual_tokens=3, offset_length=5, offset_rank=2, offset_init_std=0.05
    ),
}
OWN_FILE_PARTS = {"dept": {"lora_embedding_A", "lora_embedding_B"}}  # PEFT has no DePT


def classifier(arch, seed=0):
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.pad_token_id, config.num_labels, config.initializer_range = 0, LABELS, 0.2
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()


def wrapped(method, arch, seed=0):
    torch.manual_seed(seed + 1)
    return get_peft_model(classifier(arch, seed), METHODS[method]())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_equals_each_example_alone(method, arch):
    model = wrapped(method, arch).eval()
    assert isinstance(model, PeftModelForSequenceClassification)
    input_ids, attention_mask, rows = left_padded_batch()
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, labels]
        assert batched.shape == (3, LABELS)
        for i, row in enumerate(rows):
            torch.testing.assert_close(batched[i], model(input_ids=row[None]).logits[0], atol=1e-4, rtol=0)
        bare = model.base_model(input_ids=rows[0][None]).logits[0]
    assert (bare - batched[0]).abs().max() > 1e-3  # the prompt and the head copy matter


@pytest.mark.parametrize("method", METHODS)
def test_only_the_prompt_and_the_head_train(method):
    model = wrapped(method, "llama_gqa").train()
    before = {name: p.detach().clone() for name, p in model.base_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    input_ids, attention_mask, _ = left_padded_batch()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 2, 1])).loss
    reference = torch.nn.functional.cross_entropy(
        model(input_ids=input_ids, attention_mask=attention_mask).logits, torch.tensor([0, 2, 1])
    )
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert all(p.grad is not None for p in model.prompt_source.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["default"].parameters())
    assert all(p.grad is None for p in model.base_model.parameters())
    optimizer.step()
    for name, p in model.base_model.named_parameters():
        assert torch.equal(p, before[name]), name  # the original head included


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_keep_the_head_under_peft_names(method, tmp_path):
    model = wrapped(method, "qwen2").eval()
    with torch.no_grad():
        model.heads["default"].weight.add_(0.3)  # a trained head
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == {"prompt_embeddings", "base_model.score.weight"} | OWN_FILE_PARTS.get(method, set())
    loaded = PeftModel.from_pretrained(classifier("qwen2"), tmp_path)
    assert isinstance(loaded, PeftModelForSequenceClassification)
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_auto_model_loads_the_classifier_with_the_adapters_label_count(tmp_path):
    base = classifier("qwen2")
    base.save_pretrained(tmp_path / "base")
    model = wrapped("prompt_tuning", "qwen2")
    model.config_.base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    auto = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_peft_reads_ours_and_we_read_peft(method, tmp_path):
    ours = wrapped(method, "llama_gqa").eval()
    with torch.no_grad():
        ours.heads["default"].weight.add_(0.3)
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(classifier("llama_gqa"), tmp_path / "ours").eval()
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(ours(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    peft_config = {"prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig}[method]
    extra = {"encoder_hidden_size": 16} if method == "p_tuning" else {}
    trained = peft.get_peft_model(
        classifier("llama_gqa"), peft_config(task_type="SEQ_CLS", num_virtual_tokens=4, **extra)
    ).eval()
    with torch.no_grad():
        trained.base_model.score.modules_to_save["default"].weight.add_(0.5)
    trained.save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(classifier("llama_gqa"), tmp_path / "peft")
    with torch.no_grad():
        expected = trained(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_prefix_tuning_runs_where_peft_refuses(tmp_path):
    """PEFT 0.21 with transformers 5.24: 'Model does not support past key values' for every SEQ_CLS prefix."""
    theirs = peft.get_peft_model(
        classifier("llama_gqa"), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    )
    ids = torch.randint(3, VOCAB, (1, 5))
    with pytest.raises(ValueError, match="does not support past key values"):
        theirs(input_ids=ids)
    theirs.save_pretrained(tmp_path)  # its files are fine: we run them
    loaded = PeftModel.from_pretrained(classifier("llama_gqa"), tmp_path)
    assert loaded(input_ids=ids).logits.shape == (1, LABELS)


def test_each_adapter_has_its_own_head(tmp_path):
    model = wrapped("prompt_tuning", "llama_gqa").eval()
    model.add_adapter("other", PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2))
    with torch.no_grad():
        model.heads["other"].weight.mul_(-1)
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        first = model(input_ids=ids).logits
        model.set_adapter("other")
        second = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids, adapter_names=["default", "default"]).logits, first)
    assert (first - second).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    other = PeftModel.from_pretrained(classifier("llama_gqa"), tmp_path / "other", adapter_name="other")
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids).logits, second)
    with pytest.raises(ValueError, match="takes one adapter"):
        model(input_ids=ids, adapter_names=["default", "other"])


def test_sequence_classification_errors_are_clear(tmp_path):
    from tiny_models import tiny_model

    with pytest.raises(ValueError, match="has no classification head"):
        get_peft_model(tiny_model("llama_gqa"), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2))
    with pytest.raises(ConfigError, match="is not supported yet"):
        PromptTuningConfig(task_type=TaskType.QUESTION_ANS, num_virtual_tokens=2)
    causal = get_peft_model(tiny_model("llama_gqa"), PromptTuningConfig(num_virtual_tokens=2))
    causal.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="holds no classification head"):
        PeftModelForSequenceClassification.from_pretrained(classifier("llama_gqa"), tmp_path)
    with pytest.raises(AttributeError, match="has no generate"):  # a classifier has none to inherit
        wrapped("prompt_tuning", "llama_gqa").generate(input_ids=torch.ones(1, 2, dtype=torch.long))


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_training_a_sequence_classifier_and_predicting_with_it(method, tmp_path):
    import json

    from softprompt import Predictor
    from softprompt.training import TrainConfig, train
    from test_workflow import run_cli
    from tiny_run import run_config

    config = run_config(tmp_path, method, epochs=3, lr=0.05)
    config["task"].update(task_type="SEQ_CLS", template="{Tweet text}")
    final = train(TrainConfig.from_dict(config))
    assert final["epoch"] == 3 and 0 <= final["eval_macro_f1"] <= 1
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learns
    adapter = tmp_path / "run" / "adapter"
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved["base_model.score.weight"].shape == (2, 32)  # the trained head, two classes
    predictor = Predictor.from_pretrained(str(adapter))
    assert isinstance(predictor.model, PeftModelForSequenceClassification)
    texts = ["my order never arrived", "thanks for the quick help"]
    probabilities = predictor.probabilities(texts)  # [2, 2]
    done = run_cli(["predict", str(adapter), "--", *texts])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["p(complaint)"] for r in rows] == pytest.approx(probabilities[:, 0].tolist(), abs=1e-4)
    # the checkpoint resumes with the head it trained
    resumed = train(TrainConfig.from_dict({**config, "epochs": 4}), resume=True)
    assert resumed["epoch"] == 4


def test_a_sequence_classification_config_refuses_generation_eval(tmp_path):
    from softprompt.training import TrainConfig
    from tiny_run import run_config

    config = run_config(tmp_path, "prompt_tuning", eval_method="generation")
    config["task"]["task_type"] = "SEQ_CLS"
    with pytest.raises(ValueError, match="needs a language model"):
        TrainConfig.from_dict(config)
