"""Labelled tables from local files (CSV/TSV/JSON/JSONL/Parquet), files on the Hub (hf://datasets/...) or a Hub
dataset's split, read with `datasets`. Errors name the setting that gave the source (train_file, --data, ...)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
HUB_PREFIX = (
    "hf://"  # datasets' own address of files in a Hub repo: hf://datasets/OWNER/NAME[@REVISION]/PATH (globs allowed)
)


def is_remote(source) -> bool:
    """A URL (hf://datasets/..., https://...), read by `datasets` rather than from this machine's disk."""
    return isinstance(source, str) and "://" in source


@dataclass
class Table:
    """Rows of a split, with where they came from (for error messages) and the ClassLabel names if any."""

    rows: list[dict]
    origin: str
    class_names: list[str] | None = None


def load_table(
    source: str, dataset_config: str | None = None, split: str = "train", field: str = "train_file"
) -> Table:
    """A local CSV/TSV/JSON/JSONL/Parquet file; files on the Hub by datasets' address
    (`hf://datasets/ought/raft@refs/convert/parquet/twitter_complaints/train/*.parquet`, or any URL datasets reads);
    or a split of a hub dataset without a loading script (`load_dataset(source, dataset_config, split=split)`).

    From Python, `source` may also be rows already in memory: a datasets.Dataset, a pandas DataFrame or a list of
    dicts. `field` names the setting that gave `source` (e.g. train_file), for the error messages.
    """
    import datasets  # imported here: a second of import time that the model layers do not need

    if not isinstance(source, (str, os.PathLike)):
        return table_from_rows(source, field)
    if is_remote(source):
        return load_remote_table(source, field)
    path = Path(source).expanduser()
    try:
        if path.suffix.lower() in LOCAL_FORMATS or path.is_file():
            if not path.is_file():
                raise DataError(
                    f"Data file {path} does not exist ({field}). Check the path (relative paths start from the "
                    "current folder; "
                    f"in a config file, from its folder), or give another: --{field} PATH."
                )
            kind = LOCAL_FORMATS.get(path.suffix.lower())
            if kind is None:
                raise DataError(
                    f"{path}: unknown file type {path.suffix!r}. Use .csv, .tsv, .json, .jsonl or .parquet."
                )
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
            hint = (
                " This `datasets` no longer runs loading scripts; the Hub's Parquet export of the dataset still loads: "
                f"--{field} 'hf://datasets/{source}@refs/convert/parquet/"
                f"{dataset_config or 'default'}/{split}/*.parquet'."
            )
        elif is_network_error(error):
            hint = (
                f" The Hugging Face Hub could not be reached: use a local copy instead, --{field} PATH (a CSV, "
                "JSONL or Parquet file)."
            )
        raise DataError(f"Could not read data from {source!r}: {type(error).__name__}: {error}.{hint}") from error
    return table_from_dataset(dataset, origin)


def is_network_error(error: BaseException) -> bool:
    """A failure to reach a server (offline mode, DNS, refused connection, timeout), whichever HTTP library
    raised it."""
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
            raise DataError(
                f"{field}: no data at {source!r} ({type(error).__name__}: {error}). Check the address, or {local}."
            ) from error
        raise DataError(
            f"{field}: could not read {source!r} ({type(error).__name__}: {error}). Check the address, or {local}."
        ) from error
    return table_from_dataset(dataset, source)


def table_from_rows(source, field: str) -> Table:
    """Rows given in Python: a datasets.Dataset (its ClassLabel names kept), a pandas DataFrame, or a list of dicts."""
    origin = f"{field} ({type(source).__name__})"
    if hasattr(source, "features") and hasattr(source, "to_list"):  # a datasets.Dataset
        return table_from_dataset(source, origin)
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        rows = source.to_dict("records")
    elif isinstance(source, (list, tuple)) and all(isinstance(row, dict) for row in source):
        rows = list(source)
    else:
        raise DataError(
            f"{field}: got a {type(source).__name__}; give a path, an hf://datasets/... address, a datasets.Dataset, "
            "a pandas DataFrame or a list of row dicts."
        )
    if not rows:
        raise DataError(f"{origin} has no rows.")
    return Table(rows, origin)


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
