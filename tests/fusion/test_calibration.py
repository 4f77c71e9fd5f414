"""Temperature scaling: fitted per member by log loss, applied to a batch (vectorised,
missing members untouched), written by `fit --method calibration` as a checked JSON
artefact; and on the digits backtest, what it does to soft_vote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from bench.calibration_digits import measure
from tests.fusion.factories import LABELS, MODELS, finished, make_config, write_history
from worker.cli import main
from worker.errors import ArtefactError, ConfigError
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser
from worker.fusion.artefact import calibration_document, load_calibration, write_artefact
from worker.fusion.calibration import (
    LOG_FLOOR,
    T_MAX,
    apply_temperatures,
    fit_temperature,
    fit_temperatures,
)
from worker.fusion.fit import run_fit

Array = np.ndarray[Any, Any]


def _softmax(z: Array) -> Array:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: Array = e / e.sum(axis=-1, keepdims=True)
    return out


def _overconfident(n: int, t_true: float, seed: int) -> tuple[Array, Array]:
    """Labels drawn from softmax(logits); the model reports softmax(logits / t_true)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 4))
    truth = _softmax(logits)
    y = np.array([rng.choice(4, p=row) for row in truth])
    return _softmax(logits / t_true), y


def test_fit_recovers_the_temperature_that_undoes_overconfidence() -> None:
    """A model that reports softmax(z / 0.5) when the truth is softmax(z) gets T close
    to 2 (softmax(log p / 2) = softmax(z))."""
    probs, y = _overconfident(6000, 0.5, seed=1)
    assert fit_temperature(probs, y) == pytest.approx(2.0, rel=0.08)


def test_fit_keeps_one_for_a_calibrated_model() -> None:
    """A model that is already calibrated keeps T close to 1."""
    probs, y = _overconfident(6000, 1.0, seed=2)
    assert fit_temperature(probs, y) == pytest.approx(1.0, rel=0.08)


def test_fit_is_deterministic_and_per_member() -> None:
    """fit_temperatures gives one temperature per member, the same on every call, each
    fitted only where that member is present."""
    a, y = _overconfident(2000, 0.5, seed=3)
    b, _ = _overconfident(2000, 2.0, seed=3)
    probs = np.stack([a, b], axis=1)
    present = np.ones((2000, 2), dtype=bool)
    present[:500, 1] = False
    first = fit_temperatures(probs, present, y)
    np.testing.assert_array_equal(first, fit_temperatures(probs, present, y))
    assert first[0] > 1.5
    assert first[1] < 1.0
    assert first[1] == fit_temperature(b[500:], y[500:])


def test_apply_scales_log_probabilities_and_leaves_missing_members() -> None:
    """Present rows become softmax(log max(p, floor) / T), computed here one by one;
    missing rows stay zero; argmax never moves."""
    rng = np.random.default_rng(4)
    probs = _softmax(rng.normal(size=(20, 3, 5)) * 3)
    probs[0, 1] = [1.0, 0.0, 0.0, 0.0, 0.0]  # a label-only member: a one-hot vote
    present = rng.random((20, 3)) > 0.3
    probs[~present] = 0.0
    temperatures = np.array([2.0, 0.5, 1.0])
    out = apply_temperatures(probs, present, temperatures)
    for i in range(20):
        for j in range(3):
            if not present[i, j]:
                assert (out[i, j] == 0).all()
                continue
            expected = _softmax(np.log(np.maximum(probs[i, j], LOG_FLOOR)) / temperatures[j])
            np.testing.assert_allclose(out[i, j], expected, rtol=1e-12, atol=1e-300)
            assert out[i, j].argmax() == probs[i, j].argmax()
    np.testing.assert_array_equal(out[:, 2], probs[:, 2])


def test_every_temperature_one_is_no_calibration() -> None:
    """T = 1 for every member returns the probabilities bit for bit."""
    probs = _softmax(np.random.default_rng(5).normal(size=(4, 3, 3)))
    present = np.ones((4, 3), dtype=bool)
    assert apply_temperatures(probs, present, np.ones(3)) is probs


def _history(tmp_path: Path) -> tuple[Path, Path]:
    return write_history(tmp_path, n=300)


def test_fit_command_writes_a_calibration_artefact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fit --method calibration` writes kind "calibration" with the member and label
    order and one temperature per member; the overconfident member (the history's last,
    reporting at temperature 0.3) gets T > 1; the artefact loads back."""
    predictions, labels = _history(tmp_path)
    out = tmp_path / "calibration.json"
    assert run_fit(make_config(), predictions, labels, out, method="calibration") == 0
    doc = orjson.loads(out.read_bytes())
    assert doc["kind"] == "calibration"
    assert doc["format_version"] == 1
    assert doc["members"] == list(MODELS)
    assert doc["classes"] == list(LABELS)
    assert len(doc["temperatures"]) == 3
    assert doc["temperatures"][2] > 1.5
    loaded = load_calibration(out, MODELS, LABELS, LOG_FLOOR)
    assert loaded.tolist() == doc["temperatures"]
    printed = capsys.readouterr().out
    assert "soft_vote calibrated (out-of-fold)" in printed
    assert "temperatures: bert=" in printed


def test_cli_accepts_the_calibration_method(tmp_path: Path) -> None:
    """The command line offers --method calibration and exits 0."""
    predictions, labels = _history(tmp_path)
    config = tmp_path / "fusion.toml"
    config.write_text(
        "[fusion]\nlabels = ["
        + ", ".join(f'"{label}"' for label in LABELS)
        + "]\n"
        + "".join(f'[[models]]\nname = "{m}"\nweight = 1.0\n' for m in MODELS)
    )
    out = tmp_path / "c.json"
    argv = ["fit", "-c", str(config), "--predictions", str(predictions), "--labels", str(labels)]
    assert main([*argv, "--out", str(out), "--method", "calibration"]) == 0
    assert orjson.loads(out.read_bytes())["kind"] == "calibration"


def _write(tmp_path: Path, **changes: Any) -> Path:
    doc = calibration_document(MODELS, LABELS, np.array([1.0, 2.0, 0.5]), LOG_FLOOR, {})
    doc.update(changes)
    path = tmp_path / "calibration.json"
    write_artefact(path, doc)
    return path


def test_load_rejects_other_members(tmp_path: Path) -> None:
    """Temperatures fitted for another member order are refused, naming both orders."""
    path = _write(tmp_path, members=["roberta", "bert", "distil"])
    with pytest.raises(ArtefactError, match=r"members \['roberta', 'bert', 'distil'\] differ"):
        load_calibration(path, MODELS, LABELS, LOG_FLOOR)


def test_load_rejects_other_labels(tmp_path: Path) -> None:
    """Temperatures fitted for another label order are refused."""
    path = _write(tmp_path, classes=["pos", "neu", "neg"])
    with pytest.raises(ArtefactError, match=r"classes \['pos', 'neu', 'neg'\] differ"):
        load_calibration(path, MODELS, LABELS, LOG_FLOOR)


def test_load_rejects_another_kind(tmp_path: Path) -> None:
    """A weights artefact given as the calibration file is refused by kind."""
    path = _write(tmp_path, kind="weights")
    with pytest.raises(ArtefactError, match=r"kind 'weights' is not 'calibration'"):
        load_calibration(path, MODELS, LABELS, LOG_FLOOR)


@pytest.mark.parametrize(
    ("temperatures", "message"),
    [
        ([1.0, 0.0, 2.0], r"must all be > 0"),
        ([1.0, -1.0, 2.0], r"must all be > 0"),
        ([1.0, "NaN", 2.0], r"holds 'NaN', not a finite number"),
        ([1.0, 2.0], r"temperatures has 2 values, expected 3"),
    ],
)
def test_load_rejects_bad_temperatures(
    tmp_path: Path, temperatures: list[Any], message: str
) -> None:
    """Temperatures that are not m positive finite numbers are refused, naming them."""
    path = _write(tmp_path, temperatures=temperatures)
    with pytest.raises(ArtefactError, match=message):
        load_calibration(path, MODELS, LABELS, LOG_FLOOR)


def test_load_rejects_another_transform(tmp_path: Path) -> None:
    """Temperatures fitted with another log floor would not mean the same: refused."""
    path = _write(tmp_path)
    with pytest.raises(ArtefactError, match="feature_layout"):
        load_calibration(path, MODELS, LABELS, 1e-9)


def test_temperatures_stay_within_the_search_bounds() -> None:
    """A member that is always wrong and certain gets the upper bound, not infinity."""
    y = np.zeros(50, dtype=np.int64)
    probs = np.tile([0.0, 1.0, 0.0], (50, 1))
    assert fit_temperature(probs, y) == pytest.approx(T_MAX, rel=1e-3)


@pytest.mark.slow
def test_calibration_on_the_digits_backtest(tmp_path: Path) -> None:
    """On the digits backtest (fit on the earlier half, scored on the later): calibration
    makes soft_vote more accurate; calibrated soft_vote with weights learned on the same
    half is at least as accurate as the best member, with a lower log loss than the
    uncalibrated soft_vote."""
    f = measure(tmp_path, seed=0)
    assert f.soft_vote_calibrated.accuracy > f.soft_vote.accuracy
    best_member = max(s.accuracy for s in f.members.values())
    assert f.soft_vote_calibrated_learned.accuracy >= best_member
    assert f.soft_vote_calibrated_learned.log_loss < f.soft_vote.log_loss
    assert f.temperatures["naive-bayes"] > 2.0  # naive Bayes is the overconfident one


def test_the_floor_is_the_one_of_the_scores() -> None:
    """Calibration clips log p where the log-loss scores clip p."""
    from worker.fusion import learn

    assert LOG_FLOOR == learn.LOG_FLOOR


def _requests() -> list[FinishedRequest]:
    probs = {"bert": (0.1, 0.2, 0.7), "roberta": (0.5, 0.4, 0.1), "distil": (0.45, 0.1, 0.45)}
    return [finished("r", {m: PredictionEvent("r", m, 1, probs=p) for m, p in probs.items()})]


def test_the_fuser_fuses_calibrated_members_and_shows_what_they_sent() -> None:
    """With temperatures the Fuser's soft vote is the weighted mean of the calibrated
    members; member entries keep the sent probabilities; contributions use the
    calibrated ones and add up to the fused label's probability."""
    config = make_config((0.3, 0.4, 0.3))
    temperatures = np.array([4.0, 0.5, 1.0])
    (result,) = Fuser(config, "soft_vote", temperatures=temperatures).fuse(_requests())
    sent = np.array([[0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.45, 0.1, 0.45]])
    calibrated = _softmax(np.log(sent) / temperatures[:, None])
    expected = np.array([0.3, 0.4, 0.3]) @ calibrated
    np.testing.assert_allclose(result["probs"], expected, rtol=1e-12)
    assert result["label"] == LABELS[int(expected.argmax())]
    assert result["members"]["bert"]["probs"] == [0.1, 0.2, 0.7]
    label = int(expected.argmax())
    assert result["members"]["bert"]["contribution"] == pytest.approx(0.3 * calibrated[0, label])
    total = sum(m["contribution"] for m in result["members"].values())
    assert total == pytest.approx(result["probs"][label], abs=1e-12)
    uncalibrated = Fuser(config, "soft_vote").fuse(_requests())[0]
    assert uncalibrated["label"] != result["label"]  # calibration changed the decision


def test_the_fuser_with_every_temperature_one_is_the_plain_fuser() -> None:
    """Temperatures of 1 give results equal to no calibration."""
    config = make_config((0.3, 0.4, 0.3))
    plain = Fuser(config, "soft_vote").fuse(_requests())
    assert Fuser(config, "soft_vote", temperatures=np.ones(3)).fuse(_requests()) == plain


def test_the_fuser_refuses_temperatures_that_do_not_fit() -> None:
    """Temperatures of the wrong count or not > 0 stop the Fuser, naming the key."""
    with pytest.raises(ConfigError, match=r"fusion\.calibration_file"):
        Fuser(make_config((0.3, 0.4, 0.3)), temperatures=np.ones(2))
    with pytest.raises(ConfigError, match=r"fusion\.calibration_file"):
        Fuser(make_config((0.3, 0.4, 0.3)), temperatures=np.array([1.0, 0.0, 1.0]))
