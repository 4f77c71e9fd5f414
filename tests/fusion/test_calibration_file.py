"""``[fusion] calibration_file``: validated at load (file exists; not with scores, not
with stacking), loaded by the Fuser so that every command that fuses applies it, and
named in every result; ``[join] early_decision`` refused with the strategies it cannot
serve."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from tests.fusion.factories import LABELS, MODELS, finished, make_config, write_history
from worker.config import build_config
from worker.errors import ArtefactError, ConfigError
from worker.events import PredictionEvent
from worker.fusion import Fuser
from worker.fusion.artefact import calibration_document, write_artefact
from worker.fusion.calibration import LOG_FLOOR, apply_temperatures
from worker.fusion.fit import read_training_set, run_fit
from worker.fusion.learn import simplex_weights
from worker.offline import run_fuse

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "fused.v1.json").read_text())
TEMPERATURES = np.array([4.0, 0.5, 1.0])
PROBS = {"bert": (0.1, 0.2, 0.7), "roberta": (0.5, 0.4, 0.1), "distil": (0.45, 0.1, 0.45)}


def _artefact(tmp_path: Path, temperatures: np.ndarray[Any, Any] = TEMPERATURES) -> Path:
    path = tmp_path / "calibration.json"
    write_artefact(path, calibration_document(MODELS, LABELS, temperatures, LOG_FLOOR, {}))
    return path


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _request() -> list[Any]:
    return [finished("r", {m: PredictionEvent("r", m, 1, probs=p) for m, p in PROBS.items()})]


def test_the_fuser_applies_the_configured_file_and_names_it(tmp_path: Path) -> None:
    """A Fuser built from a config with calibration_file gives the results of a Fuser
    given the same temperatures, each naming the file's sha256 prefix."""
    path = _artefact(tmp_path)
    config = make_config((0.3, 0.4, 0.3), calibration_file=str(path))
    (result,) = Fuser(config).fuse(_request())
    (expected,) = Fuser(make_config((0.3, 0.4, 0.3)), temperatures=TEMPERATURES).fuse(_request())
    assert result["calibration"] == _sha(path)
    assert {k: v for k, v in result.items() if k != "calibration"} == expected
    jsonschema.Draft202012Validator(SCHEMA).validate(result)


def test_without_a_file_results_name_no_calibration() -> None:
    """No calibration_file: no calibration field (the results are as before)."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3))).fuse(_request())
    assert "calibration" not in result


def test_another_file_is_another_id(tmp_path: Path) -> None:
    """Other temperatures, another id: a result tells which calibration made it."""
    a = Fuser(make_config(calibration_file=str(_artefact(tmp_path)))).calibration
    other = tmp_path / "other"
    other.mkdir()
    b_path = _artefact(other, np.array([1.0, 1.0, 2.0]))
    b = Fuser(make_config(calibration_file=str(b_path))).calibration
    assert a is not None
    assert b is not None
    assert a != b


def test_fuse_applies_the_file(tmp_path: Path) -> None:
    """`fusion-worker fuse` (the offline engine, unchanged) applies the file through the
    Fuser: its output names the calibration and carries the calibrated label."""
    path = _artefact(tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps({"request_id": "r", "model": m, "ts": 1, "probs": list(p)}) + "\n"
            for m, p in PROBS.items()
        )
    )
    out = tmp_path / "fused.jsonl"
    config = make_config((0.3, 0.4, 0.3), calibration_file=str(path))
    assert run_fuse(config, events, out) == 0
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    assert result["calibration"] == _sha(path)
    (expected,) = Fuser(make_config((0.3, 0.4, 0.3)), temperatures=TEMPERATURES).fuse(_request())
    assert result["label"] == expected["label"]


def test_a_missing_file_is_refused_at_load(tmp_path: Path) -> None:
    """The key and the path are named."""
    with pytest.raises(ConfigError, match=r"fusion\.calibration_file.*file not found"):
        make_config(calibration_file=str(tmp_path / "nope.json"))


def test_calibration_with_scores_is_refused(tmp_path: Path) -> None:
    """Temperatures calibrate probabilities: a regression config refuses the key."""
    path = _artefact(tmp_path)
    with pytest.raises(ConfigError, match=r"fusion\.calibration_file.*needs fusion\.labels"):
        make_config(labels=(), calibration_file=str(path))


def test_calibration_with_stacking_is_refused(tmp_path: Path) -> None:
    """The stacker was fitted on raw probabilities: the combination is refused at load,
    naming the key and the strategy."""
    path = _artefact(tmp_path)
    stacker = tmp_path / "stacker.json"
    stacker.write_text("{}")
    with pytest.raises(ConfigError, match=r"fusion\.calibration_file.*'stacking'"):
        make_config(strategy="stacking", stacker=str(stacker), calibration_file=str(path))


def test_a_file_for_other_members_stops_the_fuser(tmp_path: Path) -> None:
    """An artefact that does not fit the models stops the worker at start (the Fuser is
    built before anything is consumed), naming the key."""
    path = tmp_path / "calibration.json"
    doc = calibration_document(["a", "b", "c"], LABELS, TEMPERATURES, LOG_FLOOR, {})
    write_artefact(path, doc)
    with pytest.raises(ArtefactError, match=r"fusion\.calibration_file"):
        Fuser(make_config(calibration_file=str(path)))


def _raw(strategy: str, labels: list[str], early: bool = True) -> dict[str, Any]:
    return {
        "models": [{"name": "a"}, {"name": "b"}],
        "join": {"early_decision": early},
        "fusion": {"strategy": strategy, "labels": labels},
    }


@pytest.mark.parametrize("strategy", ["weighted_average", "soft_vote", "hard_vote"])
def test_early_decision_is_accepted_with_the_voting_strategies(strategy: str) -> None:
    """The three strategies whose label the bound covers."""
    assert build_config(_raw(strategy, ["x", "y"])).join.early_decision


@pytest.mark.parametrize("strategy", ["geometric_mean", "median", "trimmed_mean"])
def test_early_decision_is_refused_with_other_strategies(strategy: str) -> None:
    """The key, its value and the strategy are named."""
    with pytest.raises(ConfigError) as info:
        build_config(_raw(strategy, ["x", "y"]))
    assert info.value.key == "join.early_decision"
    assert info.value.value is True
    assert repr(strategy) in str(info.value)


def test_early_decision_is_refused_with_scores() -> None:
    """A regression has no label to decide."""
    with pytest.raises(ConfigError, match=r"join\.early_decision.*fusion\.labels"):
        build_config(_raw("weighted_average", []))


def test_early_decision_is_off_by_default() -> None:
    """Without the key every request waits for its members or its deadline."""
    assert not build_config(_raw("soft_vote", ["x", "y"], early=False)).join.early_decision
    assert not make_config().join.early_decision


def test_fit_weights_learns_on_the_configured_calibration(tmp_path: Path) -> None:
    """With a calibration_file configured, `fit --method weights` learns the weights on
    the calibrated members (the probabilities they will weigh) and records which
    calibration; without it, on the raw ones."""
    predictions, labels = write_history(tmp_path)
    path = _artefact(tmp_path, np.array([5.0, 0.3, 1.0]))
    raw_out, cal_out = tmp_path / "raw.json", tmp_path / "cal.json"
    run_fit(make_config(), predictions, labels, raw_out, method="weights")
    run_fit(make_config(calibration_file=str(path)), predictions, labels, cal_out, "weights")
    raw = json.loads(raw_out.read_text())
    cal = json.loads(cal_out.read_text())
    assert cal["training"]["calibrated_with"] == _sha(path)
    assert "calibrated_with" not in raw["training"]
    data = read_training_set(make_config(), predictions, labels)
    present = np.ones(data.probs.shape[:2], dtype=bool)
    calibrated = apply_temperatures(data.probs, present, np.array([5.0, 0.3, 1.0]))
    np.testing.assert_allclose(cal["weights"], simplex_weights(calibrated, data.y), atol=1e-12)
    assert cal["weights"] != raw["weights"]
