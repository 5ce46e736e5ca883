"""A method and a task type registered from outside the package, in a few lines each, work end to end: trained by
`softprompt.train`, saved, loaded by `PeftModel.from_pretrained` and the Predictor, used to classify."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from softprompt import (
    ConfigError,
    PeftModel,
    Predictor,
    PromptLearningConfig,
    PromptSource,
    get_peft_model,
    register_method,
    register_task_type,
    registry,
)
from softprompt.data import pad_left
from softprompt.methods import InjectionKind
from softprompt.task_types import LabelScoring, PeftModelForCausalLM
from softprompt.training import TrainConfig, train
from tiny_run import run_config


# ---- a toy method: a prompt table times a learned scalar gate ------------------------------------------
@dataclass
class GatedPromptConfig(PromptLearningConfig):
    peft_type = "GATED_PROMPT"
    gate_init: float = 0.5


class GatedPrompt(PromptSource):
    injection = InjectionKind.EMBEDDINGS

    def __init__(self, config, shape, base_model):
        super().__init__()
        self.embedding = nn.Embedding(config.num_virtual_tokens, shape.hidden_size)
        self.gate = nn.Parameter(torch.tensor(config.gate_init))

    def forward(self, task: int = 0):
        return self.embedding.weight * self.gate  # [P, H]


# ---- a toy task type: classes by the logit of their label's first token after the prompt ----------------
class FirstTokenModel(PeftModelForCausalLM):
    pass


class FirstTokenScoring(LabelScoring):
    mixes_adapters = False

    @classmethod
    @torch.no_grad()
    def class_log_scores(cls, model, rows, examples, batch_size=16, progress=True, adapter_name=None):
        first = [rows.target_ids(k)[0] for k in range(len(rows.class_names))]
        ids = pad_left([e.prompt_ids for e in examples], rows.tokenizer.pad_token_id)
        mask = pad_left([[1] * len(e.prompt_ids) for e in examples], 0)
        names = None if adapter_name is None else [adapter_name] * len(examples)
        logits = model(input_ids=ids, attention_mask=mask, adapter_names=names).logits[:, -1, first]  # [N, K]
        return logits.float().log_softmax(-1)


@pytest.fixture
def toys():
    """Register the toys for one test; the registries are restored after it."""
    saved = dict(registry._METHODS), dict(registry._ALIASES), dict(registry._TASK_TYPES)
    register_method("GATED_PROMPT", GatedPromptConfig, GatedPrompt, aliases=("gated_prompt",))
    register_task_type("FIRST_TOKEN", FirstTokenModel, AutoModelForCausalLM, FirstTokenScoring)
    yield
    for table, before in zip((registry._METHODS, registry._ALIASES, registry._TASK_TYPES), saved):
        table.clear()
        table.update(before)


def test_a_method_and_a_task_type_from_outside_train_save_load_and_predict(toys, tmp_path):
    config = run_config(tmp_path, "gated_prompt", epochs=1, method_options={"num_virtual_tokens": 3, "gate_init": 0.7})
    config["task_type"] = "FIRST_TOKEN"
    train(TrainConfig.from_dict(config))  # a step of the toy method, scored by the toy task type each epoch
    adapter = tmp_path / "run" / "adapter"
    saved = PromptLearningConfig.from_pretrained(adapter)
    assert type(saved) is GatedPromptConfig and saved.task_type == "FIRST_TOKEN" and saved.gate_init == 0.7

    predictor = Predictor.from_pretrained(str(adapter))
    assert type(predictor.model) is FirstTokenModel  # PeftModel.from_pretrained dispatched through the registry
    name = predictor.adapter_names[0]
    assert predictor.behaviour(name) is FirstTokenScoring
    texts = ["my order never arrived", "love the new menu"]
    got = predictor.probabilities(texts)
    rows = predictor.row_tokenizer()
    expected = FirstTokenScoring.class_log_scores(predictor.model, rows, predictor.examples(texts, [name] * 2)).softmax(
        -1
    )
    torch.testing.assert_close(got, expected)
    assert [p["label"] for p in predictor.classify(texts)] == [
        rows.class_names[i] for i in expected.argmax(-1).tolist()
    ]


def test_a_registered_method_is_a_peft_model_like_any_other(toys, tmp_path):
    from tiny_models import tiny_model

    model = get_peft_model(tiny_model("llama_gqa"), GatedPromptConfig(num_virtual_tokens=2, gate_init=2.0))
    assert type(model) is PeftModelForCausalLM
    torch.testing.assert_close(model.prompt_table(), model.prompt_source.embedding.weight * 2.0)
    model.save_pretrained(tmp_path)  # collapses to its table: inference needs no method code
    loaded = PeftModel.from_pretrained(tiny_model("llama_gqa"), tmp_path)
    torch.testing.assert_close(loaded.prompt_table(), model.prompt_table())
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_registry_errors_name_the_problem(toys):
    with pytest.raises(ConfigError, match="already registered"):
        register_method("GATED_PROMPT", GatedPromptConfig, type("OtherSource", (GatedPrompt,), {}))
    with pytest.raises(ConfigError, match="must be a PromptSource subclass"):
        register_method("GATED_PROMPT", GatedPromptConfig, PromptSource)
    with pytest.raises(ConfigError, match="alias 'prompt_tuning' already names"):
        register_method(
            "OTHER",
            type("OtherConfig", (GatedPromptConfig,), {"peft_type": "OTHER"}),
            GatedPrompt,
            aliases=("prompt_tuning",),
        )
    with pytest.raises(ConfigError, match="peft_type is 'NOPE'"):
        register_method("NOPE", GatedPromptConfig, GatedPrompt)
    with pytest.raises(ConfigError, match="Unknown prompt method 'lora'.*gated_prompt"):
        registry.method("lora")
    with pytest.raises(
        ConfigError, match="softprompt train handles task_type CAUSAL_LM, SEQ_CLS, FIRST_TOKEN; TOKEN_CLS"
    ):
        TrainConfig(train_file="x.csv", task_type="TOKEN_CLS")
