"""Data loading, templates, truncation, masking, batching and the errors bad data gets."""

import json

import pytest
from transformers import AutoTokenizer

from softprompt.data import (
    DataError,
    RowTokenizer,
    TaskSpec,
    collate_training,
    length_grouped_batches,
    load_table,
    resolve_label_names,
)
from tiny_run import make_tiny_model_folder, toy_rows, write_csv

NAMES = ["Unlabeled", "complaint", "no complaint"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_tiny_model_folder(tmp_path_factory.mktemp("tiny")))


def encoder_for(tokenizer, **spec):
    return RowTokenizer(tokenizer, TaskSpec(label_names=NAMES, **spec), NAMES)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet", ".tsv"])
def test_local_formats_load_the_same_rows(tmp_path, suffix):
    import pandas

    rows = toy_rows(5, seed=0)
    path = tmp_path / f"data{suffix}"
    frame = pandas.DataFrame(rows)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    assert load_table(str(path)).rows == rows


def test_prompt_is_masked_and_label_and_eos_are_targets(tokenizer):
    encoder = encoder_for(tokenizer)
    example = encoder.encode({"Tweet text": "my order never arrived", "Label": 1})
    assert tokenizer.decode(example.prompt_ids) == "Tweet text : my order never arrived Label : "
    assert example.target_ids == tokenizer("complaint", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    batch = collate_training([example], tokenizer.pad_token_id)
    n = len(example.prompt_ids)
    assert batch["labels"][0, :n].eq(-100).all() and batch["labels"][0, n:].tolist() == example.target_ids


def test_truncation_cuts_the_text_never_the_template_tail_or_label(tokenizer):
    encoder = encoder_for(tokenizer, max_length=24)
    long_text = "the screen is broken again " * 20
    example = encoder.encode({"Tweet text": long_text, "Label": 2})
    assert example.truncated
    assert len(example.prompt_ids) + len(example.target_ids) <= 24
    assert tokenizer.decode(example.prompt_ids).endswith(" Label : ")
    assert tokenizer.decode(example.prompt_ids).startswith("Tweet text : the screen")
    assert tokenizer.decode(example.target_ids, skip_special_tokens=True) == "no complaint"
    short = encoder.encode({"Tweet text": "hi", "Label": 2})
    assert not short.truncated


def test_template_too_long_for_max_length_is_an_error(tokenizer):
    encoder = encoder_for(tokenizer, max_length=6)
    with pytest.raises(DataError, match="template and label alone need more than max_length=6"):
        encoder.encode({"Tweet text": "hi", "Label": 1}, "train.csv", 2)


def test_verbalizer_and_custom_template(tokenizer):
    encoder = encoder_for(tokenizer, verbalizer={"complaint": "yes", "no complaint": "no"}, template="Q {Tweet text} A")
    example = encoder.encode({"Tweet text": "ok", "Label": "complaint"})
    assert tokenizer.decode(example.prompt_ids) == "Q ok A"
    assert tokenizer.decode(example.target_ids, skip_special_tokens=True) == "yes"


def test_missing_text_column_names_file_row_and_column(tmp_path, tokenizer):
    path = write_csv(tmp_path / "train.csv", [{"text": "hello", "Label": 1}])
    with pytest.raises(DataError, match=r"train.csv, row 2: no column 'Tweet text'"):
        encoder_for(tokenizer).encode_table(load_table(str(path)))


def test_missing_label_column(tmp_path, tokenizer):
    path = write_csv(tmp_path / "train.csv", [{"Tweet text": "hello", "Class": 1}])
    with pytest.raises(DataError, match=r"row 2: no label column 'Label'"):
        encoder_for(tokenizer).encode_table(load_table(str(path)))


def test_label_outside_the_label_set(tmp_path, tokenizer):
    rows = toy_rows(3, seed=0)
    rows[1]["Label"] = 7
    path = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DataError, match=r"train.csv, row 3, column 'Label': label 7 is not in the label set"):
        encoder_for(tokenizer).encode_table(load_table(str(path)))


def test_unlabelled_split_cannot_be_used_for_accuracy(tmp_path, tokenizer):
    rows = [dict(r, Label=0) for r in toy_rows(4, seed=0)]
    path = write_csv(tmp_path / "test.csv", rows)
    with pytest.raises(DataError, match="4 of 4 rows are 'Unlabeled'"):
        encoder_for(tokenizer).encode_table(load_table(str(path)))
    # for prediction, unlabelled rows are fine
    assert len(encoder_for(tokenizer).encode_table(load_table(str(path)), labelled=False)) == 4


def test_empty_unreadable_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("Tweet text,Label\n")
    with pytest.raises(DataError, match="has no rows"):
        load_table(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="Could not read data from"):
        load_table(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match="does not exist"):
        load_table(str(tmp_path / "nowhere.csv"))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_table(str(tmp_path / "data.xlsx"))


def test_label_names_from_strings_or_required(tmp_path):
    strings = write_csv(tmp_path / "s.csv", [{"Tweet text": "a", "Label": "spam"}, {"Tweet text": "b", "Label": "ham"}])
    assert resolve_label_names(TaskSpec(), load_table(str(strings))) == ["ham", "spam"]
    ids = write_csv(tmp_path / "i.csv", toy_rows(2, seed=0))
    with pytest.raises(DataError, match="no label names are known"):
        resolve_label_names(TaskSpec(), load_table(str(ids)))


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    lengths = [5, 50, 6, 51, 7, 52, 8, 53]
    batches = length_grouped_batches(lengths, batch_size=2, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for batch in batches:
        assert max(lengths[i] for i in batch) - min(lengths[i] for i in batch) <= 2
    assert batches == length_grouped_batches(lengths, batch_size=2, seed=0)  # deterministic per seed
    assert batches != length_grouped_batches(lengths, batch_size=2, seed=1)


def test_collation_pads_left_to_the_longest_in_batch(tokenizer):
    encoder = encoder_for(tokenizer)
    a = encoder.encode({"Tweet text": "hi", "Label": 1})
    b = encoder.encode({"Tweet text": "the parcel came damaged again today", "Label": 2})
    batch = collate_training([a, b], tokenizer.pad_token_id)
    width = len(b.prompt_ids) + len(b.target_ids)
    assert batch["input_ids"].shape == (2, width)
    pad = width - len(a.prompt_ids) - len(a.target_ids)
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * (width - pad)
    assert batch["labels"][0, :pad].eq(-100).all()


def test_a_dataset_folder_loads_by_split_like_a_hub_id(tmp_path):
    """The hub branch (load_dataset(id, config, split)) on a local dataset folder: same code path users take online."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_csv(folder / "train.csv", toy_rows(4, seed=0))
    write_csv(folder / "test.csv", toy_rows(3, seed=1))
    table = load_table(str(folder), None, "test")
    assert len(table.rows) == 3 and "test" in table.origin


def test_class_label_names_come_from_the_dataset_features(tmp_path):
    import datasets

    features = datasets.Features({"Tweet text": datasets.Value("string"), "Label": datasets.ClassLabel(names=NAMES)})
    rows = toy_rows(4, seed=0)
    dataset = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("Tweet text", "Label")}, features=features)
    dataset.to_parquet(tmp_path / "train.parquet")
    table = load_table(str(tmp_path / "train.parquet"))
    assert table.class_names == NAMES
    assert resolve_label_names(TaskSpec(), table) == NAMES
