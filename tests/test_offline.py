"""The offline engine (`fusion-worker fuse`, replay, backtest): event-time join and fusion
over records, deterministic output, invalid input reported; and Kafka's murmur2
partitioner, which places each request in the partition a topic would."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

import worker.offline
from worker.config import Config, build_config
from worker.errors import FusionError, InvalidEvent
from worker.fusion import Fuser
from worker.murmur2 import murmur2, partition_for
from worker.offline import fuse_records, run_fuse

MODELS = ["bert-base", "roberta", "distil"]
LABELS = ["negative", "neutral", "positive"]


def config(timeout_ms: int = 1000, **join: Any) -> Config:
    return build_config(
        {
            "join": {"timeout_ms": timeout_ms, "min_models": 1, **join},
            "fusion": {"strategy": "soft_vote", "labels": LABELS},
            "models": [{"name": m} for m in MODELS],
        }
    )


def pred(rid: str, model: str, ts: int, probs: tuple[float, ...] = (0.2, 0.3, 0.5)) -> bytes:
    return orjson.dumps({"request_id": rid, "model": model, "ts": ts, "probs": probs})


def stream(n: int, seed: int = 7) -> list[bytes]:
    """n requests; each model reports with a random delay (sometimes after the 1 s
    deadline, sometimes never), sometimes twice; lines in arrival (ts) order."""
    rng = random.Random(seed)
    events: list[tuple[int, bytes]] = []
    for i in range(n):
        start = 1_700_000_000_000 + i * 37
        for model in MODELS:
            roll = rng.random()
            if roll < 0.1:
                continue  # silent
            delay = rng.randint(0, 1500) if roll < 0.3 else rng.randint(0, 400)
            a, b = sorted((rng.random(), rng.random()))
            line = pred(f"req-{i}", model, start + delay, (a, b - a, 1 - b))
            events.append((start + delay, line))
            if roll > 0.95:
                events.append((start + delay + 5, line))  # a duplicate
    events.sort(key=lambda e: e[0])
    return [line for _, line in events]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# -- fuse_records ----------------------------------------------------------------------


def test_a_complete_request_is_fused_at_once() -> None:
    """Every model reported: one complete result, closed at its last event's stream time."""
    records = [(0, pred("r", m, 1000 + i * 10), None) for i, m in enumerate(MODELS)]
    [out] = fuse_records(config(), records, Fuser(config()))
    assert (out["request_id"], out["status"], out["missing"]) == ("r", "complete", [])
    assert (out["first_ts"], out["fused_ts"]) == (1000, 1020)


def test_a_silent_model_gives_a_partial_result_at_the_deadline() -> None:
    """A model that never reports: the request is fused partial when event time passes
    first_ts + timeout_ms, with the silent model missing."""
    records = [
        (0, pred("r", "bert-base", 1000), None),
        (0, pred("r", "roberta", 1200), None),
        (0, pred("other", "bert-base", 2500), None),  # moves stream time past 2000
    ]
    out = list(fuse_records(config(timeout_ms=1000), records, Fuser(config())))
    assert [o["request_id"] for o in out] == ["r", "other"]
    assert (out[0]["status"], out[0]["missing"], out[0]["fused_ts"]) == (
        "partial",
        ["distil"],
        2000,
    )


def test_pending_requests_are_expired_at_the_end_of_the_input() -> None:
    """Whatever is pending when the input ends is fused, expired, not lost."""
    records = [(0, pred("r", "bert-base", 1000), None)]
    [out] = fuse_records(config(), records, Fuser(config()))
    assert out["status"] == "partial"
    assert out["missing"] == ["roberta", "distil"]


def test_an_event_at_or_after_its_deadline_is_late() -> None:
    """Event time: an event whose ts reaches its request's deadline does not join it."""
    records = [
        (0, pred("r", "bert-base", 1000), None),
        (0, pred("r", "roberta", 2000), None),  # deadline 1000 + 1000: too late
    ]
    [out] = fuse_records(config(timeout_ms=1000), records, Fuser(config()))
    assert list(out["members"]) == ["bert-base"]


def test_partitions_keep_their_own_stream_time() -> None:
    """Stream time is per partition: events on partition 1 do not expire partition 0."""
    records = [
        (0, pred("a", "bert-base", 1000), None),
        (1, pred("b", "bert-base", 9000), None),
        (0, pred("a", "roberta", 1500), None),
    ]
    out = {o["request_id"]: o for o in fuse_records(config(), records, Fuser(config()))}
    assert set(out["a"]["members"]) == {"bert-base", "roberta"}


def test_the_record_timestamp_stands_in_for_a_missing_ts() -> None:
    """Records carry a timestamp; an event without ts uses it as its event time."""
    value = orjson.dumps({"request_id": "r", "model": "roberta", "label": "neutral"})
    [out] = fuse_records(config(), [(0, value, 4242)], Fuser(config()))
    assert out["first_ts"] == 4242


def test_invalid_records_go_to_on_invalid_with_their_position() -> None:
    """fuse_records hands each invalid record to on_invalid; the valid ones are fused."""
    seen: list[tuple[int, bytes | None, str]] = []

    def on_invalid(index: int, value: bytes | None, exc: InvalidEvent) -> None:
        seen.append((index, value, exc.reason))

    records = [(0, pred("r", "roberta", 1), None), (0, b"oops", None), (0, None, None)]
    out = list(fuse_records(config(), records, Fuser(config()), on_invalid))
    assert len(out) == 1
    assert seen == [(1, b"oops", "json"), (2, None, "json")]


def test_invalid_records_are_logged_without_a_callback(caplog: pytest.LogCaptureFixture) -> None:
    """Without on_invalid, invalid records are counted in a warning, never silently lost."""
    records = [(0, b"oops", None), (0, b"{}", None)]
    assert list(fuse_records(config(), records, Fuser(config()))) == []
    assert "2 invalid records were not fused: json=1, schema=1" in caplog.text


def test_every_request_is_fused_exactly_once() -> None:
    """Whatever the delays, silences and duplicates: one result per request with a valid
    event, no request twice."""
    lines = stream(600)
    records = [(0, line, None) for line in lines]
    out = [o["request_id"] for o in fuse_records(config(), records, Fuser(config()))]
    assert len(out) == len(set(out))
    assert set(out) == {orjson.loads(line)["request_id"] for line in lines}


def test_batching_does_not_change_the_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fusing finished requests one by one or in large batches gives the same results."""
    records = [(0, line, None) for line in stream(300)]
    big = list(fuse_records(config(), records, Fuser(config())))
    monkeypatch.setattr(worker.offline, "FUSE_BATCH", 1)
    assert list(fuse_records(config(), records, Fuser(config()))) == big


# -- run_fuse (the command) ------------------------------------------------------------


def test_the_same_file_twice_gives_byte_identical_output(tmp_path: Path) -> None:
    """Determinism: fusing the same input twice writes the same bytes."""
    src = write_lines(tmp_path / "in.jsonl", stream(500))
    assert run_fuse(config(), src, tmp_path / "a.jsonl", partitions=3) == 0
    assert run_fuse(config(), src, tmp_path / "b.jsonl", partitions=3) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_fuse_writes_one_result_per_request(tmp_path: Path) -> None:
    """The output file holds one fused result per request of the input."""
    lines = stream(200)
    src = write_lines(tmp_path / "in.jsonl", lines)
    assert run_fuse(config(), src, tmp_path / "out.jsonl") == 0
    ids = [r["request_id"] for r in results(tmp_path / "out.jsonl")]
    assert sorted(ids) == sorted({orjson.loads(line)["request_id"] for line in lines})


def test_partitions_follow_kafkas_default_partitioner(tmp_path: Path) -> None:
    """--partitions N equals fusing records placed by murmur2(request_id) % N."""
    lines = stream(300)
    src = write_lines(tmp_path / "in.jsonl", lines)
    run_fuse(config(), src, tmp_path / "out.jsonl", partitions=4)
    placed = [
        (partition_for(orjson.loads(line)["request_id"].encode(), 4), line, None) for line in lines
    ]
    want = list(fuse_records(config(), placed, Fuser(config())))
    assert results(tmp_path / "out.jsonl") == want


def test_invalid_lines_go_to_the_dlq_file(tmp_path: Path) -> None:
    """With --dlq, each invalid line is written with its reason, detail, line number and
    text; valid lines are fused; exit code 0."""
    lines = [pred("r", "roberta", 1), b"not json", b"", pred("r", "gpt-9", 2)]
    src = write_lines(tmp_path / "in.jsonl", lines)
    dlq = tmp_path / "dlq.jsonl"
    assert run_fuse(config(), src, tmp_path / "out.jsonl", dlq=dlq) == 0
    dead = results(dlq)
    assert [(d["error"], d["line"]) for d in dead] == [("json", 2), ("unknown_model", 4)]
    assert dead[0]["value"] == "not json"
    assert "'gpt-9'" in dead[1]["error_detail"]
    assert len(results(tmp_path / "out.jsonl")) == 1


def test_invalid_lines_without_a_dlq_are_counted_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --dlq, invalid lines are counted on stderr and the exit code is 1."""
    src = write_lines(tmp_path / "in.jsonl", [pred("r", "roberta", 1), b"{}", b"[]"])
    assert run_fuse(config(), src, tmp_path / "out.jsonl") == 1
    err = capsys.readouterr().err
    assert "2 invalid lines were not fused (json=1, schema=1)" in err
    assert "line 2" in err


def test_results_go_to_stdout_without_an_output_file(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """No --output: the fused results are written to standard output, one per line."""
    src = write_lines(tmp_path / "in.jsonl", [pred("r", "roberta", 1)])
    assert run_fuse(config(), src, None) == 0
    [line] = capsysbinary.readouterr().out.splitlines()
    assert orjson.loads(line)["request_id"] == "r"


def test_a_missing_input_file_is_a_named_error(tmp_path: Path) -> None:
    """An input file that does not exist: FusionError naming the path."""
    with pytest.raises(FusionError, match=r"nope\.jsonl"):
        run_fuse(config(), tmp_path / "nope.jsonl", tmp_path / "out.jsonl")


# -- murmur2 ---------------------------------------------------------------------------

# Computed with Kafka 4.1.1's org.apache.kafka.common.utils.Utils.murmur2 and
# toPositive(h) % 12, the Java producer's default partitioner.
JAVA = [
    (b"", 275646681, 9),
    (b"a", -1563381124, 4),
    (b"ab", 316155434, 2),
    (b"abc", 479470107, 3),
    (b"abcd", -1323649548, 8),
    (b"21", -973932308, 0),
    (b"foobar", -790332482, 6),
    (b"a-little-bit-long-string", -985981536, 8),
    (b"a-little-bit-longer-string", -1486304829, 11),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 5),
    (b"req-000001", -415874011, 1),
    (b"3f2b8c1e-9a4d-4e6b-8f0a-1c2d3e4f5a6b", 1860558966, 6),
    ("ümlaut-ключ-鍵".encode(), -1963839696, 8),
    (bytes([0xFF, 0x80, 0x7F, 0x00, 0xFE]), -1958495739, None),
]


@pytest.mark.parametrize(("key", "hash_", "partition"), JAVA)
def test_murmur2_equals_the_java_client(key: bytes, hash_: int, partition: int | None) -> None:
    """murmur2 and the partition of 12 match Kafka's Java client on known keys."""
    assert murmur2(key) == hash_
    if partition is not None:
        assert partition_for(key, 12) == partition


@given(st.binary(max_size=64), st.integers(1, 64))
def test_murmur2_equals_aiokafka(key: bytes, partitions: int) -> None:
    """Property: the same hash and partition as aiokafka's default partitioner."""
    assert murmur2(key) & 0xFFFFFFFF == aiokafka_murmur2(key)
    everything = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, everything, everything)


def test_partition_for_rejects_zero_partitions() -> None:
    """At least one partition is needed."""
    with pytest.raises(ValueError, match="got 0"):
        partition_for(b"k", 0)
