"""`fit`: a stacker or learned weights from a synthetic labelled history, written as an
artefact the Fuser loads, at least as good as every member on that history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.fusion.factories import LABELS, make_config, probs_requests, write_history
from worker.errors import ConfigError, FusionError
from worker.fusion import Fuser
from worker.fusion.fit import read_training_set, run_fit
from worker.fusion.learn import scores

Array = np.ndarray[Any, Any]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_history(tmp_path_factory.mktemp("history"), n=300)


def _fused_scores(config: Any, probs: Array, y: Array, strategy: str | None = None) -> Any:
    results = Fuser(config, strategy).fuse(probs_requests(probs, None, config.model_names))
    return scores(np.array([r["probs"] for r in results]), y)


def test_stacker_artefact_loads_and_beats_every_member(
    history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fit --method stacking writes an artefact that the Fuser loads; on the history its
    log loss and accuracy are at least as good as each member's."""
    predictions, labels = history
    out = tmp_path / "stacker.json"
    assert run_fit(make_config(), predictions, labels, out) == 0
    config = make_config(strategy="stacking", stacker=str(out))
    data = read_training_set(config, predictions, labels)
    fused = _fused_scores(config, data.probs, data.y)
    for j in range(data.probs.shape[1]):
        member = scores(data.probs[:, j], data.y)
        assert fused.log_loss <= member.log_loss
        assert fused.accuracy >= member.accuracy
    printed = capsys.readouterr().out
    assert "stacker (out-of-fold)" in printed
    assert "skipped 6 incomplete, 8 unlabelled; 1 invalid event lines" in printed


def test_stacker_artefact_records_its_training(history: tuple[Path, Path], tmp_path: Path) -> None:
    """The artefact names its kind, member order, layout and training summary."""
    predictions, labels = history
    out = tmp_path / "stacker.json"
    run_fit(make_config(), predictions, labels, out)
    doc = orjson.loads(out.read_bytes())
    assert doc["kind"] == "stacking"
    assert doc["members"] == ["bert", "roberta", "distil"]
    assert doc["classes"] == list(LABELS)
    assert doc["feature_layout"]["columns"][:2] == ["bert:negative", "bert:neutral"]
    assert np.array(doc["coefficients"]).shape == (3, 9)
    training = doc["training"]
    assert training["requests_used"] == 286
    assert training["invalid_events"] == {"schema": 1}
    assert training["C"] > 0
    assert set(training["members"]) == {"bert", "roberta", "distil"}


def test_learned_weights_load_and_beat_every_member(
    history: tuple[Path, Path], tmp_path: Path
) -> None:
    """fit --method weights writes simplex weights; soft_vote with them as weights_file
    has a log loss on the history no worse than any member's."""
    predictions, labels = history
    out = tmp_path / "weights.json"
    assert run_fit(make_config(), predictions, labels, out, method="weights") == 0
    doc = orjson.loads(out.read_bytes())
    assert doc["kind"] == "weights"
    assert sum(doc["weights"]) == pytest.approx(1.0)
    config = make_config(weights_file=str(out))
    data = read_training_set(config, predictions, labels)
    fused = _fused_scores(config, data.probs, data.y, "soft_vote")
    for j in range(data.probs.shape[1]):
        assert fused.log_loss <= scores(data.probs[:, j], data.y).log_loss + 1e-9


def test_fit_is_deterministic(history: tuple[Path, Path], tmp_path: Path) -> None:
    """The same history gives the same artefact, byte for byte."""
    predictions, labels = history
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run_fit(make_config(), predictions, labels, first, method="weights")
    run_fit(make_config(), predictions, labels, second, method="weights")
    assert first.read_bytes() == second.read_bytes()


def test_fit_needs_a_classification_task(history: tuple[Path, Path], tmp_path: Path) -> None:
    """A regression configuration (no labels) cannot be fitted: ConfigError."""
    predictions, labels = history
    with pytest.raises(ConfigError, match=r"fusion\.labels"):
        run_fit(make_config(labels=()), predictions, labels, tmp_path / "x.json")


def test_unknown_label_in_the_labels_file_is_named(
    history: tuple[Path, Path], tmp_path: Path
) -> None:
    """A label that is not configured stops the fit with the line and the label."""
    predictions, _ = history
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"request_id": "req-0", "label": "maybe"}\n')
    with pytest.raises(FusionError, match=r"labels.jsonl:1: label 'maybe' of request 'req-0'"):
        run_fit(make_config(), predictions, bad, tmp_path / "x.json")


def test_a_label_never_seen_stops_the_fit(history: tuple[Path, Path], tmp_path: Path) -> None:
    """Every configured label needs labelled requests; a missing one is named."""
    predictions, _ = history
    few = tmp_path / "labels.jsonl"
    few.write_text('{"request_id": "req-0", "label": "negative"}\n')
    with pytest.raises(FusionError, match=r"label 'neutral' has 0 complete labelled request"):
        run_fit(make_config(), predictions, few, tmp_path / "x.json")
