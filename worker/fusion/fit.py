"""`fusion-worker fit`: learn a stacker, member weights or member temperatures from
labelled history and write the JSON artefact that ``[fusion] stacker`` / ``weights_file``
/ ``calibration_file`` point at.

Inputs: prediction events (JSON Lines, the v1 event contract, decoded by the same
Decoder as the worker) and labels (JSON Lines ``{"request_id": ..., "label": ...}``).
Training uses the requests where every configured model reported and a label is known;
the rest are counted and reported. Invalid event lines are skipped and counted by
reason; a broken labels line is an error (labels are the ground truth).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import sklearn

from worker.config import Config
from worker.decode import Decoder
from worker.errors import ConfigError, FusionError, InvalidEvent
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion.artefact import (
    calibration_document,
    stacking_document,
    weights_document,
    write_artefact,
)
from worker.fusion.batch import FloatArray, IntArray, build_batch
from worker.fusion.learn import Learned, fit_stacker, fit_weights

log = logging.getLogger(__name__)

METHODS = ("stacking", "weights", "calibration")


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """The complete, labelled requests: probs (n, m, k), y (n,) label indices; and what
    was left out, for the summary."""

    probs: FloatArray
    y: IntArray
    summary: dict[str, Any]


def run_fit(
    config: Config, predictions: Path, labels: Path, out: Path, method: str = "stacking"
) -> int:
    """Fit ``method`` ("stacking", "weights" or "calibration") on the history, print the
    scores, write the artefact to ``out``. Returns the exit code (0)."""
    if method not in METHODS:
        raise ConfigError("--method", method, f"must be one of {', '.join(METHODS)}")
    if config.fusion.is_regression:
        raise ConfigError(
            "fusion.labels", [], "fit needs a classification task (configure fusion.labels)"
        )
    if not out.parent.is_dir():
        # Fail before training rather than after it.
        raise FusionError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    models, label_names = config.model_names, config.fusion.labels
    data = read_training_set(config, predictions, labels)
    summary = data.summary
    print(
        f"fit {method}: {summary['requests_used']} complete labelled requests; skipped "
        f"{summary['skipped_incomplete']} incomplete, {summary['skipped_unlabelled']} "
        f"unlabelled; {sum(summary['invalid_events'].values())} invalid event lines, "
        f"{summary['duplicate_events']} duplicate events"
    )
    if method == "stacking":
        learned = fit_stacker(data.probs, data.y, models, label_names)
        fused_name = "stacker (out-of-fold)"
    elif method == "weights":
        probs = data.probs
        if config.fusion.calibration_file:
            # The weights will weigh calibrated members: learn them on those.
            from worker.fusion.artefact import read_calibration
            from worker.fusion.calibration import LOG_FLOOR, apply_temperatures

            cal = read_calibration(config.fusion.calibration_file, models, label_names, LOG_FLOOR)
            probs = apply_temperatures(probs, np.ones(probs.shape[:2], np.bool_), cal.temperatures)
            summary = {**summary, "calibrated_with": cal.id}
            print(f"members calibrated with {config.fusion.calibration_file} ({cal.id})")
        learned = fit_weights(probs, data.y, models, label_names)
        fused_name = "learned weights (out-of-fold)"
    else:
        # Imported here: only this method needs it.
        from worker.fusion.calibration import fit_calibration

        weights = np.array(config.weights, dtype=np.float64)
        learned = fit_calibration(data.probs, data.y, weights, models, label_names)
        fused_name = "soft_vote calibrated (out-of-fold)"
    training = {
        "method": method,
        **summary,
        **learned.settings,
        "out_of_fold": learned.fused.as_dict(),
        "members": {name: s.as_dict() for name, s in learned.members.items()},
        "sklearn_version": sklearn.__version__,
    }
    if method == "stacking":
        p = learned.parameters
        document = stacking_document(
            models, label_names, p["coefficients"], p["intercept"], training
        )
        print(f"C = {learned.settings['C']:g}, chosen by {learned.settings['cv_folds']}-fold CV")
    elif method == "weights":
        weights = learned.parameters["weights"]
        document = weights_document(models, label_names, weights, training)
        print("weights: " + ", ".join(f"{n}={w:.4f}" for n, w in zip(models, weights, strict=True)))
    else:
        temperatures = learned.parameters["temperatures"]
        floor = float(learned.settings["log_floor"])
        document = calibration_document(models, label_names, temperatures, floor, training)
        print(
            "temperatures: "
            + ", ".join(f"{n}={t:.4g}" for n, t in zip(models, temperatures, strict=True))
        )
    _check_finite(learned)
    print(_table(fused_name, learned))
    write_artefact(out, document)
    print(f"wrote {out}")
    log.info("fit %s: wrote %s from %d requests", method, out, summary["requests_used"])
    return 0


def read_training_set(config: Config, predictions: Path, labels: Path) -> TrainingSet:
    """Decode the events, join them by request_id (first event of a model wins), keep the
    complete requests with a known label, in the order of their first event."""
    vocab = config.vocabularies
    if not vocab.full_cover:
        # A stacker and learned weights need every member's probability of every label.
        partial = [
            name for name, row in zip(config.model_names, vocab.cover, strict=True) if not row.all()
        ]
        raise ConfigError(
            "models[*].labels",
            partial,
            "fit needs every model to cover every fused label; these do not",
        )
    decoder = Decoder(config)
    requests: dict[str, dict[str, PredictionEvent]] = {}
    invalid: Counter[str] = Counter()
    duplicates = 0
    for number, line in _lines(predictions):
        try:
            # Event time plays no part in fitting; 0 stands in for a missing record time.
            ev = decoder.decode(line, 0)
        except InvalidEvent as exc:
            invalid[exc.reason] += 1
            log.debug("%s:%d skipped: %s", predictions, number, exc)
            continue
        members = requests.setdefault(ev.request_id, {})
        if ev.model in members:
            duplicates += 1
        else:
            members[ev.model] = ev
    truth = read_labels(labels, config.fusion.labels)
    models = config.model_names
    complete = [rid for rid, members in requests.items() if len(members) == len(models)]
    used = [rid for rid in complete if rid in truth]
    finished = [FinishedRequest(rid, requests[rid], 0, 0, 0, False) for rid in used]
    batch = build_batch(finished, models, len(config.fusion.labels), vocab)
    if vocab.may_abstain:
        # A member that named no fused label abstained: the request is not complete.
        rows = np.flatnonzero(batch.present.all(axis=1))
        used = [used[i] for i in rows]
        batch = batch.take(rows)
    y = np.array([truth[rid] for rid in used], dtype=np.int64)
    if invalid:
        log.warning("skipped %d invalid event lines: %s", sum(invalid.values()), dict(invalid))
    summary = {
        "requests_used": len(used),
        "skipped_incomplete": len(requests) - len(complete),
        "skipped_unlabelled": len(complete) - len(used),
        "labels_without_events": len(truth.keys() - requests.keys()),
        "invalid_events": dict(sorted(invalid.items())),
        "duplicate_events": duplicates,
        "class_counts": dict(
            zip(
                config.fusion.labels,
                np.bincount(y, minlength=len(config.fusion.labels)).tolist(),
                strict=True,
            )
        ),
    }
    if not used:
        raise FusionError(
            f"no request in {predictions} has every model {list(models)} and a label in "
            f"{labels}; nothing to fit on"
        )
    return TrainingSet(batch.probs, y, summary)


def read_labels(path: Path, labels: Sequence[str]) -> dict[str, int]:
    """request_id -> label index. A line that is not ``{"request_id", "label"}`` with a
    configured label, or a request labelled twice differently, is an error."""
    index = {name: i for i, name in enumerate(labels)}
    truth: dict[str, int] = {}
    for number, line in _lines(path):
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FusionError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("request_id"), str):
            raise FusionError(f"{path}:{number}: expected {{'request_id': str, 'label': str}}")
        rid, label = doc["request_id"], doc.get("label")
        if not isinstance(label, str) or label not in index:
            raise FusionError(
                f"{path}:{number}: label {label!r} of request {rid!r} is not one of "
                f"fusion.labels {list(labels)}"
            )
        if truth.setdefault(rid, index[label]) != index[label]:
            raise FusionError(
                f"{path}:{number}: request {rid!r} labelled {label!r}, and "
                f"{labels[truth[rid]]!r} before"
            )
    return truth


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                stripped = line.strip()
                if stripped:
                    yield number, stripped
    except OSError as exc:
        raise FusionError(f"cannot read {path}: {exc}") from None


def _check_finite(learned: Learned) -> None:
    for name, values in learned.parameters.items():
        if not np.isfinite(values).all():
            raise FusionError(f"fit produced non-finite {name} {values.tolist()}; check the data")


def _table(fused_name: str, learned: Learned) -> str:
    rows = [(fused_name, learned.fused), *learned.members.items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}}  accuracy  log_loss"]
    lines += [f"{name:{width}}  {s.accuracy:8.4f}  {s.log_loss:8.4f}" for name, s in rows]
    lines.append("(members are not fitted here: their scores are on every request)")
    return "\n".join(lines)
