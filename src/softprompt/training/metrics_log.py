"""The run's metrics log: metrics.jsonl (one line per epoch) and its plot metrics.png, rewritten atomically."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .. import adapter_io


def append_metrics(out: Path, line: dict, history: list[dict]) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    adapter_io.atomic_write_bytes(out / "metrics.jsonl", text.encode())
    if importlib.util.find_spec("matplotlib") is not None:  # plotting is optional (pip install 'softprompt[plot]')
        plot_metrics(history, out / "metrics.png")


def plot_metrics(history: list[dict], path: Path) -> None:
    """Loss (left) and accuracy/macro-F1 (right) by epoch."""
    import matplotlib  # imported here: optional, and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "eval_loss", "val_loss"):
        if key in history[0]:
            left.plot(epochs, [h[key] for h in history], marker="o", label=key)
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    for key in ("eval_accuracy", "eval_macro_f1", "val_accuracy", "val_macro_f1"):
        if key in history[0]:
            right.plot(epochs, [h[key] for h in history], marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("classification")
    if right.lines:
        right.legend()
    figure.tight_layout()
    temp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temp, dpi=80)
    plt.close(figure)
    os.replace(temp, path)


def format_line(line: dict) -> str:
    shown = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()]
    return "  ".join(shown)
