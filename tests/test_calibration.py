"""Prior correction of label scores: the arithmetic, the stored prior, and its reuse on reload (Predictor, CLI)."""

import json

import pytest
import torch

from softprompt import AdapterError, Predictor
from softprompt.inference.calibration import (
    CALIBRATION_NAME,
    calibrate,
    estimate_prior,
    read_calibration,
    read_texts,
    write_calibration,
)
from softprompt.training import TrainConfig, train
from test_workflow import run_cli
from tiny_run import run_config, toy_rows, write_csv

TEXTS = ["my order never arrived", "thanks for the quick help", "@Shop3 wifi down all day", "love the new menu"]


def test_calibrate_divides_by_the_prior_and_renormalises():
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    prior = estimate_prior(probabilities)
    torch.testing.assert_close(prior, torch.tensor([0.6, 0.4]))
    got = calibrate(probabilities, prior)
    by_hand = torch.tensor([[0.9 / 0.6, 0.1 / 0.4], [1.0, 1.0], [0.3 / 0.6, 0.7 / 0.4]])
    torch.testing.assert_close(got, by_hand / by_hand.sum(-1, keepdim=True))
    assert got[1].tolist() == pytest.approx([0.5, 0.5])  # an input as typical as the prior is undecided
    assert calibrate(probabilities, None) is probabilities
    with pytest.raises(ValueError, match="classes"):
        calibrate(probabilities, torch.tensor([0.2, 0.3, 0.5]))


def test_stored_prior_follows_the_task_class_order(tmp_path):
    write_calibration(tmp_path, ["complaint", "no complaint"], torch.tensor([0.7, 0.3]), "u.csv", 10)
    assert read_calibration(tmp_path).tolist() == pytest.approx([0.7, 0.3])
    assert read_calibration(tmp_path, ["no complaint", "complaint"]).tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(AdapterError, match="calibrates the classes"):
        read_calibration(tmp_path, ["hate", "not hate"])
    (tmp_path / CALIBRATION_NAME).write_text('{"class_names": ["a", "b"], "prior": [0.5]}')
    with pytest.raises(AdapterError, match="not a valid calibration file"):
        read_calibration(tmp_path)
    (tmp_path / "plain").mkdir()
    assert read_calibration(tmp_path / "plain") is None


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """One tiny training run whose config asks for calibration on unlabelled texts."""
    tmp_path = tmp_path_factory.mktemp("calibrated")
    unlabelled = write_csv(tmp_path / "unlabelled.csv", [{**row, "Label": 0} for row in toy_rows(9, seed=5)])
    config = run_config(
        tmp_path, epochs=1, lr=0.3, eval_file=None, calibration={"texts_file": str(unlabelled), "limit": 6}
    )
    train(TrainConfig.from_dict(config))
    return tmp_path


def test_training_stores_the_prior_of_the_unlabelled_texts_and_reload_applies_it(calibrated_run):
    adapter = calibrated_run / "run" / "adapter"
    stored = json.loads((adapter / CALIBRATION_NAME).read_text())
    assert stored["count"] == 6 and stored["class_names"] == ["complaint", "no complaint"]

    predictor = Predictor.from_pretrained(str(adapter))
    assert predictor.calibrations[predictor.adapter_names[0]].tolist() == pytest.approx(stored["prior"])
    calibrated = predictor.probabilities(TEXTS)
    predictor.use_calibration = False
    plain = predictor.probabilities(TEXTS)
    # the prior is the mean plain distribution over the same seeded sample of the unlabelled texts
    sample = read_texts(str(calibrated_run / "unlabelled.csv"), "Tweet text", limit=6)
    assert predictor.probabilities(sample).mean(0).tolist() == pytest.approx(stored["prior"], abs=1e-5)
    by_hand = plain / torch.tensor(stored["prior"])
    torch.testing.assert_close(calibrated, by_hand / by_hand.sum(-1, keepdim=True))
    assert not torch.allclose(calibrated, plain)  # the toy prior is not uniform, so the test can fail

    predictor.use_calibration = True
    rows = predictor.classify(TEXTS)
    torch.testing.assert_close(torch.tensor([list(r["probabilities"].values()) for r in rows]), calibrated)
    assert [r["label"] for r in rows] == [
        predictor.row_tokenizer().class_names[i] for i in calibrated.argmax(-1).tolist()
    ]
    twice = predictor.ensemble_probabilities(TEXTS, [predictor.adapter_names[0]] * 2)
    torch.testing.assert_close(twice, calibrated)


def test_cli_calibrate_writes_the_prior_that_predict_then_uses(calibrated_run, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(calibrated_run / "run" / "adapter", adapter)
    (adapter / CALIBRATION_NAME).unlink()
    plain = Predictor.from_pretrained(str(adapter))
    assert not plain.calibrations
    unlabelled = str(calibrated_run / "unlabelled.csv")
    done = run_cli(["calibrate", str(adapter), "--data", unlabelled, "--limit", "0"])
    assert done.returncode == 0, done.stderr
    assert "class prior" in done.stdout
    expected_prior = plain.probabilities(read_texts(unlabelled, "Tweet text", limit=None)).mean(0)
    assert json.loads((adapter / CALIBRATION_NAME).read_text())["prior"] == pytest.approx(
        expected_prior.tolist(), abs=1e-5
    )

    done = run_cli(["predict", str(adapter), *TEXTS[:2]])
    assert done.returncode == 0, done.stderr
    got = [json.loads(line)["p(complaint)"] for line in done.stdout.splitlines()]
    expected = calibrate(plain.probabilities(TEXTS[:2]), expected_prior)[
        :, plain.row_tokenizer().class_names.index("complaint")
    ]
    assert got == pytest.approx(expected.tolist(), abs=1e-4)

    done = run_cli(["predict", str(adapter), "--no-calibration", *TEXTS[:2]])
    assert done.returncode == 0, done.stderr
    got = [json.loads(line)["p(complaint)"] for line in done.stdout.splitlines()]
    assert got == pytest.approx(
        plain.probabilities(TEXTS[:2])[:, plain.row_tokenizer().class_names.index("complaint")].tolist(), abs=1e-4
    )


def test_config_rejects_a_calibration_without_texts(tmp_path):
    with pytest.raises(ValueError, match="calibration takes"):
        TrainConfig.from_dict(run_config(tmp_path, calibration={"column": "Tweet text"}))


def test_config_reads_the_texts_file_from_the_config_folder(tmp_path):
    import yaml

    config = run_config(tmp_path, calibration={"texts_file": "unlabelled.csv"})
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "run.yaml").write_text(yaml.safe_dump(config))
    loaded = TrainConfig.from_yaml(tmp_path / "conf" / "run.yaml")
    assert loaded.calibration.texts_file == str((tmp_path / "conf" / "unlabelled.csv").resolve())


def test_server_classify_applies_the_stored_prior(calibrated_run):
    from fastapi.testclient import TestClient

    from softprompt.serving import create_app

    predictor = Predictor.from_pretrained(str(calibrated_run / "run" / "adapter"))
    name = predictor.adapter_names[0]
    expected = predictor.probabilities(TEXTS)
    with TestClient(create_app(predictor)) as client:
        body = client.post("/v1/classify", json={"model": name, "input": TEXTS}).json()
    got = torch.tensor([list(row["probabilities"].values()) for row in body["data"]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    predictor.use_calibration = False
    assert not torch.allclose(got, predictor.probabilities(TEXTS), atol=1e-4)


def test_a_missing_calibration_file_fails_before_training_naming_the_setting(tmp_path):
    config = TrainConfig.from_dict(run_config(tmp_path, calibration={"texts_file": str(tmp_path / "none.csv")}))
    with pytest.raises(ValueError, match=r"calibration\.texts_file"):
        train(config)
    assert not (tmp_path / "run" / "checkpoint").exists()  # no epoch was spent first
