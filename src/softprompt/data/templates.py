"""A task's rows as token ids: the template filled with a row's text columns, the verbalized label after it.

A row becomes `prompt_ids + target_ids`, where the prompt is the template filled with the row's text columns
and the target is the verbalized label and EOS (none when a head picks the class). Too-long rows lose tokens
from the end of their longest text field, never from the template or the label.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from ..errors import DataError
from .tables import Table

UNLABELED = "unlabeled"


@dataclass
class TaskSpec:
    """What the columns mean and how a row is shown to the model."""

    text_columns: list[str] = field(default_factory=lambda: ["Tweet text"])
    """The columns holding the text; the first is the one a bare text fills at prediction."""
    label_column: str = "Label"
    """The column holding the label (a name, or an id into label_names)."""
    label_names: list[str] | None = None
    """Class names by label id; None: from the dataset's ClassLabel, or the label strings found."""
    verbalizer: dict[str, str] | None = None
    """Label name -> the text the model writes for it; default: the label name itself."""
    template: str | None = None
    """Format string over the text columns; default as in PEFT's guide: '{Tweet text} : {text} Label : '."""
    max_length: int = 64
    """The longest a row may be in tokens, label included; longer rows lose text from the end of their longest field."""
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
            raise DataError(
                f"The template {template!r} uses {missing}, which are not among text_columns {self.text_columns}."
            )
        return fields

    def label_text(self, name: str) -> str:
        return (self.verbalizer or {}).get(name, name)


def resolve_label_names(spec: TaskSpec, table: Table) -> list[str]:
    """Class names by id: given, from ClassLabel, or the sorted distinct label strings. 'Unlabeled' is not a class."""
    names = spec.label_names or table.class_names
    if names is None:
        values = {row.get(spec.label_column) for row in table.rows}
        if all(isinstance(v, str) for v in values):
            names = sorted(values)
        else:
            raise DataError(
                f"{table.origin}: column {spec.label_column!r} holds label ids ({sorted(map(str, values))[:5]}...) "
                "but no label names are known. "
                "Give label_names, e.g. label_names: [Unlabeled, complaint, no complaint]."
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


class RowTokenizer:
    """Turns a task's rows into token ids with its template, verbalizer and length budget.

    label_words: rows end with the class's label words and EOS (a language model writes them); False when a
    classification head picks the class (its task type's `TaskBehaviour.label_words`).
    """

    def __init__(self, tokenizer, spec: TaskSpec, label_names: list[str], label_words: bool = True):
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
        self.label_words = label_words

    def target_ids(self, class_position: int) -> list[int]:
        """Token ids of a class's verbalized label, then EOS (none for a classification head)."""
        if not self.label_words:
            return []
        text = self.spec.label_text(self.class_names[class_position])
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + self.eos

    def prompt(self, row: dict, origin: str = "input", row_number: int = 0) -> tuple[list[int], bool, str]:
        """-> (prompt ids, truncated?, the prompt text), cut to leave room for the longest label."""
        values = {}
        for column in self.fields:
            if column not in row:
                raise DataError(
                    f"{origin}, row {row_number}: no column {column!r} (columns: {sorted(row)}). Set text_columns."
                )
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
        in_field = [
            i
            for i, (start, end) in enumerate(offsets)
            if end > start and any(a <= start and end <= b for a, b in spans)
        ]
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
                raise DataError(
                    f"{origin}, row {row_number}: no label column {self.spec.label_column!r} (columns: {sorted(row)})."
                )
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
                    f"{table.origin}: {len(unlabelled)} of {len(examples)} rows are 'Unlabeled' (rows "
                    f"{unlabelled[:5]}...). "
                    "Training and accuracy need labelled rows: use a labelled split (e.g. a dev file)."
                )
        return examples
