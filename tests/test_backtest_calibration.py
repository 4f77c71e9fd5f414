"""`backtest --fit` and calibration: temperatures fitted on the earlier requests only,
every strategy calibration can change compared calibrated and raw, the config lines of
a calibrated winner; a configured calibration_file is applied without --fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from tests.test_backtest import MODELS, history, make_config
from worker.backtest.fitting import CALIBRATED, Variant, with_fusion
from worker.backtest.run import _config_lines, backtest
from worker.fusion.artefact import calibration_document, write_artefact
from worker.fusion.calibration import LOG_FLOOR, apply_temperatures, fit_temperatures
from worker.fusion.fit import read_training_set
from worker.fusion.registry import names as strategy_names


def test_fit_compares_every_calibratable_strategy_with_and_without(tmp_path: Path) -> None:
    """Each strategy but hard_vote and stacking has a +calibrated twin, soft_vote also
    calibrated with weights learned on the calibrated members; the comparison is
    printed under the table."""
    config = make_config()
    records, truth = history(300, seed=5)
    outcome = backtest(config, records, truth, fit=True, fit_dir=tmp_path)
    names = {r.name for r in outcome.evaluation.strategies}
    twins = {s + CALIBRATED for s in strategy_names("classification")} - {
        "hard_vote+calibrated",
        "stacking+calibrated",
    }
    assert twins <= names
    assert "hard_vote" + CALIBRATED not in names
    assert "soft_vote+calibrated+learned_weights" in names
    assert any(line.startswith("  soft_vote: log_loss ") for line in outcome.lines)
    for variant in outcome.variants:
        calibrated = CALIBRATED in variant.name
        assert bool(variant.config.fusion.calibration_file) == calibrated, variant.name


def test_temperatures_are_fitted_on_the_earlier_requests_only(tmp_path: Path) -> None:
    """The artefact's temperatures are those fitted on the complete train requests (read
    as `fit` reads them), so no evaluated request leaks into the calibration."""
    config = make_config()
    records, truth = history(300, seed=6)
    outcome = backtest(config, records, truth, fit=True, fit_dir=tmp_path)
    assert outcome.split is not None
    doc = orjson.loads((tmp_path / "calibration.json").read_bytes())
    events = tmp_path / "train.jsonl"
    labels = tmp_path / "labels.jsonl"
    events.write_bytes(
        b"".join(
            v + b"\n" for _, v, _ in records if orjson.loads(v)["request_id"] in outcome.split.train
        )
    )
    labels.write_bytes(
        b"".join(
            orjson.dumps({"request_id": rid, "label": y}) + b"\n"
            for rid, y in truth.items()
            if rid in outcome.split.train
        )
    )
    data = read_training_set(config, events, labels)
    present = np.ones(data.probs.shape[:2], dtype=bool)
    expected = fit_temperatures(data.probs, present, data.y)
    assert doc["temperatures"] == expected.tolist()
    assert doc["training"]["requests_used"] == len(data.y)


def test_the_calibrated_learned_weights_are_fitted_on_calibrated_members(tmp_path: Path) -> None:
    """The weights of soft_vote+calibrated+learned_weights are the simplex weights of the
    calibrated train members, not those of the raw ones."""
    config = make_config()
    records, truth = history(300, seed=7)
    backtest(config, records, truth, fit=True, fit_dir=tmp_path)
    raw = orjson.loads((tmp_path / "weights.json").read_bytes())["weights"]
    calibrated = orjson.loads((tmp_path / "weights-calibrated.json").read_bytes())
    assert (
        calibrated["training"]["calibrated_with"]
        == orjson.loads((tmp_path / "calibration.json").read_bytes())["temperatures"]
    )
    assert calibrated["weights"] != raw


def test_a_calibrated_winner_prints_its_calibration_file(tmp_path: Path) -> None:
    """The config lines that select a calibrated row name the calibration file."""
    config = make_config()
    path = tmp_path / "calibration.json"
    write_artefact(path, calibration_document(MODELS, config.fusion.labels, np.ones(3), 1e-15, {}))
    variant = Variant(
        "soft_vote+calibrated", "soft_vote", with_fusion(config, calibration_file=str(path))
    )
    row = type("R", (), {"name": variant.name})()
    lines = _config_lines(row, [variant])  # type: ignore[arg-type]
    assert f'calibration_file = "{path}"' in lines


def test_a_configured_calibration_applies_without_fit(tmp_path: Path) -> None:
    """Without --fit the rows run with the configured calibration_file, as `run` would:
    soft_vote's scores differ from the uncalibrated ones and equal the scores of the
    calibrated probabilities."""
    records, truth = history(200, seed=8)
    path = tmp_path / "calibration.json"
    temperatures = np.array([3.0, 1.0, 0.5])
    labels = make_config().fusion.labels
    write_artefact(path, calibration_document(MODELS, labels, temperatures, LOG_FLOOR, {}))
    plain = backtest(make_config(), records, truth, strategies=["soft_vote"])
    calibrated = backtest(
        make_config(calibration_file=str(path)), records, truth, strategies=["soft_vote"]
    )
    (a,) = plain.evaluation.strategies
    (b,) = calibrated.evaluation.strategies
    assert a.metrics["log_loss"] != b.metrics["log_loss"]
    assert b.samples.probs is not None
    # One request, recomputed by hand from its members' calibrated probabilities.
    rid = b.samples.ids[0]
    sent = [orjson.loads(v) for _, v, _ in records if orjson.loads(v)["request_id"] == rid]
    present = np.array([[any(e["model"] == m for e in sent) for m in MODELS]])
    probs = np.zeros((1, 3, 3))
    for e in sent:
        probs[0, MODELS.index(e["model"])] = e["probs"]
    scaled = apply_temperatures(probs, present, temperatures)[0]
    expected = scaled[present[0]].sum(axis=0) / present.sum()
    np.testing.assert_allclose(b.samples.probs[0], expected, rtol=1e-12)
