"""The output records of fused requests (worker/engine_outputs.py): which partition's
outputs each goes to, in what order, with what key, value and headers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.test_engine import config
from worker.engine_outputs import Outputs
from worker.events import FinishedRequest, PredictionEvent
from worker.records import Step

TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def finished(rid: str, traced: bool) -> FinishedRequest:
    event = PredictionEvent(rid, "m", 1, label=0)
    return FinishedRequest(
        rid, {"m": event.traced(TRACEPARENT) if traced else event}, 1, 2, 3, False
    )


@given(
    parts=st.lists(st.integers(0, 3), max_size=30),
    traced=st.booleans(),
)
def test_each_result_goes_to_its_partitions_outputs_in_closing_order(
    parts: list[int], traced: bool
) -> None:
    """Whatever the partitions' interleaving, each partition's outputs are its results
    in closing order, and ``fused_records`` all of them in closing order; the key is the
    request id, the value the result's bytes, a traced member's trace continued."""
    outputs = Outputs(config(), encode=True, track=False)
    done = [(p, finished(f"r{i}", traced)) for i, p in enumerate(parts)]
    values = [b"v%d" % i for i in range(len(parts))]
    step = Step()
    outputs.fused(done, values, traced, step)
    assert [(r.key, r.value) for r in step.fused_records] == [
        (f"r{i}".encode(), b"v%d" % i) for i in range(len(parts))
    ]
    expected: dict[int, list[bytes]] = {}
    for i, p in enumerate(parts):
        expected.setdefault(p, []).append(f"r{i}".encode())
    assert {p: [r.key for r in recs] for p, recs in step.outputs.items()} == expected
    for rec in step.fused_records:
        assert rec.topic == config().kafka.output_topic
        assert (rec.headers is not None) == traced
        if rec.headers is not None:
            [(name, value)] = rec.headers
            assert name == "traceparent"
            assert value.startswith(b"00-" + b"a" * 32)
