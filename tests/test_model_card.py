"""Adapters carry a model card (README.md) as PEFT's do: the Hub's base-model link, what the adapter is, its task and
training figures, and how to load it with softprompt and with PEFT (or why PEFT cannot run it)."""

import yaml

from softprompt import PromptTuningConfig, get_peft_model
from softprompt.core.model_card import MARKER, card_for_upload
from softprompt.training import TrainConfig, train
from tiny_models import tiny_model
from tiny_run import run_config


def metadata(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_save_pretrained_writes_a_card_that_links_the_base_model(tmp_path):
    model = get_peft_model(tiny_model("llama_gqa"), PromptTuningConfig(num_virtual_tokens=3))
    model.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert metadata(card) == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["softprompt", "peft", "prompt-tuning", "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct"],
    }
    assert "3 virtual tokens, 144 parameters in its file" in card  # 3 x hidden 48
    assert 'AutoPeftModelForCausalLM.from_pretrained("PATH_OR_HUB_ID")' in card


def test_a_card_the_user_wrote_is_kept_and_ours_is_replaced(tmp_path):
    model = get_peft_model(tiny_model("llama_gqa"), PromptTuningConfig(num_virtual_tokens=3))
    model.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text().replace("3 virtual", "three virtual"))
    model.save_pretrained(tmp_path)  # still softprompt's card (the marker is there): written anew
    assert "3 virtual tokens" in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("# My prompt\nNotes of my own.\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# My prompt\nNotes of my own.\n"
    assert card_for_upload(tmp_path, "me/prompt") is None  # uploaded as the user wrote it


def test_training_writes_the_task_and_the_figures_of_the_kept_epoch(tmp_path):
    train(TrainConfig.from_dict(run_config(tmp_path, epochs=2)))
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert MARKER in card and "Classes: complaint, no complaint." in card
    line = [line for line in card.splitlines() if line.startswith("The last epoch's figures:")][0]
    assert "epoch 2" in line and "eval_accuracy" in line and "seconds" not in line


def test_an_adapter_peft_cannot_run_as_we_do_says_why(tmp_path):
    from test_encoders import encoder

    model = get_peft_model(
        encoder("bert"), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2, pooling="mean")
    )
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "PEFT cannot run this adapter as softprompt does: it uses softprompt's pooling='mean'" in card
    assert metadata(card)["pipeline_tag"] == "text-classification" and "from peft import" not in card
