"""The command line as a user meets it: --version, defaults in help, options in either spelling, repeatable
--ensemble that leaves the texts alone, texts that start with "-", --model/--dtype wherever an adapter is loaded,
and --field overrides read as their field's type."""

import json
from pathlib import Path

import pytest

from softprompt import __version__, cli
from softprompt.cli.options import parse_overrides


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def predictions(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"softprompt {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "rows per batch (default: 16)" in text and "(default: auto)" in text and "--model" in text
    for command in ("eval", "calibrate", "serve"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "--model" in capsys.readouterr().out


def test_ensemble_repeats_and_leaves_the_texts_alone(trained_adapters, capsys):
    first, second = trained_adapters["complaints"], trained_adapters["complaints"]
    code, out, err = run(capsys, "predict", first, "--ensemble", second, "my order never arrived", "love the new menu")
    assert code == 0, err
    rows = predictions(out)
    assert [r["Tweet text"] for r in rows] == ["my order never arrived", "love the new menu"]  # neither swallowed
    alone = predictions(run(capsys, "predict", first, "my order never arrived", "love the new menu")[1])
    assert [r["p(complaint)"] for r in rows] == pytest.approx([r["p(complaint)"] for r in alone], abs=1e-4)


def test_either_spelling_and_texts_that_start_with_a_dash(trained_adapters, capsys):
    adapter = trained_adapters["complaints"]
    dashed = predictions(run(capsys, "predict", adapter, "--batch-size", "2", "--", "-5 stars, never again", "--x")[1])
    underscored = predictions(
        run(capsys, "predict", adapter, "--batch_size", "2", "--", "-5 stars, never again", "--x")[1]
    )
    assert [r["Tweet text"] for r in dashed] == ["-5 stars, never again", "--x"] and dashed == underscored


def test_model_and_dtype_options(trained_adapters, capsys):
    adapter = trained_adapters["complaints"]
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    code, out, err = run(capsys, "predict", adapter, "--model", base, "--dtype", "float32", "hello")
    assert code == 0, err
    assert predictions(out)[0]["label"] in ("complaint", "no complaint")
    code, out, err = run(capsys, "predict", adapter, "--model", base + "-missing", "hello")
    assert code == 2 and f"Could not load base model '{base}-missing'" in err
    with pytest.raises(SystemExit) as done:
        cli.main(["predict", adapter, "--dtype", "int8", "hello"])
    assert done.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err


def test_overrides_are_read_as_their_fields_types():
    overrides = parse_overrides(
        ["--task.template", "no", "--method_options.prompt_tuning_init_text", "yes", "--lr", "1e-3",
         "--eval-file", "null", "--epochs=3", "--balance_classes", "true", "--task.label_names", "[a, b]"]
    )  # fmt: skip
    assert overrides == {
        "task.template": "no",  # a string field keeps the text (YAML would read False)
        "method_options.prompt_tuning_init_text": "yes",
        "lr": 0.001,  # YAML reads 1e-3 as a string
        "eval_file": None,
        "epochs": 3,
        "balance_classes": True,
        "task.label_names": ["a", "b"],
    }
