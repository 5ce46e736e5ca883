"""The Predictor: several trained adapters (each with its task) on one base model, mixed calls, ensembles,
generation."""

import json
import shutil

import pytest
import torch

from softprompt import AdapterError, Predictor, PrefixTuningConfig, get_peft_model
from softprompt import base_models as models_module
from softprompt.base_models import parse_dtype
from softprompt.inference import name_adapters
from test_workflow import run_cli

TEXTS = ["my order never arrived", "thanks for the quick help", "@Shop3 wifi down all day", "love the new menu"]


@pytest.fixture(scope="module")
def adapters(trained_adapters):
    return trained_adapters


@pytest.fixture(scope="module")
def predictor(adapters):
    return Predictor.from_pretrained(adapters)


def test_mixed_adapters_in_one_call_equal_each_adapter_alone(predictor, adapters):
    names = ["complaints", "yesno", "ptuning", "yesno"]
    mixed = predictor.classify(TEXTS, adapter=names)
    for text, name, got in zip(TEXTS, names, mixed):
        single = Predictor.from_pretrained(adapters[name]).probabilities([text])[0]
        assert got["adapter"] == name
        assert list(got["probabilities"].values()) == pytest.approx(single.tolist(), abs=1e-5)
        assert got["label"] == max(got["probabilities"], key=got["probabilities"].get)
    # the adapters differ, so the comparison above can fail
    first, second = (float(predictor.probabilities(TEXTS[:1], name)[0, 0]) for name in ("complaints", "yesno"))
    assert abs(first - second) > 1e-4


def test_rows_and_texts_read_the_same(predictor):
    by_text = predictor.probabilities(TEXTS, "yesno")
    by_row = predictor.probabilities([{"Tweet text": t} for t in TEXTS], "yesno")
    torch.testing.assert_close(by_text, by_row)
    assert by_text.shape == (4, 2) and torch.allclose(by_text.sum(-1), torch.ones(4))


def test_ensemble_is_the_mean_of_its_members_and_loads_the_base_model_once(adapters, monkeypatch):
    loads = []
    real = models_module.load_base_model
    monkeypatch.setattr(models_module, "load_base_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    predictor = Predictor.from_pretrained(adapters)
    assert len(loads) == 1
    members = ["complaints", "yesno", "ptuning"]
    together = predictor.ensemble_probabilities(TEXTS, members)
    expected = torch.stack([predictor.probabilities(TEXTS, name) for name in members]).mean(0)
    torch.testing.assert_close(together, expected)
    rows = predictor.classify(TEXTS, ensemble=members)
    torch.testing.assert_close(torch.tensor([list(r["probabilities"].values()) for r in rows]), together)
    assert rows[0]["adapter"] == "complaints+yesno+ptuning"


def test_a_text_is_generated_from_as_written_and_a_row_through_the_template(predictor):
    model, tokenizer = predictor.model, predictor.tokenizer
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def reference(ids, name):
        model.set_adapter(name)
        output = model.generate(input_ids=torch.tensor([ids]), **settings)
        return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)

    text = "Tweet text : my order never arrived Label :"
    assert predictor.generate(text, "complaints", max_new_tokens=4) == [
        reference(tokenizer(text)["input_ids"], "complaints")
    ]
    row = {"Tweet text": "my order never arrived"}
    templated = predictor.row_tokenizer("yesno").encode(row, labelled=False).prompt_ids
    assert tokenizer.decode(templated).startswith("Tweet: my order never arrived\nComplaint?")
    assert predictor.generate([row], "yesno", max_new_tokens=4) == [reference(templated, "yesno")]
    # mixed adapters and the bare model in one batch, same as one by one
    together = predictor.generate([text, text, text], ["complaints", "__base__", "ptuning"], max_new_tokens=4)
    alone = [predictor.generate([text], name, max_new_tokens=4)[0] for name in ["complaints", "__base__", "ptuning"]]
    assert together == alone


def test_predictor_errors_are_clear(predictor, adapters, tmp_path):
    with pytest.raises(
        ValueError, match=r"Unknown adapter 'nope'. Loaded adapters: \['complaints', 'ptuning', 'yesno'\]"
    ):
        predictor.classify(TEXTS, adapter="nope")
    with pytest.raises(ValueError, match="adapter has 2 names for 4 inputs"):
        predictor.classify(TEXTS, adapter=["complaints", "yesno"])
    # an adapter without task.json generates but does not classify
    bare = tmp_path / "bare"
    shutil.copytree(adapters["complaints"], bare)
    (bare / "task.json").unlink()
    predictor.load_adapter(bare, "bare")
    with pytest.raises(ValueError, match="has no task.json"):
        predictor.classify(TEXTS, adapter="bare")
    assert len(predictor.generate(["hello"], "bare", max_new_tokens=2)) == 1
    predictor.unload_adapter("bare")
    # a wrong-model adapter is refused; the others keep working
    before = predictor.probabilities(TEXTS, "complaints")
    from tiny_models import tiny_model

    get_peft_model(tiny_model("gpt2"), PrefixTuningConfig(num_virtual_tokens=2)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(AdapterError, match="does not fit this base model"):
        predictor.load_adapter(tmp_path / "gpt2", "gpt2")
    assert "gpt2" not in predictor.adapter_names
    torch.testing.assert_close(predictor.probabilities(TEXTS, "complaints"), before)
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        parse_dtype("float8")


def test_dtype_and_device(adapters):
    half = Predictor.from_pretrained(adapters["yesno"], dtype="bfloat16", device="cpu")
    assert half.model.base_model.dtype == torch.bfloat16
    full = Predictor.from_pretrained(adapters["yesno"], dtype="float32", device="cpu")
    torch.testing.assert_close(half.probabilities(TEXTS), full.probabilities(TEXTS), atol=0.05, rtol=0)


def test_adapter_names_come_from_folders_or_hub_ids(tmp_path):
    (tmp_path / "pt-42" / "adapter").mkdir(parents=True)
    (tmp_path / "pt-43" / "adapter").mkdir(parents=True)
    named = name_adapters(
        [tmp_path / "pt-42" / "adapter", tmp_path / "pt-43" / "adapter", "me/tweets", tmp_path / "pt-42" / "adapter"]
    )
    assert list(named) == ["pt-42", "pt-43", "me/tweets", "pt-42-2"]
    assert name_adapters({"a": "x"}) == {"a": "x"}


def test_cli_generate_uses_a_text_as_written_unless_asked_for_the_template(adapters):
    adapter = adapters["yesno"]
    predictor = Predictor.from_pretrained(adapter)
    text = "Tweet: my order never arrived\nComplaint?"
    done = run_cli(["predict", adapter, "--generate", "--max-new-tokens", "3", "--dtype", "float32", "--", text])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["generated"] == predictor.generate(text, max_new_tokens=3)[0]
    done = run_cli(
        ["predict", adapter, "--generate", "--template", "--max-new-tokens", "3", "--", "my order never arrived"]
    )
    assert done.returncode == 0, done.stderr
    row = {"Tweet text": "my order never arrived"}
    assert json.loads(done.stdout)["generated"] == predictor.generate([row], max_new_tokens=3)[0]
