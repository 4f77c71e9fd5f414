"""Calibration on the digits backtest: soft_vote's accuracy and log loss before and
after temperature scaling, temperatures fitted on the earlier half of the requests and
scored on the later half; with the configured (equal) weights, and with simplex weights
learned on the calibrated members of the same earlier half (``fit --method weights``).

    python -m bench.calibration_digits [--out DIR] [--seed N] [--train-share 0.5]

Uses the same files as `make backtest-demo` (worker.demo_dataset), the same decoding
and training set as `fusion-worker fit` and the Fuser's own soft_vote.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.config import load_config
from worker.demo_dataset import write_demo_dataset
from worker.fusion import Batch, Fuser
from worker.fusion.calibration import apply_temperatures, fit_temperatures
from worker.fusion.fit import read_training_set
from worker.fusion.learn import Scores, scores, simplex_weights


@dataclass(frozen=True, slots=True)
class CalibrationFigures:
    """Scores on the evaluation part: each member, soft_vote raw and calibrated."""

    train_requests: int
    test_requests: int
    temperatures: dict[str, float]
    members: dict[str, Scores]
    soft_vote: Scores
    soft_vote_calibrated: Scores
    learned_weights: dict[str, float]
    soft_vote_calibrated_learned: Scores


def measure(out_dir: Path, seed: int = 0, train_share: float = 0.5) -> CalibrationFigures:
    """Write the digits dataset into ``out_dir`` and measure (see the module docstring)."""
    paths = write_demo_dataset(out_dir, seed=seed)
    config = load_config(paths["fusion.toml"])
    data = read_training_set(config, paths["events.jsonl"], paths["labels.jsonl"])
    # The training set keeps the order of the first events, i.e. event time.
    cut = int(len(data.y) * train_share)
    present = np.ones(data.probs.shape[:2], dtype=np.bool_)
    temperatures = fit_temperatures(data.probs[:cut], present[:cut], data.y[:cut])
    test_probs, y = data.probs[cut:], data.y[cut:]
    fuser = Fuser(config, "soft_vote")
    raw = fuser.compute(Batch(test_probs, np.empty((len(y), 0)), present[cut:]))
    calibrated_probs = apply_temperatures(test_probs, present[cut:], temperatures)
    calibrated = fuser.compute(Batch(calibrated_probs, np.empty((len(y), 0)), present[cut:]))
    train_calibrated = apply_temperatures(data.probs[:cut], present[:cut], temperatures)
    weights = simplex_weights(train_calibrated, data.y[:cut])
    fuser.set_weights(weights)
    learned = fuser.compute(Batch(calibrated_probs, np.empty((len(y), 0)), present[cut:]))
    assert raw.probs is not None
    assert calibrated.probs is not None
    assert learned.probs is not None
    return CalibrationFigures(
        cut,
        len(y),
        dict(zip(config.model_names, temperatures.tolist(), strict=True)),
        {name: scores(test_probs[:, j], y) for j, name in enumerate(config.model_names)},
        scores(raw.probs, y),
        scores(calibrated.probs, y),
        dict(zip(config.model_names, weights.tolist(), strict=True)),
        scores(learned.probs, y),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.calibration_digits", description=__doc__)
    p.add_argument("--out", type=Path, help="dataset directory (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-share", type=float, default=0.5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        f = measure(args.out or Path(tmp), args.seed, args.train_share)
    print(f"fit on {f.train_requests} complete requests, scored on {f.test_requests}")
    print("temperatures: " + ", ".join(f"{n}={t:.4g}" for n, t in f.temperatures.items()))
    rows = [*f.members.items(), ("soft_vote", f.soft_vote)]
    rows.append(("soft_vote calibrated", f.soft_vote_calibrated))
    rows.append(("soft_vote calibrated, learned weights", f.soft_vote_calibrated_learned))
    print("learned weights: " + ", ".join(f"{n}={w:.3f}" for n, w in f.learned_weights.items()))
    print(f"{'':38}  accuracy  log_loss")
    for name, s in rows:
        print(f"{name:38}  {s.accuracy:8.4f}  {s.log_loss:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
