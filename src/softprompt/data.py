"""Data: load a labelled table, verbalize labels, fill a prompt template, tokenize, batch.

A row becomes `prompt_ids + target_ids`, where the prompt is the template filled with the row's
text columns and the target is the verbalized label and EOS. Labels are -100 on the prompt.
Too-long rows lose tokens from the end of their longest text field, never from the template or
the label.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch

LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
UNLABELED = "unlabeled"
HUB_PREFIX = "hf://"  # datasets' own address of files in a Hub repo: hf://datasets/OWNER/NAME[@REVISION]/PATH (globs allowed)


def is_remote(source) -> bool:
    """A URL (hf://datasets/..., https://...), read by `datasets` rather than from this machine's disk."""
    return isinstance(source, str) and "://" in source


class DataError(ValueError):
    """Bad input data; the message names the file, row and column."""


@dataclass
class TaskSpec:
    """What the columns mean and how a row is shown to the model."""

    text_columns: list[str] = field(default_factory=lambda: ["Tweet text"])
    label_column: str = "Label"
    label_names: list[str] | None = None
    """Class names by label id; None: from the dataset's ClassLabel, or the label strings found."""
    verbalizer: dict[str, str] | None = None
    """Label name -> the text the model writes for it; default: the label name itself."""
    template: str | None = None
    """Format string over the text columns; default as in PEFT's guide: '{Tweet text} : {text} Label : '."""
    max_length: int = 64
    task_type: str = "CAUSAL_LM"
    """CAUSAL_LM: the model writes the label's words (label scoring); SEQ_CLS: a classification head picks it."""
    name: str | None = None
    """The task's name (set for each task of a multitask run; `--task NAME` picks it at eval/predict)."""
    task_id: int | None = None
    """Which of the adapter's task prompts this task's rows use (`task_ids` per row); None: the adapter's only one.
    A multitask run numbers its tasks 0..T-1 in the order of `tasks:`."""

    def prompt_template(self) -> str:
        if self.template:
            return self.template
        return " ".join(f"{column} : {{{column}}}" for column in self.text_columns) + " Label : "

    def template_fields(self) -> list[str]:
        """The text columns the template reads, in order; a DataError if it reads one that is not a text column."""
        template = self.prompt_template()
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        missing = [name for name in fields if name not in self.text_columns]
        if missing:
            raise DataError(f"The template {template!r} uses {missing}, which are not among text_columns {self.text_columns}.")
        return fields

    def label_text(self, name: str) -> str:
        return (self.verbalizer or {}).get(name, name)


@dataclass
class Table:
    """Rows of a split, with where they came from (for error messages) and the ClassLabel names if any."""

    rows: list[dict]
    origin: str
    class_names: list[str] | None = None


def load_table(source: str, dataset_config: str | None = None, split: str = "train", field: str = "train_file") -> Table:
    """A local CSV/TSV/JSON/JSONL/Parquet file; files on the Hub by datasets' address
    (`hf://datasets/ought/raft@refs/convert/parquet/twitter_complaints/train/*.parquet`, or any URL datasets reads);
    or a split of a hub dataset without a loading script (`load_dataset(source, dataset_config, split=split)`).

    `field` names the setting that gave `source` (e.g. train_file), for the hint when the Hub cannot be reached.
    """
    import datasets

    if is_remote(source):
        return load_remote_table(source, field)
    path = Path(source).expanduser()
    try:
        if path.suffix.lower() in LOCAL_FORMATS or path.is_file():
            if not path.is_file():
                raise DataError(
                    f"Data file {path} does not exist ({field}). Check the path (relative paths start from the current folder; "
                    f"in a config file, from its folder), or give another: --{field} PATH."
                )
            kind = LOCAL_FORMATS.get(path.suffix.lower())
            if kind is None:
                raise DataError(f"{path}: unknown file type {path.suffix!r}. Use .csv, .tsv, .json, .jsonl or .parquet.")
            options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            dataset = datasets.load_dataset(kind, data_files=str(path), split="train", **options)
            origin = str(path)
        else:
            dataset = datasets.load_dataset(source, dataset_config, split=split)
            origin = f"{source}[{dataset_config or ''}:{split}]"
    except DataError:
        raise
    except Exception as error:
        if "corresponds to no data" in str(error):  # datasets' words for a file with a header and no rows
            raise DataError(f"{source} has no rows. Point to a file or split with data.") from error
        hint = ""
        if "scripts are no longer supported" in str(error):  # e.g. ought/raft: its Parquet export still loads
            hint = (f" This `datasets` no longer runs loading scripts; the Hub's Parquet export of the dataset still loads: "
                    f"--{field} 'hf://datasets/{source}@refs/convert/parquet/{dataset_config or 'default'}/{split}/*.parquet'.")
        elif is_network_error(error):
            hint = f" The Hugging Face Hub could not be reached: use a local copy instead, --{field} PATH (a CSV, JSONL or Parquet file)."
        raise DataError(f"Could not read data from {source!r}: {type(error).__name__}: {error}.{hint}") from error
    return table_from_dataset(dataset, origin)


def is_network_error(error: BaseException) -> bool:
    """A failure to reach a server (offline mode, DNS, refused connection, timeout), whichever HTTP library raised it."""
    while error is not None:
        if isinstance(error, (ConnectionError, TimeoutError)):  # OfflineModeIsEnabled is a ConnectionError
            return True
        if any(word in type(error).__name__ for word in ("Connect", "Timeout", "Offline", "NetworkError")):
            return True
        error = error.__cause__ or error.__context__
    return False


def load_remote_table(source: str, field: str = "train_file") -> Table:
    """Files at a URL, hf:// (datasets' address of files in a Hub repo) included, read by their extension."""
    import datasets

    address = source.split("?", 1)[0].rstrip("/")
    suffix = Path(address.replace("*", "x")).suffix.lower()
    kind = LOCAL_FORMATS.get(suffix)
    if kind is None:
        raise DataError(
            f"{field}: {source!r} does not end in a file type softprompt reads (.csv, .tsv, .json, .jsonl, .parquet); "
            "point to the files, e.g. hf://datasets/ought/raft@refs/convert/parquet/twitter_complaints/train/*.parquet."
        )
    options = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        dataset = datasets.load_dataset(kind, data_files=source, split="train", **options)
    except Exception as error:
        where = "the Hugging Face Hub" if source.startswith(HUB_PREFIX) else "its server"
        local = f"point to a local copy: --{field} PATH (a CSV, JSONL or Parquet file with the same columns)"
        if is_network_error(error):
            raise DataError(
                f"{field}: could not load {source!r}: {where} cannot be reached ({type(error).__name__}: {error}). "
                f"Offline, or without access to it, {local}."
            ) from error
        if "corresponds to no data" in str(error) or isinstance(error, FileNotFoundError):
            raise DataError(f"{field}: no data at {source!r} ({type(error).__name__}: {error}). Check the address, or {local}.") from error
        raise DataError(f"{field}: could not read {source!r} ({type(error).__name__}: {error}). Check the address, or {local}.") from error
    return table_from_dataset(dataset, source)


def table_from_dataset(dataset, origin: str) -> Table:
    """Rows and ClassLabel names of a loaded `datasets` split."""
    import datasets

    features = getattr(dataset, "features", {}) or {}
    class_names = None
    for feature in features.values():
        if isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{origin} has no rows. Point to a file or split with data.")
    return Table(rows, origin, class_names)


def resolve_label_names(spec: TaskSpec, table: Table) -> list[str]:
    """Class names by id: given, from ClassLabel, or the sorted distinct label strings. 'Unlabeled' is not a class."""
    names = spec.label_names or table.class_names
    if names is None:
        values = {row.get(spec.label_column) for row in table.rows}
        if all(isinstance(v, str) for v in values):
            names = sorted(values)
        else:
            raise DataError(
                f"{table.origin}: column {spec.label_column!r} holds label ids ({sorted(map(str, values))[:5]}...) but no "
                "label names are known. Give label_names, e.g. label_names: [Unlabeled, complaint, no complaint]."
            )
    return list(names)


def label_index(value, names: list[str], spec: TaskSpec, origin: str, row_number: int) -> int:
    """A row's label as an index into `names`; -1 for 'Unlabeled'. Errors name file, row and column."""
    if isinstance(value, str) and value in names:
        index = names.index(value)
    elif isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(names):
        index = int(value)
    elif isinstance(value, str) and value.strip().isdigit() and int(value) < len(names):
        index = int(value)
    else:
        raise DataError(
            f"{origin}, row {row_number}, column {spec.label_column!r}: label {value!r} is not in the label set "
            f"{names}. Fix the row or the label_names."
        )
    return -1 if names[index].strip().lower() == UNLABELED else index


@dataclass
class Example:
    """One tokenized row. `label` indexes the task's classes (-1: none)."""

    prompt_ids: list[int]
    target_ids: list[int]
    label: int
    truncated: bool
    text: str
    task: int | None = None
    """The task id the row runs with (`task_ids` in forward); None: the adapter's only task."""


class Encoder:
    """Turns rows into token ids with the task's template, verbalizer and length budget."""

    def __init__(self, tokenizer, spec: TaskSpec, label_names: list[str]):
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("softprompt needs a fast tokenizer (with offsets) to truncate text safely.")
        self.tokenizer = tokenizer
        self.spec = spec
        self.names = label_names
        self.classes = [i for i, name in enumerate(label_names) if name.strip().lower() != UNLABELED]
        self.class_names = [label_names[i] for i in self.classes]
        self.template = spec.prompt_template()
        self.fields = spec.template_fields()
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.label_tokens = spec.task_type != "SEQ_CLS"  # a classification head needs no label words

    def target_ids(self, class_position: int) -> list[int]:
        """Token ids of a class's verbalized label, then EOS (none for a classification head)."""
        if not self.label_tokens:
            return []
        text = self.spec.label_text(self.class_names[class_position])
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + self.eos

    def prompt(self, row: dict, origin: str = "input", row_number: int = 0) -> tuple[list[int], bool, str]:
        """-> (prompt ids, truncated?, the prompt text), cut to leave room for the longest label."""
        values = {}
        for column in self.fields:
            if column not in row:
                raise DataError(f"{origin}, row {row_number}: no column {column!r} (columns: {sorted(row)}). Set text_columns.")
            values[column] = "" if row[column] is None else str(row[column])
        # Fill the template, remembering where each field's text lies.
        text, spans = "", []
        for literal, name, _, _ in string.Formatter().parse(self.template):
            text += literal
            if name is not None:
                spans.append((len(text), len(text) + len(values[name])))
                text += values[name]
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        budget = self.spec.max_length - max(len(self.target_ids(i)) for i in range(len(self.class_names)))
        excess = len(ids) - budget
        if excess <= 0:
            return ids, False, text
        # Drop the last `excess` tokens that lie inside field text (latest fields first).
        in_field = [i for i, (start, end) in enumerate(offsets) if end > start and any(a <= start and end <= b for a, b in spans)]
        if len(in_field) < excess:
            raise DataError(
                f"{origin}, row {row_number}: the template and label alone need more than max_length="
                f"{self.spec.max_length} tokens. Raise max_length or shorten the template."
            )
        dropped = set(in_field[-excess:])
        return [t for i, t in enumerate(ids) if i not in dropped], True, text

    def encode(self, row: dict, origin: str = "input", row_number: int = 0, labelled: bool = True) -> Example:
        prompt_ids, truncated, text = self.prompt(row, origin, row_number)
        label = -1
        if labelled:
            if self.spec.label_column not in row:
                raise DataError(f"{origin}, row {row_number}: no label column {self.spec.label_column!r} (columns: {sorted(row)}).")
            index = label_index(row[self.spec.label_column], self.names, self.spec, origin, row_number)
            label = self.classes.index(index) if index >= 0 else -1
        target = self.target_ids(label) if label >= 0 else []
        return Example(prompt_ids, target, label, truncated, text, self.spec.task_id)

    def encode_table(self, table: Table, labelled: bool = True, require_labels: bool = True) -> list[Example]:
        # Row numbers count like a spreadsheet: the header is row 1.
        examples = [self.encode(row, table.origin, n + 2, labelled) for n, row in enumerate(table.rows)]
        if labelled and require_labels:
            unlabelled = [n + 2 for n, e in enumerate(examples) if e.label < 0]
            if unlabelled:
                raise DataError(
                    f"{table.origin}: {len(unlabelled)} of {len(examples)} rows are 'Unlabeled' (rows {unlabelled[:5]}...). "
                    "Training and accuracy need labelled rows: use a labelled split (e.g. a dev file)."
                )
        return examples


def pad_left(sequences: list[list[int]], pad_value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([[pad_value] * (width - len(s)) + s for s in sequences], dtype=torch.long)


def collate_training(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded to the longest row of the batch: input_ids, attention_mask [B, T]; labels -100 off-target;
    task_ids [B] when the rows carry task ids (a multitask run)."""
    sequences = [e.prompt_ids + e.target_ids for e in examples]
    labels = [[-100] * len(e.prompt_ids) + e.target_ids for e in examples]
    batch = {
        "input_ids": pad_left(sequences, pad_id),
        "attention_mask": pad_left([[1] * len(s) for s in sequences], 0),
        "labels": pad_left(labels, -100),
    }
    tasks = row_task_ids(examples)
    if tasks is not None:
        batch["task_ids"] = torch.tensor(tasks, dtype=torch.long)
    return batch


def row_task_ids(examples: list[Example]) -> list[int] | None:
    """The rows' task ids for `task_ids=`, or None when no row carries one (the adapter's only task)."""
    if all(e.task is None for e in examples):
        return None
    return [e.task or 0 for e in examples]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within groups of `group` batches, shuffle batch order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = batch_size * group
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches, longest first, so padding is minimal; callers restore the order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
