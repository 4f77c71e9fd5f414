"""The output bytes did not change when results came to be built through a shared member
roster and encoded with msgspec: on generated event streams of every kind (each
classification strategy, early decisions, calibration, stacking with its fallback,
label vocabularies, regression with huge scores, text), the engine's fused records
equal, byte for byte, ``orjson.dumps`` of the frozen earlier builder's results
(tests/fusion/result_before.py), key order and absent optional keys included."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fusion.result_before import ReferenceFuser
from worker.config import Config, build_config
from worker.engine import Engine, InRecord
from worker.fusion import Fuser
from worker.fusion.artefact import stacking_document, write_artefact
from worker.fusion.result import result_json

MODELS = ("bert", "roberta", "distil")
LABELS = ("negative", "neutral", "positive")
CODES = ("1", "2", "4", "5", "spam")  # distil's own codes in the vocabulary case
TEXTS = ("Hello world", "hello world!", "Hallo Welt", "héllo wörld ✓", "bonjour", "a\nb")
SCORES = (0.5, -3.25, 1e15, 9.999999999999998e15, 1e16, -1e16, 1.5e20, -2e300, 1e-7, 0.0)
CALIBRATION = "sha256:0123456789abcdef"

# name: (task, [fusion] keys, [join] keys, model overrides)
CASES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "soft_vote_early": ("labels", {"strategy": "soft_vote"}, {"early_decision": True}),
    "hard_vote_early": ("labels", {"strategy": "hard_vote"}, {"early_decision": True}),
    "weighted_average": ("labels", {"strategy": "weighted_average"}, {"min_models": 2}),
    "geometric_mean": ("labels", {"strategy": "geometric_mean"}, {}),
    "median": ("labels", {"strategy": "median"}, {}),
    "trimmed_mean": ("labels", {"strategy": "trimmed_mean"}, {"min_models": 2}),
    "calibrated": ("labels", {"strategy": "soft_vote"}, {}),
    "stacking": ("labels", {"strategy": "stacking", "fallback": "hard_vote"}, {}),
    "vocabulary": ("vocab", {"strategy": "soft_vote"}, {}),
    "regression": ("scores", {"strategy": "weighted_average"}, {"min_models": 2}),
    "regression_median": ("scores", {"strategy": "median"}, {}),
    "text_vote": ("text", {"task": "text", "strategy": "text_vote"}, {"min_models": 2}),
    "consensus": ("text", {"task": "text", "strategy": "consensus"}, {}),
}


@pytest.fixture(scope="module")
def stacker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stacker") / "stacker.json"
    coef = np.random.default_rng(2).normal(size=(len(LABELS), len(MODELS) * len(LABELS)))
    write_artefact(path, stacking_document(MODELS, LABELS, coef, np.zeros(len(LABELS)), {}))
    return path


def _config(case: str, stacker: Path) -> Config:
    task, fusion, join = CASES[case]
    models: list[dict[str, Any]] = [
        {"name": m, "weight": w} for m, w in zip(MODELS, (0.3, 0.45, 0.25), strict=True)
    ]
    if task in ("labels", "vocab"):
        fusion = {**fusion, "labels": list(LABELS)}
    if task == "vocab":
        mapping = {"1": "negative", "2": "negative", "4": "positive", "5": "positive"}
        models[2] |= {"labels": list(CODES), "label_map": mapping}
    if case == "stacking":
        fusion["stacker"] = str(stacker)
    return build_config({"join": {"timeout_ms": 1000, **join}, "fusion": fusion, "models": models})


def _fusers(case: str, config: Config) -> tuple[Fuser, Fuser]:
    """(the current Fuser, the reference one), alike but for how results are built."""
    if case == "calibrated":
        temperatures = np.array([0.7, 1.3, 2.0])
        return (
            Fuser(config, temperatures=temperatures, calibration=CALIBRATION),
            ReferenceFuser(config, temperatures=temperatures, calibration=CALIBRATION),
        )
    return Fuser(config), ReferenceFuser(config)


def _run(config: Config, fuser: Fuser, records: list[InRecord]) -> tuple[list[Any], list[Any]]:
    engine = Engine(config, fuser, event_time=True, encode=True)
    steps = [engine.step(records[: len(records) // 2]), engine.step(records[len(records) // 2 :])]
    steps.append(engine.finish())
    return [r for s in steps for r in s.fused_records], [r for s in steps for r in s.results]


def _same_bytes(case: str, config: Config, records: list[InRecord]) -> list[dict[str, Any]]:
    """Assert that the current engine's records equal the reference's bytes; the
    reference results."""
    current, reference = _fusers(case, config)
    records_now, results_now = _run(config, current, records)
    _, results_before = _run(config, reference, records)
    expected = [orjson.dumps(r) for r in results_before]
    assert [orjson.dumps(r) for r in results_now] == expected
    assert [r.value for r in records_now] == expected
    assert [result_json(r) for r in results_now] == expected
    return results_before


def _event(
    task: str,
    rid: str,
    j: int,
    ts: int,
    pick: Any,
) -> dict[str, Any]:
    """One event of model ``j``; ``pick(options)`` chooses among options, ``pick(None)``
    gives a float in [0, 1)."""
    event: dict[str, Any] = {"request_id": rid, "model": MODELS[j], "ts": ts}
    if task == "scores":
        event["score"] = pick(SCORES) * (1 + pick(None))
    elif task == "text":
        event["text"] = pick(TEXTS)
        if pick((True, False)):
            event["confidence"] = pick(None)
    else:
        codes = CODES if task == "vocab" and j == 2 else LABELS
        if pick((True, False, False)):
            event["label"] = pick(codes)
        else:
            raw = [pick((0.0, 1.0, pick(None))) for _ in codes]
            if task == "vocab" and j == 2 and pick((True, False)):
                raw = [0.0] * (len(codes) - 1) + [1.0]  # only spam: the member abstains
            if sum(raw) == 0:
                raw[0] = 1.0
            event["probs"] = [x / sum(raw) for x in raw]
    if pick((True, False)):
        event["model_version"] = pick(("v1", "v2", "2025.06"))
    if pick((True, False, False)):
        event["trace_id"] = pick(("t-1", "t-2", "trace é"))
    return event


def _records(task: str, draws: Iterator[int], n_events: int) -> list[InRecord]:
    """``n_events`` events of a few requests on two partitions, in ts order, with gaps
    that make some requests partial (deadline) or insufficient, choices read from
    ``draws`` (integers >= 0)."""

    def pick(options: Any) -> Any:
        value = next(draws)
        if options is None:
            return (value % 1000) / 1000
        return options[value % len(options)]

    records = []
    ts = 1_700_000_000_000
    for offset in range(n_events):
        ts += pick((0, 1, 5, 40, 300, 900))
        rid = f"r{pick(range(8))}"
        j = pick(range(len(MODELS)))
        headers: tuple[tuple[str, bytes], ...] = ()
        if pick((True, False, False)):
            trace = f"{pick(range(1 << 30)) + 1:032x}"
            headers = (("traceparent", f"00-{trace}-{pick(range(1 << 30)) + 1:016x}-01".encode()),)
        value = orjson.dumps(_event(task, rid, j, ts, pick))
        records.append(InRecord("in", pick((0, 1)), offset, rid.encode(), value, None, headers))
    return records


def _draws(seed: int | str) -> Iterator[int]:
    rng = random.Random(seed)
    return iter(lambda: rng.randrange(1 << 31), None)


@pytest.mark.parametrize("case", CASES)
@settings(max_examples=40)
@given(st.integers(0, 1 << 32), st.integers(1, 60))
def test_generated_streams_give_the_same_bytes(
    case: str, stacker: Path, seed: int, n_events: int
) -> None:
    """Each case, on hypothesis-drawn streams (a seed and a length): the same output
    bytes as before."""
    _same_bytes(case, _config(case, stacker), _records(CASES[case][0], _draws(seed), n_events))


@pytest.mark.parametrize("case", CASES)
def test_a_long_stream_gives_the_same_bytes_and_covers_every_field(
    case: str, stacker: Path
) -> None:
    """Each case on 3,000 seeded random events: the same bytes as before, and the stream
    did reach what the case is about (statuses, trace ids, versions, fallback,
    calibration, uncovered labels and abstentions, huge scores)."""
    records = _records(CASES[case][0], _draws(case), 3000)
    results = _same_bytes(case, _config(case, stacker), records)
    text = b"\n".join(orjson.dumps(r) for r in results)
    statuses = {r["status"] for r in results}
    assert {"complete", "partial"} <= statuses
    for needle in (b'"trace_id":"t-', b'"model_versions":{"'):
        assert needle in text
    if CASES[case][0] != "text":  # text members do not list their trace ids (as before)
        assert b'"trace_id":"0000' in text
    expected: dict[str, list[bytes]] = {
        "soft_vote_early": [b'"status":"decided"'],
        "hard_vote_early": [b'"status":"decided"'],
        "weighted_average": [b'"status":"insufficient"'],
        "calibrated": [b'"calibration":"sha256:'],
        "stacking": [b'"fallback":"hard_vote"'],
        "vocabulary": [b",null,", b'"label":null,"probs":[0.0,'],
        "regression": [b"e+", b'"status":"insufficient"'],
        "trimmed_mean": [b'"status":"insufficient"'],
        "text_vote": [b'"similarity":', b'"confidence":0.', b'"status":"insufficient"'],
    }
    for needle in expected.get(case, []):
        assert needle in text, needle


def test_a_score_from_1e16_up_is_written_as_orjson_writes_it() -> None:
    """msgspec would write 1e16 and 1.5e+20 with an unsigned exponent; result_json keeps
    orjson's signed one, for the fused score and for a member's."""
    result = {"score": 1e16, "members": {"a": {"weight": 1.0, "score": 1.5e20}}}
    assert result_json(result) == b'{"score":1e+16,"members":{"a":{"weight":1.0,"score":1.5e+20}}}'
    small = {"score": 0.5, "members": {"a": {"weight": 1.0, "score": -1.5e20}}}
    assert result_json(small) == orjson.dumps(small)
