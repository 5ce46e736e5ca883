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

from .. import adapter_io
from ..data import DataError, load_table
from ..errors import AdapterError

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
        raise ValueError(
            f"The prior has {prior.shape[-1]} classes but the probabilities have {probabilities.shape[-1]}."
        )
    adjusted = probabilities / prior.clamp_min(1e-12)
    return adjusted / adjusted.sum(-1, keepdim=True)


def write_calibration(
    folder: str | os.PathLike, class_names: list[str], prior: torch.Tensor, source: str = "", count: int = 0
) -> Path:
    """Store the prior beside an adapter (calibration.json); returns the file's path."""
    prior = [float(p) for p in torch.as_tensor(prior).tolist()]
    if len(prior) != len(class_names):
        raise ValueError(f"{len(prior)} prior values for {len(class_names)} classes.")
    payload = {"method": "prior", "class_names": list(class_names), "prior": prior, "source": source, "count": count}
    path = Path(folder) / CALIBRATION_NAME
    adapter_io.atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
    return path


def read_calibration(location: str | os.PathLike, class_names: list[str] | None = None) -> torch.Tensor | None:
    """The prior stored with an adapter (folder or Hub repo), in `class_names` order; None if it has none."""
    path = adapter_io.local_or_hub_file(location, CALIBRATION_NAME, required=False)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        names, prior = list(data["class_names"]), [float(p) for p in data["prior"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise AdapterError(f"{path} is not a valid calibration file ({error}); delete it or write it again.") from error
    if data.get("method", "prior") != "prior" or len(names) != len(prior) or not all(p > 0 for p in prior):
        raise AdapterError(f"{path} is not a valid calibration file: expected positive 'prior' values, one per class.")
    if class_names is not None:
        if sorted(names) != sorted(class_names):
            raise AdapterError(f"{path} calibrates the classes {names}, but the adapter's task has {class_names}.")
        prior = [prior[names.index(name)] for name in class_names]
    return torch.tensor(prior)


def read_texts(
    source, column: str | None = None, limit: int | None = DEFAULT_LIMIT, seed: int = 0, field: str = "texts_file"
) -> list[str]:
    """Texts of one column of a table (a file, hf://datasets/... files, or rows from Python; by default its first
    column); with `limit`, a seeded random sample of that many rows (the same for every run). `field` names the
    setting that gave `source`, for the error messages."""
    rows = load_table(source, field=field).rows
    if not rows:
        raise DataError(f"{source} has no rows to calibrate on.")
    column = column or next(iter(rows[0]))
    if column not in rows[0]:
        raise DataError(f"{source} has no column {column!r}; it has {list(rows[0])}.")
    texts = [str(row[column]) for row in rows if row[column] is not None]
    if limit is not None and len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts
