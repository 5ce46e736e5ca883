"""Sequence classification of encoders with mean pooling (`pooling="mean"`) and a head started from a linear probe
(`head_init="fit"`): exact under padding and batch composition, equal to a hand-computed reference, kept by
save/load (ours, the Auto class, the Predictor), loadable by PEFT, and PEFT's JSON unchanged by default."""

import json

import peft
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig, RobertaConfig

from softprompt import (
    AutoPeftModelForSequenceClassification,
    ConfigError,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from softprompt.compat import frozen_prefix_cache
from test_encoders import right_padded

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
}
METHODS = {
    "prompt_tuning": lambda **kw: PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4, **kw),
    "p_tuning": lambda **kw: PromptEncoderConfig(
        task_type="SEQ_CLS", num_virtual_tokens=4, encoder_hidden_size=16, **kw
    ),
    "prefix_tuning": lambda **kw: PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4, **kw),
}


def encoder(arch="bert", seed=0):
    torch.manual_seed(seed)
    config = ENCODERS[arch]()
    config.num_labels, config.initializer_range = LABELS, 0.2
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()


def wrapped(method, arch="bert", pooling="mean", **options):
    torch.manual_seed(1)
    model = get_peft_model(encoder(arch), METHODS[method](pooling=pooling, **options)).eval()
    with torch.no_grad():
        for p in model.prompt_source.parameters():
            p.normal_(0, 1)  # a prompt far from its start, so that it matters
    return model


@pytest.mark.parametrize("pooling", ["mean", "normalized_mean"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ENCODERS)
def test_padding_and_batch_composition_do_not_change_a_rows_logits(method, arch, pooling):
    model = wrapped(method, arch, pooling)
    ids, mask, rows = right_padded()
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits  # [B, labels]
        for i, row in enumerate(rows):
            torch.testing.assert_close(batched[i], model(input_ids=row[None]).logits[0], atol=1e-5, rtol=0)
        wide = model(
            input_ids=right_padded(width=12)[0], attention_mask=right_padded(width=12)[1]
        ).logits  # more padding
        torch.testing.assert_close(wide, batched, atol=1e-5, rtol=0)
        other_ids, other_mask, _ = right_padded(lengths=(9, 3), seed=5)
        mixed_ids = torch.zeros(3, 9, dtype=torch.long)
        mixed_mask = torch.zeros_like(mixed_ids)
        mixed_ids[0], mixed_mask[0] = other_ids[0], other_mask[0]
        mixed_ids[1, :2], mixed_mask[1, :2] = rows[2], 1  # the 2-token row among other rows
        mixed_ids[2], mixed_mask[2] = other_ids[1], other_mask[1]
        torch.testing.assert_close(
            model(input_ids=mixed_ids, attention_mask=mixed_mask).logits[1], batched[2], atol=1e-5, rtol=0
        )
        cls = get_peft_model(encoder(arch), METHODS[method]())
        cls.prompt_source.load_state_dict(model.prompt_source.state_dict())
        cls.heads["default"].load_state_dict(model.heads["default"].state_dict())
        assert (
            cls.eval()(input_ids=ids, attention_mask=mask).logits - batched
        ).abs().max() > 1e-3  # the pooling matters


@pytest.mark.parametrize("pooling", ["mean", "normalized_mean"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_mean_pooling_is_the_mean_of_the_text_tokens_states(method, pooling):
    """Reference by hand: BERT's backbone with the prompt (virtual tokens before the text, or a prefix cache), the
    mean of the real text positions' last hidden states (scaled to unit length for "normalized_mean"), BERT's
    classifier."""
    model = wrapped(method, pooling=pooling)
    ids, mask, _ = right_padded()
    base = model.base_model
    with torch.no_grad():
        if method == "prefix_tuning":
            states = model.prompt_states("default")
            layers = [(k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1)) for k, v in states.layers]
            hidden = base.bert(
                input_ids=ids,
                attention_mask=torch.cat([torch.ones(3, states.length, dtype=torch.long), mask], 1),
                position_ids=torch.arange(ids.shape[1]).expand(3, -1),
                cache=frozen_prefix_cache(layers),
            ).last_hidden_state
        else:
            table = model.prompt_table("default")  # [P, H]
            embeds = torch.cat([table.expand(3, -1, -1), base.bert.embeddings.word_embeddings(ids)], 1)
            hidden = base.bert(
                inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(3, 4, dtype=torch.long), mask], 1)
            ).last_hidden_state
            hidden = hidden[:, 4:]
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        if pooling == "normalized_mean":
            pooled = pooled / pooled.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits, model.heads["default"](pooled), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_the_loss_is_cross_entropy_and_only_the_prompt_and_head_train(method):
    model = wrapped(method).train()
    ids, mask, _ = right_padded()
    labels = torch.tensor([0, 2, 1])
    torch.manual_seed(3)
    output = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.manual_seed(3)  # the same dropout
    torch.testing.assert_close(
        output.loss, torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
    )
    output.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt_source.parameters())
    assert all(p.grad is not None for p in model.heads["default"].parameters())
    assert all(p.grad is None for p in model.base_model.parameters())


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_save_and_load_keep_the_pooling(method, tmp_path):
    model = wrapped(method)
    with torch.no_grad():
        model.heads["default"].weight.add_(0.3)  # a trained head
    model.config_.base_model_name_or_path = str(tmp_path / "base")
    encoder().save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["pooling"] == "mean" and "head_init" not in saved  # only what differs from PEFT's JSON
    ids, mask, _ = right_padded()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        loaded = PeftModel.from_pretrained(encoder(), tmp_path / "adapter")
        assert loaded.config_.pooling == "mean"
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=0)
        auto = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter").eval()
        torch.testing.assert_close(auto(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=0)
        other = get_peft_model(encoder(), METHODS[method]())  # a [CLS] adapter beside a mean-pooled one
        other.load_adapter(tmp_path / "adapter", "mean")
        torch.testing.assert_close(
            other(input_ids=ids, attention_mask=mask, adapter_names=["mean"] * 3).logits, expected, atol=1e-5, rtol=0
        )


def test_default_adapter_files_are_peft_s_and_peft_loads_a_mean_pooled_one(tmp_path):
    """Default: the JSON has no softprompt field. A mean-pooled adapter: PEFT 0.21 loads it (warning of the unknown
    field) and runs it with its own [CLS] pooling: its logits are those of our model with pooling="cls"."""
    plain = get_peft_model(encoder(), METHODS["prompt_tuning"]())
    plain.save_pretrained(tmp_path / "plain")
    assert not {"pooling", "head_init"} & set(json.loads((tmp_path / "plain" / "adapter_config.json").read_text()))
    model = wrapped("prompt_tuning", head_init="fit")
    model.save_pretrained(tmp_path / "mean")
    with pytest.warns(UserWarning, match="Unexpected keyword arguments"):
        theirs = peft.PeftModel.from_pretrained(encoder(), tmp_path / "mean").eval()
    ours_cls = PeftModel.from_pretrained(encoder(), tmp_path / "mean")
    ours_cls.config_.pooling = "cls"
    ids, mask, _ = right_padded()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=ids, attention_mask=mask).logits,
            ours_cls(input_ids=ids, attention_mask=mask).logits,
            atol=1e-5,
            rtol=1e-5,
        )


def test_fit_head_is_the_logistic_regression_optimum():
    model = wrapped("prompt_tuning", head_init="fit")
    assert model.head_needs_fit()
    ids, mask, _ = right_padded(lengths=(7, 4, 2, 5, 6, 3, 8), seed=2)
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2])
    model.fit_head_on([{"input_ids": ids, "attention_mask": mask, "labels": labels}], l2=0.5)
    assert not model.head_needs_fit()
    head = model.heads["default"]
    features = model.head_features(ids, mask)  # what the head reads: the mean-pooled states, [7, 32]
    with torch.no_grad():
        torch.testing.assert_close(head(features), model(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
    weight, bias = head.weight.detach().clone().requires_grad_(), head.bias.detach().clone().requires_grad_()
    counts = torch.bincount(labels).float()
    weights = (7 / (3 * counts))[labels]  # balanced classes
    loss = (torch.nn.functional.cross_entropy(features @ weight.T + bias, labels, reduction="none") * weights).sum()
    (loss + 0.25 * weight.pow(2).sum()).backward()
    assert weight.grad.abs().max() < 1e-3 and bias.grad.abs().max() < 1e-3  # the optimum (in float32)


def test_a_fitted_head_on_normalized_means_is_scikit_learns_balanced_logistic_regression():
    """With pooling="normalized_mean" and head_init="fit", training starts from the linear probe a user would fit on
    the sentence-transformers embeddings: scikit-learn's LogisticRegression(class_weight="balanced"), C = 1."""
    from sklearn.linear_model import LogisticRegression

    model = wrapped("prompt_tuning", pooling="normalized_mean", head_init="fit")
    ids, mask, _ = right_padded(lengths=(7, 4, 2, 5, 6, 3, 8, 5, 4), seed=2)
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0, 1])
    model.fit_head_on([{"input_ids": ids, "attention_mask": mask, "labels": labels}])
    features = model.head_features(ids, mask)  # [9, 32]
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(9))
    probe = LogisticRegression(class_weight="balanced", C=1.0, tol=1e-10, max_iter=10_000).fit(features, labels)
    head = model.heads["default"]
    torch.testing.assert_close(head.weight.detach(), torch.tensor(probe.coef_, dtype=torch.float32), atol=2e-3, rtol=0)
    torch.testing.assert_close(
        head.bias.detach(), torch.tensor(probe.intercept_, dtype=torch.float32), atol=2e-3, rtol=0
    )


def test_options_are_checked():
    with pytest.raises(ConfigError, match="pooling='max' is unknown"):
        PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, pooling="max")
    with pytest.raises(ConfigError, match="is for sequence classification"):
        PromptTuningConfig(num_virtual_tokens=2, pooling="mean")
    with pytest.raises(ValueError, match="fits a linear head"):
        get_peft_model(encoder("roberta"), METHODS["prompt_tuning"](head_init="fit"))
    from test_seq_cls import classifier

    with pytest.raises(ValueError, match="are for encoders"):
        get_peft_model(classifier("llama_gqa"), METHODS["prompt_tuning"](pooling="mean"))


def tiny_bert_folder(folder):
    """A tokenizer (the tiny workflow's) and a random 2-layer BERT classifier of its vocabulary,
    saved as a model folder."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tiny_run import make_tiny_model_folder

    make_tiny_model_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_training_with_mean_pooling_and_a_fitted_head_then_predicting(tmp_path, monkeypatch):
    from softprompt import PeftModelForSequenceClassification, Predictor
    from softprompt.training import TrainConfig, train
    from test_workflow import run_cli
    from tiny_run import run_config

    fits = []
    original = PeftModelForSequenceClassification.fit_head
    monkeypatch.setattr(
        PeftModelForSequenceClassification, "fit_head", lambda self, *a, **k: (fits.append(1), original(self, *a, **k))
    )
    config = run_config(
        tmp_path,
        "prompt_tuning",
        epochs=2,
        lr=0.01,
        model=str(tiny_bert_folder(tmp_path / "bert")),
        method_options={"num_virtual_tokens": 4, "pooling": "mean", "head_init": "fit"},
    )
    config["task"].update(task_type="SEQ_CLS", template="{Tweet text}")
    final = train(TrainConfig.from_dict(config))
    assert final["epoch"] == 2 and len(fits) == 1  # fitted once, before the first step
    adapter = tmp_path / "run" / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["pooling"] == "mean" and saved["head_init"] == "fit"
    predictor = Predictor.from_pretrained(str(adapter))
    assert predictor.model.config_.pooling == "mean"
    texts = ["my order never arrived", "thanks for the quick help"]
    probabilities = predictor.probabilities(texts)
    done = run_cli(["predict", str(adapter), "--", *texts])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["p(complaint)"] for r in rows] == pytest.approx(probabilities[:, 0].tolist(), abs=1e-4)
    resumed = train(TrainConfig.from_dict({**config, "epochs": 3}), resume=True)
    assert resumed["epoch"] == 3 and len(fits) == 1  # the checkpoint's head is kept, not fitted again
