"""Calibration of label scores by the class prior on unlabelled inputs ("prior correction").

A prompted language model prefers some label words whatever the input (Zhao et al. 2021, "Calibrate
before use"). With unlabelled inputs of the task (or content-free ones such as "N/A") the model's average
class distribution is estimated once,

    prior_c = mean over unlabelled u of p(c | u),

and every prediction is divided by it and renormalised:

    p'(c | x) = (p(c | x) / prior_c) / sum_k (p(k | x) / prior_k).

The prior is stored beside the adapter as `calibration.json` (JSON, no pickle), so `Predictor`,
`softprompt eval / predict / serve` apply it on every load. Write one with

    softprompt calibrate ADAPTER --data unlabelled.csv [--column "Tweet text"] [--limit 300]

or with `calibration: {texts_file: ..., column: ..., limit: ...}` in a training config (the adapter
`softprompt train` keeps is calibrated at the end of the run).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from . import adapters

CALIBRATION_NAME = "calibration.json"
DEFAULT_LIMIT = 300


def estimate_prior(probabilities: torch.Tensor) -> torch.Tensor:
    """The mean class distribution [K] of class probabilities [N, K] (N >= 1)."""
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError("estimate_prior needs class probabilities of one or more inputs, shape [N, K].")
    prior = probabilities.double().mean(0)
    return (prior / prior.sum()).to(probabilities.dtype)


def calibrate(probabilities: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """Class probabilities [..., K] divided by the prior [K] and renormalised; unchanged when prior is None."""
    if prior is None:
        return probabilities
    prior = torch.as_tensor(prior, dtype=probabilities.dtype, device=probabilities.device)
    if prior.shape[-1] != probabilities.shape[-1]:
        raise ValueError(f"The prior has {prior.shape[-1]} classes but the probabilities have {probabilities.shape[-1]}.")
    adjusted = probabilities / prior.clamp_min(1e-12)
    return adjusted / adjusted.sum(-1, keepdim=True)


def write_calibration(folder: str | os.PathLike, class_names: list[str], prior: torch.Tensor, source: str = "", count: int = 0) -> Path:
    """Store the prior beside an adapter (calibration.json); returns the file's path."""
    prior = [float(p) for p in torch.as_tensor(prior).tolist()]
    if len(prior) != len(class_names):
        raise ValueError(f"{len(prior)} prior values for {len(class_names)} classes.")
    payload = {"method": "prior", "class_names": list(class_names), "prior": prior, "source": source, "count": count}
    path = Path(folder) / CALIBRATION_NAME
    adapters.atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
    return path


def read_calibration(location: str | os.PathLike, class_names: list[str] | None = None) -> torch.Tensor | None:
    """The prior stored with an adapter (folder or Hub repo), in `class_names` order; None if it has none."""
    path = adapters.local_or_hub_file(location, CALIBRATION_NAME, required=False)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        names, prior = list(data["class_names"]), [float(p) for p in data["prior"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise adapters.AdapterError(f"{path} is not a valid calibration file ({error}); delete it or write it again.") from error
    if data.get("method", "prior") != "prior" or len(names) != len(prior) or not all(p > 0 for p in prior):
        raise adapters.AdapterError(f"{path} is not a valid calibration file: expected positive 'prior' values, one per class.")
    if class_names is not None:
        if sorted(names) != sorted(class_names):
            raise adapters.AdapterError(f"{path} calibrates the classes {names}, but the adapter's task has {class_names}.")
        prior = [prior[names.index(name)] for name in class_names]
    return torch.tensor(prior)


def read_texts(source: str, column: str | None = None, limit: int | None = DEFAULT_LIMIT, seed: int = 0) -> list[str]:
    """Texts of one column of a local table (CSV/TSV/JSON/JSONL/Parquet; by default its first column);
    with `limit`, a seeded random sample of that many rows (the same for every run)."""
    from .data import DataError, load_table

    rows = load_table(str(source)).rows
    if not rows:
        raise DataError(f"{source} has no rows to calibrate on.")
    column = column or next(iter(rows[0]))
    if column not in rows[0]:
        raise DataError(f"{source} has no column {column!r}; it has {list(rows[0])}.")
    texts = [str(row[column]) for row in rows if row[column] is not None]
    if limit is not None and len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts


def calibrate_adapter(predictor, folder: str | os.PathLike, texts: list[str], adapter: str | None = None, source: str = "") -> torch.Tensor:
    """Estimate an adapter's prior on unlabelled texts (through its template), use it and write it to `folder`."""
    name = predictor.resolve(adapter)
    prior = predictor.fit_calibration(texts, name)
    write_calibration(folder, predictor.task(name).class_names, prior, source, len(texts))
    return prior


def calibrate_trained(adapter_dir: str | os.PathLike, settings: dict, device=None) -> torch.Tensor:
    """The `calibration` option of a training config: {texts_file, column (default: the task's first text
    column), limit (default 300; null: every row)} -> calibration.json in the trained adapter's folder."""
    from .predictor import Predictor

    unknown = sorted(set(settings) - {"texts_file", "column", "limit"})
    if unknown or "texts_file" not in settings:
        raise ValueError(f"calibration takes texts_file (required), column and limit; got {sorted(settings)}.")
    predictor = Predictor.from_pretrained(str(adapter_dir), device=device)
    predictor.use_calibration = False
    column = settings.get("column") or predictor.task().spec.text_columns[0]
    texts = read_texts(settings["texts_file"], column, settings.get("limit", DEFAULT_LIMIT))
    return calibrate_adapter(predictor, adapter_dir, texts, source=str(settings["texts_file"]))


def add_command(subcommands) -> None:
    """`softprompt calibrate ADAPTER --data FILE`."""
    parser = subcommands.add_parser("calibrate", help="store a class prior estimated on unlabelled texts with an adapter")
    parser.add_argument("adapter", help="an adapter folder written by softprompt train")
    parser.add_argument("--data", required=True, help="unlabelled inputs of the task (CSV/TSV/JSON/JSONL/Parquet)")
    parser.add_argument("--column", help="the text column (default: the task's first text column)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="a seeded sample of this many rows (0: all)")
    parser.add_argument("--device", default=None)
    parser.set_defaults(run=command_calibrate)


def command_calibrate(args, extra=None) -> int:
    prior = calibrate_trained(args.adapter, {"texts_file": args.data, "column": args.column, "limit": args.limit or None}, args.device)
    names = read_calibration_names(args.adapter)
    shown = ", ".join(f"{name} {p:.3f}" for name, p in zip(names, prior.tolist()))
    print(f"Wrote {Path(args.adapter) / CALIBRATION_NAME}: class prior {shown}.")
    return 0


def read_calibration_names(location) -> list[str]:
    path = adapters.local_or_hub_file(location, CALIBRATION_NAME)
    return json.loads(path.read_text())["class_names"]
