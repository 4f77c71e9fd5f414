"""``fusion-worker fuse --labels``: labels merged into the event-time stream by ts, the
learning applied as live, deterministically; the drift test through the product (a
model that degrades halfway loses its weight fast and the fused accuracy beats static
equal weights); invalid label lines reported; the label contract's decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.fusion import drift
from worker.cli import main
from worker.config import build_config
from worker.errors import InvalidEvent
from worker.labels import LabelDecoder

LABELS = ["a", "b", "c", "d"]
BASE_MS = 1_700_000_000_000


def write_config(path: Path, weights: str, **feedback: Any) -> Path:
    fb = {"memory_ms": 10_000, "memory_count": 10_000, "learning_rate": 0.01}
    fb |= {"weight_floor": 0.02, "window": 1000, **feedback}
    lines = [
        "[join]",
        "timeout_ms = 1000",
        "[fusion]",
        'strategy = "soft_vote"',
        f"labels = {orjson.dumps(LABELS).decode()}",
        f'weights = "{weights}"',
        "[feedback]",
        *(f"{k} = {v}" for k, v in fb.items()),
        *(f'[[models]]\nname = "{m}"' for m in drift.MODELS),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def drift_files(directory: Path) -> tuple[Path, Path, drift.Stream]:
    """The drift stream of tests/fusion/drift.py as the product reads it: one prediction
    event per model and request (request i at BASE_MS + 50 i), one label per request
    0.5-2 s later, in a file in label-time order."""
    stream = drift.make_stream()
    n = len(stream.y)
    events = directory / "events.jsonl"
    with events.open("wb") as f:
        for i in range(n):
            for j, model in enumerate(drift.MODELS):
                doc = {
                    "request_id": f"r{i}",
                    "model": model,
                    "ts": BASE_MS + i * drift.SPACING_MS,
                    "probs": stream.probs[i, j].tolist(),
                }
                f.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
    labels = directory / "labels.jsonl"
    order = np.argsort(stream.label_ts, kind="stable")
    with labels.open("wb") as f:
        for i in order.tolist():
            doc = {
                "request_id": f"r{i}",
                "label": LABELS[int(stream.y[i])],
                "ts": BASE_MS + int(stream.label_ts[i]),
            }
            f.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
    return events, labels, stream


def fuse(tmp: Path, config: Path, events: Path, labels: Path | None, name: str) -> Path:
    out = tmp / name
    argv = ["fuse", "--config", str(config), "--input", str(events), "--output", str(out)]
    if labels is not None:
        argv += ["--labels", str(labels)]
    assert main(argv) == 0
    return out


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def drift_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("drift")
    events, labels, stream = drift_files(tmp)
    adaptive = write_config(tmp / "adaptive.toml", "adaptive")
    static = write_config(tmp / "static.toml", "static")
    return {
        "stream": stream,
        "adaptive": fuse(tmp, adaptive, events, labels, "adaptive.jsonl"),
        "again": fuse(tmp, adaptive, events, labels, "again.jsonl"),
        "static": fuse(tmp, static, events, labels, "static.jsonl"),
    }


def by_request(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: int(r["request_id"][1:]))


def test_drift_the_degraded_model_drops_below_0_15_within_2000_labels(
    drift_runs: dict[str, Any],
) -> None:
    """Through ``fuse --labels`` with adaptive weights, the model that falls from 90 % to
    40 % accuracy halfway weighs < 0.15 in a result fused after at most 2,000 labels of
    post-drift requests joined (counted from the labels' ts)."""
    stream: drift.Stream = drift_runs["stream"]
    results = by_request(read(drift_runs["adaptive"]))
    half = len(stream.y) // 2
    label_ts = np.sort(stream.label_ts[half:])
    first = next(
        i for i in range(half, len(results)) if results[i]["members"]["gamma"]["weight"] < 0.15
    )
    labelled = int(np.searchsorted(label_ts, first * drift.SPACING_MS, side="right"))
    assert labelled <= 2000, labelled
    assert results[half - 1]["members"]["gamma"]["weight"] > 0.25  # it had not left before


def test_drift_adaptive_beats_static_equal_weights_on_the_second_half(
    drift_runs: dict[str, Any],
) -> None:
    """On the second half, the fused accuracy with adaptive weights is higher than with
    static equal weights, and each result names the weights it was fused with."""
    stream: drift.Stream = drift_runs["stream"]
    half = len(stream.y) // 2
    truth = [LABELS[int(y)] for y in stream.y[half:]]

    def accuracy(path: Path) -> float:
        fused = by_request(read(path))[half:]
        return float(np.mean([r["label"] == t for r, t in zip(fused, truth, strict=True)]))

    static_results = by_request(read(drift_runs["static"]))
    assert all(r["members"]["gamma"]["weight"] == pytest.approx(1 / 3) for r in static_results)
    assert accuracy(drift_runs["adaptive"]) > accuracy(drift_runs["static"]) + 0.01


def test_drift_fuse_with_labels_is_deterministic(drift_runs: dict[str, Any]) -> None:
    """The same input and labels give byte-identical output twice."""
    assert drift_runs["adaptive"].read_bytes() == drift_runs["again"].read_bytes()


def test_labels_later_than_every_prediction_do_not_change_results(tmp_path: Path) -> None:
    """Labels after the last prediction are read after the end of input: the results
    equal those without labels (static weights only score the quality)."""
    events = tmp_path / "e.jsonl"
    events.write_bytes(
        b"".join(
            orjson.dumps({"request_id": f"q{i}", "model": m, "ts": 1000 + i, "probs": p}) + b"\n"
            for i in range(3)
            for m, p in zip(
                drift.MODELS,
                ([0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]),
                strict=True,
            )
        )
    )
    labels = tmp_path / "l.jsonl"
    labels.write_bytes(b'{"request_id": "q0", "label": "a", "ts": 9000}\n')
    cfg = write_config(tmp_path / "c.toml", "adaptive")
    with_labels = fuse(tmp_path, cfg, events, labels, "with.jsonl").read_bytes()
    without = fuse(tmp_path, cfg, events, None, "without.jsonl").read_bytes()
    assert with_labels == without


def test_a_label_moves_the_weights_of_the_requests_fused_after_it(tmp_path: Path) -> None:
    """A label whose ts falls between two requests changes the weights the second one
    names, not the first's."""
    events = tmp_path / "e.jsonl"
    rows = []
    for i, ts in enumerate((1000, 5000, 9000)):
        for m, p in zip(
            drift.MODELS,
            ([0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]),
            strict=True,
        ):
            rows.append(orjson.dumps({"request_id": f"q{i}", "model": m, "ts": ts, "probs": p}))
    events.write_bytes(b"\n".join(rows) + b"\n")
    labels = tmp_path / "l.jsonl"
    labels.write_bytes(b'{"request_id": "q0", "label": "a", "ts": 3000}\n')
    cfg = write_config(tmp_path / "c.toml", "adaptive", learning_rate=0.5)
    results = read(fuse(tmp_path, cfg, events, labels, "out.jsonl"))
    alpha = [r["members"]["alpha"]["weight"] for r in results]
    assert alpha[0] == pytest.approx(1 / 3)
    assert alpha[1] > alpha[0]
    assert alpha[2] == alpha[1]


def test_invalid_label_lines_go_to_the_dlq_file(tmp_path: Path) -> None:
    """A label line the contract rejects is written to --dlq with its reason, line and
    ``file: labels``; the other labels are still learnt from."""
    events = tmp_path / "e.jsonl"
    events.write_bytes(
        orjson.dumps({"request_id": "q0", "model": "alpha", "ts": 10, "probs": [1, 0, 0, 0]})
        + b"\n"
    )
    labels = tmp_path / "l.jsonl"
    labels.write_bytes(
        b'{"request_id": "q0", "label": "zzz", "ts": 5}\n{"request_id": "q0", "score": 1.5, '
        b'"ts": 6}\nnot json\n'
    )
    dlq = tmp_path / "dlq.jsonl"
    cfg = write_config(tmp_path / "c.toml", "adaptive")
    argv = ["fuse", "-c", str(cfg), "-i", str(events), "-o", str(tmp_path / "o"), "--dlq", str(dlq)]
    assert main([*argv, "--labels", str(labels)]) == 0
    dead = read(dlq)
    assert {(d["error"], d["line"], d["file"]) for d in dead} == {
        ("unknown_label", 1, "labels"),
        ("label_type", 2, "labels"),
        ("json", 3, "labels"),
    }


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "json"),
        (b"[1]", "json"),
        (b'{"request_id": "r", "label": "a", "ts": 1, "x": 1}', "schema"),
        (b'{"request_id": "", "label": "a", "ts": 1}', "schema"),
        (b'{"request_id": "r", "ts": 1}', "schema"),
        (b'{"request_id": "r", "label": "a", "score": 1, "ts": 1}', "schema"),
        (b'{"request_id": "r", "label": "a", "ts": -1}', "schema"),
        (b'{"request_id": "r", "label": "a"}', "schema"),
        (b'{"request_id": "r", "label": 3, "ts": 1}', "schema"),
        (b'{"request_id": "r", "label": "zzz", "ts": 1}', "unknown_label"),
        (b'{"request_id": "r", "score": 0.5, "ts": 1}', "label_type"),
        (b'{"request_id": "r", "score": NaN, "ts": 1}', "non_finite"),
    ],
)
def test_the_label_decoder_rejects_with_a_reason(value: bytes, reason: str) -> None:
    """Each broken label event is rejected with its stable reason code."""
    cfg = build_config({"fusion": {"labels": LABELS}, "models": [{"name": "x"}]})
    with pytest.raises(InvalidEvent) as info:
        LabelDecoder(cfg).decode(value, None)
    assert info.value.reason == reason


def test_the_label_decoder_reads_label_score_and_record_ts() -> None:
    """A label is decoded to its index, a score (regression) to a float; without ``ts``
    the record timestamp is the label's event time."""
    cfg = build_config({"fusion": {"labels": LABELS}, "models": [{"name": "x"}]})
    ev = LabelDecoder(cfg).decode(b'{"request_id": "r", "label": "c"}', 77)
    assert (ev.request_id, ev.label, ev.score, ev.ts) == ("r", 2, None, 77)
    reg = build_config({"models": [{"name": "x"}], "fusion": {"strategy": "weighted_average"}})
    ev = LabelDecoder(reg).decode(b'{"request_id": "r", "score": 2, "ts": 5}', None)
    assert (ev.label, ev.score, ev.ts) == (None, 2.0, 5)


def test_backtest_with_adaptive_weights_scores_the_adaptive_variant(tmp_path: Path) -> None:
    """With ``weights = "adaptive"`` and a labels file with ts, the backtest also scores
    ``soft_vote+adaptive``, which learns from the labels on event time; on a stream
    whose third model degrades halfway it is more accurate than static soft_vote."""
    from worker.backtest.run import _label_events, backtest
    from worker.config import load_config

    stream = drift.make_stream(n=4000)
    records = [
        (
            0,
            orjson.dumps(
                {
                    "request_id": f"r{i}",
                    "model": model,
                    "ts": BASE_MS + i * drift.SPACING_MS,
                    "probs": stream.probs[i, j].tolist(),
                }
            ),
            None,
        )
        for i in range(len(stream.y))
        for j, model in enumerate(drift.MODELS)
    ]
    labels = tmp_path / "labels.jsonl"
    labels.write_bytes(
        b"".join(
            orjson.dumps({"request_id": f"r{i}", "label": LABELS[int(y)], "ts": BASE_MS + int(t)})
            + b"\n"
            for i, (y, t) in enumerate(zip(stream.y, stream.label_ts, strict=True))
        )
    )
    config = load_config(write_config(tmp_path / "c.toml", "adaptive"))
    truth = {f"r{i}": LABELS[int(y)] for i, y in enumerate(stream.y)}
    outcome = backtest(
        config, records, truth, ["soft_vote"], label_events=_label_events(config, str(labels))
    )
    rows = {row.name: row for row in outcome.evaluation.rows}
    adaptive, static = rows["soft_vote+adaptive"], rows["soft_vote"]
    assert adaptive.metrics["accuracy"] > static.metrics["accuracy"]
