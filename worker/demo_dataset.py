"""A real backtest dataset: three scikit-learn classifiers trained on the digits data
set (shipped with scikit-learn, no download), their predictions on held-out samples
written as prediction events, plus the true labels and a config to fuse them.

The members are genuinely different learners (a linear model, a generative model and
an instance-based one), so their errors differ and fusion has something to combine.
Everything is seeded, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

LABELS = tuple(str(d) for d in range(10))
MODELS = ("logreg", "naive-bayes", "knn")
# 2024-01-01T00:00:00Z: a fixed epoch keeps the files identical from run to run.
START_MS = 1_704_067_200_000
# One request per second; the members answer within 300 ms, the join waits 500 ms.
SPACING_MS = 1_000
TIMEOUT_MS = 500
# Share of (request, model) events left out, so that coverage shows partial requests.
DROP_SHARE = 0.04
HELD_OUT_SHARE = 0.5


def _members() -> dict[str, Any]:
    return {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "naive-bayes": GaussianNB(),
        "knn": KNeighborsClassifier(n_neighbors=10),
    }


def _config_toml() -> str:
    labels = ", ".join(f'"{label}"' for label in LABELS)
    models = "\n".join(f'[[models]]\nname = "{m}"\nweight = 1.0\n' for m in MODELS)
    return (
        "# The digits backtest: three scikit-learn classifiers, one request per held-out image.\n"
        "[kafka]\n"
        'input_topics = ["digits-predictions"]\n'
        'output_topic = "digits-fused"\n'
        'dlq_topic = "digits-dlq"\n\n'
        "[join]\n"
        f"timeout_ms = {TIMEOUT_MS}\n"
        "min_models = 2\n\n"
        "[fusion]\n"
        'strategy = "soft_vote"\n'
        f"labels = [{labels}]\n\n"
        f"{models}"
    )


def write_demo_dataset(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Train the members, write ``events.jsonl``, ``labels.jsonl`` and ``fusion.toml``
    into ``out_dir`` and return their paths by those names.

    Each held-out image becomes a request ``digits-NNNN`` whose events carry the members'
    ``predict_proba`` rows (labels "0".."9"); event time grows with the sample order, and
    ``DROP_SHARE`` of the events are left out with a generator seeded by ``seed``.
    """
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT_SHARE, random_state=seed, stratify=y
    )
    probs: dict[str, np.ndarray] = {}
    for name, model in _members().items():
        model.fit(x_train, y_train)
        probs[name] = model.predict_proba(x_test)
    rng = np.random.default_rng(seed)
    keep = rng.random((len(y_test), len(MODELS))) >= DROP_SHARE
    delays = rng.integers(0, 300, size=(len(y_test), len(MODELS)))

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "events.jsonl": out_dir / "events.jsonl",
        "labels.jsonl": out_dir / "labels.jsonl",
        "fusion.toml": out_dir / "fusion.toml",
    }
    events: list[bytes] = []
    labels: list[bytes] = []
    for i, truth in enumerate(y_test):
        request_id = f"digits-{i:04d}"
        labels.append(orjson.dumps({"request_id": request_id, "label": LABELS[int(truth)]}))
        base = START_MS + i * SPACING_MS
        # Events of one request in arrival order, so the file reads like the topic would.
        order = sorted(range(len(MODELS)), key=lambda j: (int(delays[i, j]), j))
        for j in order:
            if not keep[i, j]:
                continue
            name = MODELS[j]
            row = probs[name][i]
            events.append(
                orjson.dumps(
                    {
                        "request_id": request_id,
                        "model": name,
                        "ts": base + int(delays[i, j]),
                        # Round to keep the file small; renormalise so the sum stays 1.
                        "probs": _rounded(row),
                        "model_version": f"{name}-seed{seed}",
                    }
                )
            )
    paths["events.jsonl"].write_bytes(b"\n".join(events) + b"\n")
    paths["labels.jsonl"].write_bytes(b"\n".join(labels) + b"\n")
    paths["fusion.toml"].write_text(_config_toml(), encoding="utf-8")
    log.info(
        "digits dataset: %d requests, %d events (%d dropped) in %s",
        len(y_test),
        len(events),
        int((~keep).sum()),
        out_dir,
    )
    return paths


def _rounded(row: np.ndarray) -> list[float]:
    r = np.round(row.astype(np.float64), 6)
    total = float(r.sum())
    # Push the rounding residue into the largest entry so the sum is 1 to float precision.
    r[int(np.argmax(r))] += 1.0 - total
    return [float(v) for v in r]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker.demo_dataset OUT_DIR [--seed N]``: write the files, print their paths."""
    p = argparse.ArgumentParser(prog="python -m worker.demo_dataset", description=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path in write_demo_dataset(args.out_dir, seed=args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
