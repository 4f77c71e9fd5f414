"""Training for `backtest --fit`: split the records by request, fit the stacker, the
learned weights and the member temperatures (calibration) on the train part through
worker.fusion's fitting functions, and the variants (strategy + config) the backtest then
evaluates.

Calibration is compared with no calibration: every strategy that calibration can change
(all but hard_vote, whose votes are the members' argmax, which temperatures keep, and
stacking, fitted on raw probabilities) gets a ``+calibrated`` twin that runs with the
fitted ``calibration_file``, and soft_vote also runs calibrated with weights learned on
the calibrated train members (``+calibrated+learned_weights``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import orjson

from worker.backtest.inputs import Label, request_ids
from worker.backtest.split import TimeSplit
from worker.config import Config
from worker.errors import ConfigError
from worker.fusion.batch import FloatArray
from worker.replay import Record

if TYPE_CHECKING:
    # Annotations only: like the fitting functions below, worker.fusion.fit is loaded
    # only when --fit runs.
    from worker.fusion.fit import TrainingSet

log = logging.getLogger(__name__)

LEARNED = "+learned_weights"
CALIBRATED = "+calibrated"
# Strategies whose result temperatures cannot change, or that must not be calibrated.
UNCALIBRATED = frozenset({"hard_vote", "stacking"})


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One evaluated strategy: its display name, strategy and the config it runs with
    (a fitted stacker or learned weights change the config, not the strategy)."""

    name: str
    strategy: str
    config: Config
    artefact: Path | None = None


def split_records(
    config: Config, records: list[Record], split: TimeSplit
) -> tuple[list[Record], list[Record]]:
    """Records of train requests and of test requests; undecodable records go nowhere."""
    train: list[Record] = []
    test: list[Record] = []
    for record, rid in zip(records, request_ids(config, records), strict=True):
        if rid in split.train:
            train.append(record)
        elif rid in split.test:
            test.append(record)
    return train, test


def fitted_variants(
    config: Config,
    train: list[Record],
    truth: dict[str, Label],
    split: TimeSplit,
    out: Path,
    strategies: Sequence[str] = ("soft_vote",),
) -> list[Variant]:
    """Train the stacker, the learned weights and the temperatures on the train part
    only, through worker.fusion.fit (its training set: complete labelled requests), and
    write the artefacts into ``out``. ``strategies``: the uncalibrated rows of the
    backtest, each of which (but hard_vote and stacking) gets a calibrated twin."""
    import sklearn

    if config.fusion.is_regression:
        raise ConfigError("--fit", True, "fitting needs a classification config (fusion.labels)")
    data = _training_set(config, train, truth, split)
    out.mkdir(parents=True, exist_ok=True)
    base = {
        **data.summary,
        "split": {"cut_ts": split.cut_ts, "train_requests": len(split.train)},
        "sklearn_version": sklearn.__version__,
    }
    stacker_path = _write_stacker(config, data, base, out / "stacker.json")
    weights_path = _write_weights(config, data, base, out / "weights.json")
    log.info(
        "fitted on %d complete train requests: %s, %s",
        data.summary["requests_used"],
        stacker_path,
        weights_path,
    )
    calibration_path, temperatures = _write_calibration(
        config, data, base, out / "calibration.json"
    )
    calibrated_weights = _write_weights(
        config, data, base, out / "weights-calibrated.json", temperatures
    )
    log.info("fitted temperatures %s: %s", temperatures.tolist(), calibration_path)
    stacked = with_fusion(config, stacker=str(stacker_path))
    weighted = with_fusion(config, weights_file=str(weights_path))
    calibrated = with_fusion(config, calibration_file=str(calibration_path))
    both = with_fusion(calibrated, weights_file=str(calibrated_weights))
    return [
        Variant("stacking", "stacking", stacked, stacker_path),
        Variant("soft_vote" + LEARNED, "soft_vote", weighted, weights_path),
        *(
            Variant(s + CALIBRATED, s, calibrated, calibration_path)
            for s in strategies
            if s not in UNCALIBRATED
        ),
        Variant("soft_vote" + CALIBRATED + LEARNED, "soft_vote", both, calibrated_weights),
    ]


def _training_set(
    config: Config, train: list[Record], truth: dict[str, Label], split: TimeSplit
) -> TrainingSet:
    """The train records and their labels, read by worker.fusion.fit's own reader (from
    temporary JSON Lines files), so the backtest trains on what `fit` would."""
    from worker.fusion.fit import read_training_set

    with tempfile.TemporaryDirectory(prefix="backtest-") as tmp:
        events_path, labels_path = Path(tmp, "train-events.jsonl"), Path(tmp, "train-labels.jsonl")
        events_path.write_bytes(b"".join(value + b"\n" for _, value, _ in train))
        labels_path.write_bytes(
            b"".join(
                orjson.dumps({"request_id": rid, "label": y}) + b"\n"
                for rid, y in truth.items()
                if rid in split.train
            )
        )
        return read_training_set(config, events_path, labels_path)


def _write_stacker(config: Config, data: TrainingSet, base: dict[str, Any], path: Path) -> Path:
    """Fit the stacker and write its artefact to ``path``."""
    from worker.fusion.artefact import stacking_document, write_artefact
    from worker.fusion.learn import fit_stacker

    models, labels = config.model_names, config.fusion.labels
    stacker = fit_stacker(data.probs, data.y, models, labels)
    coefficients, intercept = stacker.parameters["coefficients"], stacker.parameters["intercept"]
    training = {"method": "stacking", **base, **stacker.settings}
    write_artefact(path, stacking_document(models, labels, coefficients, intercept, training))
    return path


def _write_weights(
    config: Config,
    data: TrainingSet,
    base: dict[str, Any],
    path: Path,
    temperatures: FloatArray | None = None,
) -> Path:
    """Fit the learned member weights (on the members calibrated with ``temperatures``,
    when given: the probabilities they will weigh) and write their artefact to ``path``."""
    from worker.fusion.artefact import weights_document, write_artefact
    from worker.fusion.calibration import apply_temperatures
    from worker.fusion.learn import fit_weights

    models, labels = config.model_names, config.fusion.labels
    probs = data.probs
    if temperatures is not None:
        probs = apply_temperatures(probs, np.ones(probs.shape[:2], dtype=np.bool_), temperatures)
    learned = fit_weights(probs, data.y, models, labels)
    training = {"method": "weights", **base, **learned.settings}
    if temperatures is not None:
        training["calibrated_with"] = temperatures.tolist()
    write_artefact(path, weights_document(models, labels, learned.parameters["weights"], training))
    return path


def _write_calibration(
    config: Config, data: TrainingSet, base: dict[str, Any], path: Path
) -> tuple[Path, FloatArray]:
    """Fit one temperature per member and write the calibration artefact to ``path``."""
    from worker.fusion.artefact import calibration_document, write_artefact
    from worker.fusion.calibration import LOG_FLOOR, T_MAX, T_MIN, fit_temperatures

    models, labels = config.model_names, config.fusion.labels
    present = np.ones(data.probs.shape[:2], dtype=np.bool_)
    temperatures = fit_temperatures(data.probs, present, data.y)
    training = {"method": "calibration", **base, "t_min": T_MIN, "t_max": T_MAX}
    write_artefact(path, calibration_document(models, labels, temperatures, LOG_FLOOR, training))
    return path, temperatures


def with_fusion(
    config: Config, stacker: str = "", weights_file: str = "", calibration_file: str = ""
) -> Config:
    fusion = msgspec.structs.replace(
        config.fusion,
        stacker=stacker or config.fusion.stacker,
        weights_file=weights_file or config.fusion.weights_file,
        calibration_file=calibration_file or config.fusion.calibration_file,
    )
    return msgspec.structs.replace(config, fusion=fusion)


def uncalibrated(config: Config) -> Config:
    """``config`` without its calibration_file: what --fit compares the fitted one with."""
    fusion = msgspec.structs.replace(config.fusion, calibration_file="")
    return msgspec.structs.replace(config, fusion=fusion)
