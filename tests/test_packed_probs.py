"""PredictionEvent.probs packed as float64: what the decoder makes, what build_batch and
the changelog state read from it, and the construction from a sequence of floats."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.config import build_config
from worker.decode import Decoder
from worker.errors import FusionError
from worker.events import FinishedRequest, PredictionEvent, pack_probs, unpack_probs
from worker.fusion.batch import build_batch
from worker.join import JoinTable

LABELS = ["negative", "neutral", "positive"]
MODELS = ("a", "b")
finite = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=8))
def test_pack_and_unpack_round_trip_to_the_bit(values: list[float]) -> None:
    """unpack_probs(pack_probs(v)) gives back the same Python floats, 8 bytes each."""
    packed = pack_probs(values)
    assert len(packed) == 8 * len(values)
    assert unpack_probs(packed) == values
    assert all(type(p) is float for p in unpack_probs(packed))


def test_an_event_built_from_a_tuple_holds_it_packed() -> None:
    """PredictionEvent(probs=(...)) packs the sequence; bytes are kept as they are."""
    packed = pack_probs((0.2, 0.3, 0.5))
    assert PredictionEvent("r", "a", 1, probs=(0.2, 0.3, 0.5)).probs == packed
    assert PredictionEvent("r", "a", 1, probs=packed).probs is packed
    assert PredictionEvent("r", "a", 1, label=2).probs is None


def test_the_decoder_packs_probs_in_the_configured_label_order() -> None:
    """A decoded event's probs unpack to the sent values, aligned to fusion.labels."""
    decoder = Decoder(build_config({"models": [{"name": "a"}], "fusion": {"labels": LABELS}}))
    value = {"request_id": "r", "model": "a", "ts": 1, "probs": [0.7, 0, 0.3]}
    value["labels"] = ["positive", "negative", "neutral"]
    ev = decoder.decode(orjson.dumps(value), None)
    assert ev.probs is not None
    assert unpack_probs(ev.probs) == [0.0, 0.3, 0.7]


def test_build_batch_reads_packed_probs_and_labels_into_a_writable_array() -> None:
    """Members' probs land in (n, m, k) in model order; a label is one-hot, a missing
    member zeros; the array can be written to like any other."""
    requests = [
        FinishedRequest(
            "r1",
            {"b": PredictionEvent("r1", "b", 1, probs=(0.1, 0.2, 0.7))},
            1,
            0,
            0,
            False,
        ),
        FinishedRequest(
            "r2",
            {
                "a": PredictionEvent("r2", "a", 1, label=1),
                "b": PredictionEvent("r2", "b", 1, probs=(0.6, 0.3, 0.1)),
            },
            1,
            0,
            0,
            False,
        ),
    ]
    batch = build_batch(requests, MODELS, len(LABELS))
    want = [[[0, 0, 0], [0.1, 0.2, 0.7]], [[0, 1, 0], [0.6, 0.3, 0.1]]]
    np.testing.assert_array_equal(batch.probs, want)
    np.testing.assert_array_equal(batch.present, [[False, True], [True, True]])
    assert batch.probs.flags.writeable


def test_build_batch_names_a_member_with_the_wrong_number_of_probs() -> None:
    """A member with fewer probabilities than labels is a FusionError that counts them."""
    ev = PredictionEvent("r", "a", 1, probs=(0.5, 0.5))
    with pytest.raises(FusionError, match="member 'a' sent 2 probabilities, 3 labels"):
        build_batch([FinishedRequest("r", {"a": ev}, 1, 0, 0, False)], MODELS, len(LABELS))


@given(st.lists(st.floats(0, 1), min_size=2, max_size=5))
def test_changelog_state_holds_probs_as_json_floats_and_restores_them(
    probs: list[float],
) -> None:
    """pending_state writes probs as a JSON list of the floats; restore packs them back."""
    table = JoinTable(MODELS, 100, 500, 10)
    table.add(PredictionEvent("r", "a", 1, probs=probs), 0)
    state = orjson.loads(orjson.dumps(table.pending_state("r")))
    assert state["members"]["a"]["probs"] == probs
    fresh = JoinTable(MODELS, 100, 500, 10)
    fresh.restore(state)
    fresh.close_all(1)
    [done] = fresh.drain()
    assert done.members["a"].probs == pack_probs(probs)


def _member(request_id: str, model: str, kind: int, values: list[float]) -> PredictionEvent:
    """An event of ``kind``: 0 probs, 1 a label (values[0] picks it, -1 abstains), 2
    probs of another length than the labels'."""
    if kind == 0:
        return PredictionEvent(request_id, model, 1, probs=values[: len(LABELS)])
    if kind == 1:
        return PredictionEvent(request_id, model, 1, label=int(values[0] * 4) - 1)
    return PredictionEvent(request_id, model, 1, probs=values[: len(LABELS) - 1])


members = st.lists(
    st.tuples(
        st.integers(0, 3),  # 3: the model is missing
        st.integers(0, 2),
        st.lists(st.floats(0, 0.999), min_size=len(LABELS), max_size=len(LABELS)),
    ),
    min_size=len(MODELS),
    max_size=len(MODELS),
)


def _build(requests: list[FinishedRequest], compiled: bool) -> object:
    """build_batch's arrays, or the error it raises, with or without the compiled
    packing."""
    from worker import native

    saved = native.pack_members
    assert saved is not None, "build native/ (make .venv) or unset FUSION_NATIVE=0"
    native.pack_members = saved if compiled else None
    try:
        batch = build_batch(requests, MODELS, len(LABELS))
    except FusionError as exc:
        return str(exc)
    finally:
        native.pack_members = saved
    assert batch.probs.flags.writeable
    assert batch.present.flags.writeable
    return batch.probs.tolist(), batch.present.tolist()


@given(st.lists(members, max_size=12), st.booleans())
def test_the_compiled_packing_builds_what_python_builds(
    requests: list[list[tuple[int, int, list[float]]]], odd_lengths: bool
) -> None:
    """The compiled packing gives build_batch's arrays (probs, one-hot labels, an
    abstaining -1, missing models) or leaves the batch to Python, which names a member
    with the wrong number of probabilities."""
    finished = []
    for i, drawn in enumerate(requests):
        rid = f"r{i}"
        events = {
            model: _member(rid, model, kind if odd_lengths else min(kind, 1), values)
            for model, (missing, kind, values) in zip(MODELS, drawn, strict=True)
            if missing != 3
        }
        finished.append(FinishedRequest(rid, events, 1, 0, 0, False))
    assert _build(finished, compiled=True) == _build(finished, compiled=False)
