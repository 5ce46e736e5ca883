"""The data layer: tables in, tokenized and batched rows out. Knows nothing of models.

- tables.py     local files, hf://datasets/... files, Hub datasets -> rows
- templates.py  TaskSpec (a task's columns, labels, template) and RowTokenizer (rows -> token ids)
- batching.py   padding, training order, evaluation order
- rows.py       sampling, stratified splits, class balancing
- task_file.py  task.json, the TaskSpec saved beside an adapter
"""

from ..errors import DataError
from .batching import collate_training, length_grouped_batches, pad_left, row_task_ids, sorted_batches
from .rows import balanced, groups_by_label, groups_by_task, sample_rows, stratified_split
from .tables import HUB_PREFIX, Table, is_remote, load_table
from .task_file import MISSING_TASK_HINT, TASK_NAME, load_task, read_task, read_tasks, write_task
from .templates import UNLABELED, Example, RowTokenizer, TaskSpec, label_index, resolve_label_names

__all__ = [
    "HUB_PREFIX",
    "MISSING_TASK_HINT",
    "TASK_NAME",
    "UNLABELED",
    "DataError",
    "Example",
    "RowTokenizer",
    "Table",
    "TaskSpec",
    "balanced",
    "collate_training",
    "groups_by_label",
    "groups_by_task",
    "is_remote",
    "label_index",
    "length_grouped_batches",
    "load_table",
    "load_task",
    "pad_left",
    "read_task",
    "read_tasks",
    "resolve_label_names",
    "row_task_ids",
    "sample_rows",
    "sorted_batches",
    "stratified_split",
    "write_task",
]
