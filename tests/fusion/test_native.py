"""The compiled result writer (``native/``, ``worker.fusion.native``) writes the bytes the
Python builder writes: the live engine without result dicts gives the same records as
with them, and its counts give the same metrics, on generated streams of every case of
``test_result_bytes`` (the writer covers the classification cases and hands the others
back); names that need escaping, a string it cannot write, and that the test
environment has it at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from tests.fusion.test_result_bytes import CASES, _config, _draws, _records, stacker
from worker.config import Config, build_config
from worker.engine import Engine, InRecord, Step
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser, native
from worker.fusion.result import result_json
from worker.metrics import Metrics
from worker.runtime.tally import tally
from worker.tracing import _shown

__all__ = ["stacker"]  # the module fixture, shared

# The writer's cases: classification with every model covering every label.
WRITTEN = {c for c, (task, _, _) in CASES.items() if task == "labels"}


def _steps(config: Config, fuser: Fuser, records: list[InRecord], results: bool) -> list[Step]:
    engine = Engine(config, fuser, event_time=True, encode=True, results=results)
    half = len(records) // 2
    return [engine.step(records[:half]), engine.step(records[half:]), engine.finish()]


def _fuser(case: str, config: Config) -> Fuser:
    if case == "calibrated":
        return Fuser(config, temperatures=np.array([0.7, 1.3, 2.0]), calibration="sha256:0a")
    return Fuser(config)


def _metrics(config: Config, steps: list[Step]) -> bytes:
    metrics = Metrics(
        models=config.model_names, strategy=config.fusion.strategy, process_metrics=False
    )
    for step in steps:
        tally(metrics, config, step)  # the loop's own count of a step
    # The ``_created`` series hold each registry's own creation time; a series first
    # counted by a batch is listed where it was first counted.
    lines = generate_latest(metrics.registry).splitlines()
    return b"\n".join(sorted(line for line in lines if b"_created" not in line))


def _same_output(case: str, config: Config, records: list[InRecord]) -> list[Step]:
    """Assert that the engine without result dicts publishes the same records and counts
    the same metrics as with them; its steps."""
    with_dicts = _steps(config, _fuser(case, config), records, results=True)
    without = _steps(config, _fuser(case, config), records, results=False)

    def published(steps: list[Step]) -> list[tuple[Any, ...]]:
        return [(r.topic, r.key, r.value, r.headers) for s in steps for r in s.fused_records]

    assert published(without) == published(with_dicts)
    assert [f for s in without for f in s.finished] == [f for s in with_dicts for f in s.finished]
    assert _metrics(config, without) == _metrics(config, with_dicts)
    assert [_shown(s) for s in without] == [_shown(s) for s in with_dicts]
    return without


def test_the_test_environment_has_the_compiled_writer() -> None:
    """``make`` builds native/ into the virtualenv, so the tests here exercise it."""
    assert native.available(), "build native/ (make .venv) or unset FUSION_NATIVE=0"


@pytest.mark.parametrize("case", CASES)
@settings(max_examples=30)
@given(st.integers(0, 1 << 32), st.integers(1, 60))
def test_generated_streams_publish_the_same_bytes(
    case: str, stacker: Path, seed: int, n_events: int
) -> None:
    """Each case, on hypothesis-drawn streams: the same records and metrics without the
    result dicts as with them."""
    _same_output(case, _config(case, stacker), _records(CASES[case][0], _draws(seed), n_events))


@pytest.mark.parametrize("case", CASES)
def test_a_long_stream_is_written_by_the_compiled_writer_where_it_covers_it(
    case: str, stacker: Path
) -> None:
    """Each case on 3,000 seeded events: the same output, and the classification cases'
    results were all written without dicts (the others all with them)."""
    steps = _same_output(case, _config(case, stacker), _records(CASES[case][0], _draws(case), 3000))
    written = sum(len(c.status_of) for s in steps for c in s.counted)
    built = sum(len(s.results) for s in steps)
    assert (written > 0, built) == ((True, 0) if case in WRITTEN else (False, built))


# Names and values that need every escape JSON has, and text beyond ASCII.
ODD = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6
).filter(lambda s: s.strip() == s)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(ODD, min_size=2, max_size=3, unique=True),
    st.lists(ODD, min_size=2, max_size=2, unique=True),
    ODD,
    ODD,
    st.integers(0, 1 << 32),
)
def test_names_that_need_escaping_are_written_alike(
    labels: list[str], models: list[str], version: str, request_id: str, seed: int
) -> None:
    """Label and model names, versions, trace ids and request ids with quotes,
    backslashes, control characters and non-ASCII text: the same bytes as Python's."""
    config = build_config(
        {
            "models": [{"name": m} for m in models],
            "fusion": {"strategy": "soft_vote", "labels": labels},
        }
    )
    rng = np.random.default_rng(seed % (1 << 32))
    finished = []
    for i in range(6):
        members = {}
        for j, model in enumerate(models):
            if rng.random() < 0.2:
                continue
            soft = rng.random() < 0.7
            members[model] = PredictionEvent(
                f"{request_id}{i}",
                model,
                1000 + j,
                probs=rng.dirichlet(np.ones(len(labels))).tolist() if soft else None,
                label=None if soft else int(rng.integers(len(labels))),
                model_version=version if rng.random() < 0.5 else None,
                trace_id=version * 2 if rng.random() < 0.5 else None,
            )
        finished.append(FinishedRequest(f"{request_id}{i}", members, 1000, 1000, 1003, False))
    fuser = Fuser(config)
    written = fuser.fuse_bytes(finished)
    assert written is not None
    assert written[0] == [result_json(r) for r in fuser.fuse(finished)]


# Every finite double in [0, 1], subnormals among them, and the ones at the layout's
# edges: 1e-5 and below it (exponent form), 1.0, the tenths.
UNIT = st.floats(0, 1) | st.sampled_from([0.0, 1e-5, 9.99e-6, 5e-324, 0.1, 1.0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(1e-300, 1e300), min_size=2, max_size=3),
    st.lists(st.tuples(UNIT, UNIT), min_size=1, max_size=4),
)
def test_numbers_of_every_magnitude_are_written_alike(
    weights: list[float], probs: list[tuple[float, float]]
) -> None:
    """Weights from 1e-300 to 1e300 and probabilities down to the smallest subnormal:
    every number (weights, probabilities, contributions, confidence) in the same bytes
    as Python's. The weights are written normalised, so every number is at most 1 and
    none has a positive exponent."""
    models = [f"m{i}" for i in range(len(weights))]
    config = build_config(
        {
            "models": [{"name": m, "weight": w} for m, w in zip(models, weights, strict=True)],
            "fusion": {"strategy": "soft_vote", "labels": ["x", "y"]},
        }
    )
    finished = []
    for i, (p, q) in enumerate(probs):
        members = {m: PredictionEvent(f"r{i}", m, 1, probs=[p, q]) for m in models}
        finished.append(FinishedRequest(f"r{i}", members, 1, 1, 2, False))
    fuser = Fuser(config)
    written = fuser.fuse_bytes(finished)
    assert written is not None
    assert written[0] == [result_json(r) for r in fuser.fuse(finished)]


def test_a_string_the_writer_cannot_encode_goes_back_to_python() -> None:
    """A request id with a lone surrogate (not UTF-8): the writer hands the batch back."""
    config = build_config(
        {"models": [{"name": "a"}, {"name": "b"}], "fusion": {"labels": ["x", "y"]}}
    )
    event = PredictionEvent("r\ud800", "a", 1, probs=[0.25, 0.75])
    finished = [FinishedRequest("r\ud800", {"a": event}, 1, 1, 2, True)]
    assert Fuser(config).fuse_bytes(finished) is None
