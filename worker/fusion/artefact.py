"""Fitted artefacts on disk: a stacking meta-learner, learned member weights or member
temperatures (calibration), as JSON.

One format for every kind::

    {"format": "fusion-worker-artefact", "format_version": 1,
     "kind": "stacking" | "weights" | "calibration",
     "members": [model, ...], "classes": [label, ...],
     "feature_layout": {"stack_method": ..., "columns": [...]},
     "coefficients": [[...]], "intercept": [...]      (stacking)
     "weights": [...]                                  (weights)
     "temperatures": [...]                             (calibration)
     "training": {...}}                                (a summary, not read back)

Loading checks everything against the configuration (members, labels, layout, shapes,
finite numbers) and raises ArtefactError naming the mismatch. Only JSON is ever read:
no pickle, nothing executable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from worker.errors import ArtefactError
from worker.fusion.batch import FloatArray
from worker.fusion.stacking import Stacker, feature_columns

FORMAT = "fusion-worker-artefact"
FORMAT_VERSION = 1
STACK_METHOD = "predict_proba"


def stacking_document(
    models: Sequence[str],
    labels: Sequence[str],
    coef: FloatArray,
    intercept: FloatArray,
    training: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of a fitted stacker (coef (1 or k, n_features), intercept)."""
    return {
        **_header("stacking", models, labels),
        "feature_layout": {
            "stack_method": STACK_METHOD,
            "columns": feature_columns(models, labels),
        },
        "coefficients": np.asarray(coef, dtype=np.float64).tolist(),
        "intercept": np.asarray(intercept, dtype=np.float64).tolist(),
        "training": training,
    }


def weights_document(
    models: Sequence[str], labels: Sequence[str], weights: FloatArray, training: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document of learned member weights (m,), summing to 1."""
    return {
        **_header("weights", models, labels),
        "feature_layout": {"combine": "weighted_average", "columns": list(models)},
        "weights": np.asarray(weights, dtype=np.float64).tolist(),
        "training": training,
    }


def calibration_document(
    models: Sequence[str],
    labels: Sequence[str],
    temperatures: FloatArray,
    log_floor: float,
    training: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document of member temperatures (m,), each > 0."""
    return {
        **_header("calibration", models, labels),
        "feature_layout": _calibration_layout(models, log_floor),
        "temperatures": np.asarray(temperatures, dtype=np.float64).tolist(),
        "training": training,
    }


def _calibration_layout(models: Sequence[str], log_floor: float) -> dict[str, Any]:
    return {
        "transform": "softmax(log(max(p, log_floor)) / T)",
        "log_floor": log_floor,
        "columns": list(models),
    }


def _header(kind: str, models: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "members": list(models),
        "classes": list(labels),
    }


def write_artefact(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as indented JSON. orjson would write NaN as null, so the callers
    make sure every number is finite first (``fit`` does)."""
    try:
        path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise ArtefactError(f"cannot write the artefact {str(path)!r}: {exc}") from None


def load_stacker(
    path: str | Path, models: Sequence[str], labels: Sequence[str], key: str = "fusion.stacker"
) -> Stacker:
    """Read and check a stacking artefact for the configured ``models`` and ``labels``."""
    path = Path(path)
    doc = _read(path, "stacking", models, labels, key)
    columns = feature_columns(models, labels)
    layout = doc.get("feature_layout")
    expected_layout = {"stack_method": STACK_METHOD, "columns": columns}
    if layout != expected_layout:
        raise ArtefactError(
            f"{key} = {str(path)!r}: feature_layout {_show(layout)} differs from the one the "
            f"configuration implies {_show(expected_layout)}; refit the stacker"
        )
    rows = 1 if len(labels) == 2 else len(labels)
    coef = _matrix(doc.get("coefficients"), (rows, len(columns)), "coefficients", path, key)
    intercept = _vector(doc.get("intercept"), rows, "intercept", path, key)
    return Stacker(tuple(models), tuple(labels), coef, intercept)


def load_weights(
    path: str | Path,
    models: Sequence[str],
    labels: Sequence[str],
    key: str = "fusion.weights_file",
) -> FloatArray:
    """Read and check learned weights: (m,) in the configured model order, >= 0, sum > 0."""
    path = Path(path)
    doc = _read(path, "weights", models, labels, key)
    weights = _vector(doc.get("weights"), len(models), "weights", path, key)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ArtefactError(
            f"{key} = {str(path)!r}: weights {weights.tolist()} must be >= 0 with a positive sum"
        )
    return weights


@dataclass(frozen=True, slots=True)
class Calibration:
    """Member temperatures (m,) and the id results name them by: ``sha256:`` and the
    first 16 hex digits of the artefact file's SHA-256 (the same file, the same id, on
    every worker and in every backtest)."""

    temperatures: FloatArray
    id: str


def load_calibration(
    path: str | Path,
    models: Sequence[str],
    labels: Sequence[str],
    log_floor: float,
    key: str = "fusion.calibration_file",
) -> FloatArray:
    """Read and check member temperatures: (m,) in the configured model order, each > 0,
    fitted with the same transform (``log_floor``) this worker applies."""
    return read_calibration(path, models, labels, log_floor, key).temperatures


def read_calibration(
    path: str | Path,
    models: Sequence[str],
    labels: Sequence[str],
    log_floor: float,
    key: str = "fusion.calibration_file",
) -> Calibration:
    """``load_calibration``, with the id of the file's bytes (read once, so the id is
    that of the temperatures returned)."""
    path = Path(path)
    raw = _read_bytes(path, key)
    doc = _read(path, "calibration", models, labels, key, raw)
    layout = doc.get("feature_layout")
    expected_layout = _calibration_layout(models, log_floor)
    if layout != expected_layout:
        raise ArtefactError(
            f"{key} = {str(path)!r}: feature_layout {_show(layout)} differs from the one "
            f"this worker applies {_show(expected_layout)}; refit the calibration"
        )
    temperatures = _vector(doc.get("temperatures"), len(models), "temperatures", path, key)
    if (temperatures <= 0).any():
        raise ArtefactError(
            f"{key} = {str(path)!r}: temperatures {temperatures.tolist()} must all be > 0"
        )
    return Calibration(temperatures, "sha256:" + hashlib.sha256(raw).hexdigest()[:16])


def _read_bytes(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArtefactError(f"{key} = {str(path)!r}: cannot read the artefact: {exc}") from None


def _read(
    path: Path,
    kind: str,
    models: Sequence[str],
    labels: Sequence[str],
    key: str,
    raw: bytes | None = None,
) -> dict[str, Any]:
    where = f"{key} = {str(path)!r}"
    if raw is None:
        raw = _read_bytes(path, key)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ArtefactError(f"{where}: not JSON ({exc}); expected a fitted artefact") from None
    if not isinstance(doc, dict):
        raise ArtefactError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ArtefactError(
            f"{where}: format {_show(doc.get('format'))} is not {FORMAT!r}; "
            "write artefacts with `fusion-worker fit`"
        )
    if doc.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(
            f"{where}: format_version {_show(doc.get('format_version'))} is not supported "
            f"(this worker reads {FORMAT_VERSION})"
        )
    if doc.get("kind") != kind:
        raise ArtefactError(f"{where}: kind {_show(doc.get('kind'))} is not {kind!r}")
    if doc.get("members") != list(models):
        raise ArtefactError(
            f"{where}: members {_show(doc.get('members'))} differ from the configured "
            f"models {list(models)}; refit with this configuration"
        )
    if doc.get("classes") != list(labels):
        raise ArtefactError(
            f"{where}: classes {_show(doc.get('classes'))} differ from fusion.labels "
            f"{list(labels)}; refit with this configuration"
        )
    return doc


def _matrix(value: Any, shape: tuple[int, int], what: str, path: Path, key: str) -> FloatArray:
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise ArtefactError(f"{key} = {str(path)!r}: {what} must be a list of lists of numbers")
    got = (len(value), len(value[0]) if value else 0)
    if got != shape or any(len(row) != shape[1] for row in value):
        raise ArtefactError(
            f"{key} = {str(path)!r}: {what} has shape {_shape(value)}, expected {shape} "
            "for the configured models and labels"
        )
    return np.array([_numbers(row, what, path, key) for row in value], dtype=np.float64)


def _vector(value: Any, size: int, what: str, path: Path, key: str) -> FloatArray:
    if not isinstance(value, list):
        raise ArtefactError(f"{key} = {str(path)!r}: {what} must be a list of numbers")
    if len(value) != size:
        raise ArtefactError(
            f"{key} = {str(path)!r}: {what} has {len(value)} values, expected {size} "
            "for the configured models and labels"
        )
    return np.array(_numbers(value, what, path, key), dtype=np.float64)


def _numbers(values: list[Any], what: str, path: Path, key: str) -> list[float]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ArtefactError(f"{key} = {str(path)!r}: {what} holds {v!r}, not a finite number")
    return [float(v) for v in values]


def _shape(value: list[Any]) -> str:
    return f"({len(value)}, {'/'.join(sorted({str(len(row)) for row in value})) or 0})"


def _show(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
