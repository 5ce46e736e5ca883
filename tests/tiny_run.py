"""A complete tiny setup for workflow tests: a byte-level BPE tokenizer trained here, a 2-layer Llama, toy CSVs."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

GOOD = [
    "thanks for the quick help",
    "love the new menu",
    "great service today",
    "what time do you open",
    "the app update looks nice",
    "happy with my order",
    "see you at the event",
    "nice work team",
]
BAD = [
    "my order never arrived",
    "the screen is broken again",
    "still waiting for my refund",
    "train cancelled twice",
    "billing charged me twice",
    "nobody answers the phone",
    "the parcel came damaged",
    "wifi down all day",
]


def toy_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        complaint = i % 2 == 0
        text = f"@Shop{rng.randint(1, 9)} " + rng.choice(BAD if complaint else GOOD)
        rows.append({"Tweet text": text, "ID": i, "Label": 1 if complaint else 2})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_tiny_model_folder(folder: Path) -> Path:
    """Tokenizer + random 2-layer Llama (GQA) saved as an ordinary transformers folder."""
    corpus = GOOD + BAD + ["Tweet text : Label : complaint no complaint Unlabeled @Shop1 @Shop2"] * 5
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def make_tiny_encoder_folder(folder: Path) -> Path:
    """The tiny model's tokenizer + a random 2-layer BERT: an encoder folder (AutoModelForSequenceClassification adds
    a head)."""
    make_tiny_model_folder(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (folder / name).unlink(missing_ok=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def run_config(tmp_path: Path, method: str = "prompt_tuning", **overrides) -> dict:
    """A TrainConfig dict for the tiny model and toy data under tmp_path."""
    model = tmp_path / "tiny-model"
    if not model.exists():
        make_tiny_model_folder(model)
    train = write_csv(tmp_path / "train.csv", toy_rows(24, seed=1))
    dev = write_csv(tmp_path / "dev.csv", toy_rows(12, seed=2))
    config = {
        "model": str(model),
        "method": method,
        "method_options": {"num_virtual_tokens": 4},
        "train_file": str(train),
        "eval_file": str(dev),
        "task": {"label_names": ["Unlabeled", "complaint", "no complaint"], "max_length": 32},
        "epochs": 3,
        "batch_size": 4,
        "lr": 0.05,
        "output_dir": str(tmp_path / "run"),
        "progress": False,
    }
    config.update(overrides)
    return config
