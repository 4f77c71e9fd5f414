"""Artefact loading: JSON only, checked against the configuration, mismatches named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.fusion.factories import LABELS, MODELS, finished, make_config
from worker.errors import ArtefactError
from worker.events import PredictionEvent
from worker.fusion import Fuser, load_stacker, load_weights
from worker.fusion.artefact import stacking_document, weights_document, write_artefact


def _stacker_doc(**changes: Any) -> dict[str, Any]:
    doc = stacking_document(MODELS, LABELS, np.zeros((3, 9)), np.zeros(3), {"note": "test"})
    doc.update(changes)
    return doc


def _write(tmp_path: Path, doc: dict[str, Any] | bytes) -> Path:
    path = tmp_path / "artefact.json"
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        write_artefact(path, doc)
    return path


def test_stacker_round_trips(tmp_path: Path) -> None:
    """A written stacking document loads back with its coefficients and intercept."""
    coef = np.arange(27, dtype=float).reshape(3, 9) / 10
    path = _write(tmp_path, stacking_document(MODELS, LABELS, coef, np.ones(3), {}))
    stacker = load_stacker(path, MODELS, LABELS)
    np.testing.assert_array_equal(stacker.coef, coef)
    np.testing.assert_array_equal(stacker.intercept, np.ones(3))


def test_rejects_other_members(tmp_path: Path) -> None:
    """Members that differ from the configured models (here the order) are named."""
    path = _write(tmp_path, _stacker_doc(members=["roberta", "bert", "distil"]))
    with pytest.raises(ArtefactError, match=r"members \['roberta', 'bert', 'distil'\] differ"):
        load_stacker(path, MODELS, LABELS)


def test_rejects_other_labels(tmp_path: Path) -> None:
    """Classes that differ from fusion.labels are named."""
    path = _write(tmp_path, _stacker_doc(classes=["neg", "neu", "pos"]))
    with pytest.raises(ArtefactError, match=r"classes \['neg', 'neu', 'pos'\] differ"):
        load_stacker(path, MODELS, LABELS)


def test_rejects_a_coefficient_shape_that_does_not_fit(tmp_path: Path) -> None:
    """Coefficients of the wrong shape (3 x 6 for 3 members x 3 labels) are refused."""
    path = _write(tmp_path, _stacker_doc(coefficients=np.zeros((3, 6)).tolist()))
    with pytest.raises(ArtefactError, match=r"coefficients has shape \(3, 6\), expected \(3, 9\)"):
        load_stacker(path, MODELS, LABELS)


def test_rejects_an_intercept_of_the_wrong_length(tmp_path: Path) -> None:
    """An intercept with a value per member instead of per label is refused."""
    path = _write(tmp_path, _stacker_doc(intercept=[0.0, 0.0]))
    with pytest.raises(ArtefactError, match="intercept has 2 values, expected 3"):
        load_stacker(path, MODELS, LABELS)


def test_rejects_another_feature_layout(tmp_path: Path) -> None:
    """A layout other than the configuration's (e.g. predict instead of predict_proba)."""
    layout = {"stack_method": "predict", "columns": list(MODELS)}
    path = _write(tmp_path, _stacker_doc(feature_layout=layout))
    with pytest.raises(ArtefactError, match="feature_layout"):
        load_stacker(path, MODELS, LABELS)


def test_rejects_a_file_that_is_not_json(tmp_path: Path) -> None:
    """A pickle (or anything not JSON) is refused without being interpreted."""
    path = _write(tmp_path, b"\x80\x04\x95\x00\x00cos\nsystem\n")
    with pytest.raises(ArtefactError, match="not JSON"):
        load_stacker(path, MODELS, LABELS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b'{"kind": "stacking"}', "format None is not 'fusion-worker-artefact'"),
        (orjson.dumps({**_stacker_doc(), "format_version": 2}), "format_version 2"),
    ],
)
def test_rejects_json_that_is_not_an_artefact(tmp_path: Path, content: bytes, message: str) -> None:
    """JSON that is not a fitted artefact of this format version is refused."""
    with pytest.raises(ArtefactError, match=message):
        load_stacker(_write(tmp_path, content), MODELS, LABELS)


def test_rejects_the_other_kind(tmp_path: Path) -> None:
    """A weights artefact given as the stacker (and vice versa) names the kind."""
    weights = _write(tmp_path, weights_document(MODELS, LABELS, np.ones(3) / 3, {}))
    with pytest.raises(ArtefactError, match="kind 'weights' is not 'stacking'"):
        load_stacker(weights, MODELS, LABELS)


def test_rejects_non_numbers(tmp_path: Path) -> None:
    """A coefficient that is not a finite number (a string, a boolean) is refused."""
    coef = np.zeros((3, 9)).tolist()
    coef[1][2] = True
    with pytest.raises(ArtefactError, match="holds True, not a finite number"):
        load_stacker(_write(tmp_path, _stacker_doc(coefficients=coef)), MODELS, LABELS)


def test_rejects_negative_weights(tmp_path: Path) -> None:
    """Learned weights must be >= 0 with a positive sum."""
    path = _write(tmp_path, weights_document(MODELS, LABELS, np.array([0.5, -0.1, 0.6]), {}))
    with pytest.raises(ArtefactError, match="must be >= 0"):
        load_weights(path, MODELS, LABELS)


def test_fuser_refuses_a_mismatched_stacker_at_start(tmp_path: Path) -> None:
    """Fuser.__init__ loads the configured stacker and raises ArtefactError on mismatch."""
    path = _write(tmp_path, _stacker_doc(members=["a", "b", "c"]))
    with pytest.raises(ArtefactError, match=r"fusion\.stacker = .* members \[.a.,"):
        Fuser(make_config(strategy="stacking", stacker=str(path)))


def test_weights_file_replaces_the_configured_weights(tmp_path: Path) -> None:
    """With [fusion] weights_file the learned weights, not the configured ones, are used
    and reported."""
    path = _write(tmp_path, weights_document(MODELS, LABELS, np.array([0.0, 0.0, 1.0]), {}))
    config = make_config((0.3, 0.4, 0.3), weights_file=str(path))
    probs = {"bert": (0.1, 0.2, 0.7), "roberta": (0.2, 0.3, 0.5), "distil": (0.3, 0.4, 0.3)}
    request = finished("r", {m: PredictionEvent("r", m, 1, probs=p) for m, p in probs.items()})
    (result,) = Fuser(config, "soft_vote").fuse([request])
    assert result["probs"] == [0.3, 0.4, 0.3]
    assert result["members"]["distil"]["weight"] == 1.0
    assert result["members"]["bert"]["weight"] == 0.0
