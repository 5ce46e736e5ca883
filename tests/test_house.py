"""The shape of the house, checked so it cannot silently erode: layered imports, lint and format, files short
enough to read, no imports hidden in functions to dodge a circle, help generated from the fields it documents."""

import ast
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.data import TaskSpec
from softprompt.training import CalibrationConfig, TaskConfig, TrainConfig, help_text
from softprompt.training.config_help import field_docs

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "softprompt"
MODULES = sorted(PACKAGE.rglob("*.py"))
TOOLS = Path(sys.executable).parent


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        path = shutil.which(name)
    assert path is not None, f"{name} is not installed: pip install -e '.[dev]' (scripts/setup.sh does)"
    return str(path)


def test_the_import_layers_hold():
    done = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_lint_and_format_pass():
    lint = subprocess.run(
        [tool("ruff"), "check", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    form = subprocess.run(
        [tool("ruff"), "format", "--check", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert form.returncode == 0, form.stdout + form.stderr


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_read_top_to_bottom(path):
    """Under ~400 lines a file; no function longer than a screen (80 lines)."""
    text = path.read_text()
    assert len(text.splitlines()) <= 420, f"{path.name} has {len(text.splitlines())} lines: split it by concern"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}:{node.lineno} {node.name}() has {length} lines"


# Imported where used, on purpose: an optional extra, or seconds of import time most commands never need.
LAZY = {"serving": "FastAPI is the optional serve extra", "training": "hf_trainer imports transformers' Trainer"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_package_import_hides_in_a_function(path):
    """Imports of softprompt's own modules sit at the top: one inside a function is how a circle hides."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (
                    inner.level > 0 or (inner.module or "").startswith("softprompt")
                ):
                    if (inner.module or "").split(".")[0] not in LAZY:
                        pytest.fail(f"{path.name}:{inner.lineno} imports {inner.module!r} inside {node.name}()")


def test_train_help_documents_every_config_field():
    text = help_text()
    for prefix, cls in (
        ("", TrainConfig),
        ("task.", TaskSpec),
        ("calibration.", CalibrationConfig),
        ("tasks.I.", TaskConfig),
    ):
        docs = field_docs(cls)
        for item in dataclasses.fields(cls):
            assert docs.get(item.name), f"{cls.__name__}.{item.name} has no docstring"
            assert f"  {prefix}{item.name} (default: " in text
    for method in ("prompt_tuning", "p_tuning", "prefix_tuning", "multitask_prompt_tuning", "cpt"):
        assert method in text
