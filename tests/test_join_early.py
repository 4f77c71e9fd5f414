"""Early decision in the join: a request closes as soon as its missing members cannot
change the fused label, and that label is always the complete fusion's, whatever the
missing members send (or whether they send at all); their later events are late."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fusion.factories import make_config
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Batch, Fuser
from worker.fusion.early import EARLY_STRATEGIES, EarlyDecider, decide_one
from worker.join import JoinTable

Array = np.ndarray[Any, Any]
SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "fused.v1.json").read_text())


def _decider(fuser: Fuser, min_models: int = 1) -> EarlyDecider:
    return EarlyDecider.from_fuser(fuser, min_models, 1e-3)


def _event(rid: str, model: str, ts: int, row: Array, as_label: bool) -> PredictionEvent:
    if as_label:
        return PredictionEvent(rid, model, ts, label=int(np.argmax(row)))
    return PredictionEvent(rid, model, ts, probs=row.tolist())


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    """A configuration (strategy, m members, k labels, weights, min_models, maybe
    temperatures) and n requests: each member's prediction (probabilities with ties and
    zeros likely, or a label) and an arrival order."""
    m = draw(st.integers(2, 4))
    k = draw(st.integers(2, 3))
    n = draw(st.integers(1, 8))
    strategy = draw(st.sampled_from(EARLY_STRATEGIES))
    weights = draw(
        st.lists(st.sampled_from([0.0, 1.0, 2.0]) | st.floats(0.05, 5.0), min_size=m, max_size=m)
    )
    if sum(weights) == 0:
        weights[0] = 1.0
    temperature = st.sampled_from([1.0, 0.5, 2.0]) | st.floats(0.2, 5.0)
    temperatures = draw(st.none() | st.lists(temperature, min_size=m, max_size=m))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    peaked = rng.dirichlet(np.full(k, 0.3), size=(n, m))
    coarse = rng.integers(0, 3, size=(n, m, k)).astype(np.float64)
    coarse[coarse.sum(axis=2) == 0] = 1.0
    coarse /= coarse.sum(axis=2, keepdims=True)
    probs = np.where(rng.random((n, m, 1)) < 0.5, peaked, coarse)
    return {
        "strategy": strategy,
        "weights": weights,
        "k": k,
        "min_models": draw(st.integers(1, m)),
        "temperatures": None if temperatures is None else np.array(temperatures),
        "probs": probs,
        "as_label": rng.random((n, m)) < 0.2,
        "orders": [rng.permutation(m).tolist() for _ in range(n)],
        "seed": seed,
    }


def _fuser(case: dict[str, Any]) -> Fuser:
    labels = [f"c{i}" for i in range(case["k"])]
    config = make_config(case["weights"], labels=labels, min_models=case["min_models"])
    return Fuser(config, case["strategy"], temperatures=case["temperatures"])


def _completions(
    done: FinishedRequest, models: tuple[str, ...], k: int, rng: np.random.Generator
) -> list[FinishedRequest]:
    """The request as the missing members could have completed it: each one-hot on every
    label (all of them, and one at a time with the others never coming), random
    distributions, and random subsets that never come."""
    missing = [name for name in models if name not in done.members]
    eye = np.eye(k)
    out: list[FinishedRequest] = []

    def add(sent: dict[str, Array]) -> None:
        members = dict(done.members)
        for name, row in sent.items():
            members[name] = PredictionEvent(done.request_id, name, 99, probs=row.tolist())
        out.append(FinishedRequest(done.request_id, members, 0, 0, 1, False))

    for c in range(k):
        add(dict.fromkeys(missing, eye[c]))
        for name in missing:
            add({name: eye[c]})
    for _ in range(4):
        add({name: rng.dirichlet(np.full(k, 0.3)) for name in missing})
        add({name: eye[rng.integers(k)] for name in missing if rng.random() < 0.5})
    return out


@settings(max_examples=300)
@given(case=cases())
def test_a_decided_label_is_the_complete_fusions_label_whatever_the_rest_send(
    case: dict[str, Any],
) -> None:
    """Events join one by one in their arrival order with a decider built from the
    Fuser (its weights, min_models, calibration); every request the join decides has the
    label the Fuser gives it for every completion of its missing members, and the
    missing members' events that follow are late."""
    fuser = _fuser(case)
    models = fuser.models
    table = JoinTable(models, 1000, 10_000, 1000, decider=_decider(fuser, case["min_models"]))
    rng = np.random.default_rng(case["seed"])
    decided: list[FinishedRequest] = []
    for i, order in enumerate(case["orders"]):
        rid = f"r{i}"
        closed = False
        for t, j in enumerate(order):
            ev = _event(rid, models[j], t, case["probs"][i, j], bool(case["as_label"][i, j]))
            outcome = table.add(ev, now_ms=t)
            assert outcome == ("late" if closed else "accepted")
            for done in table.drain():
                closed = True
                assert not done.expired
                if done.decided:
                    assert len(done.members) < len(models)
                    decided.append(done)
    for done in decided:
        (result,) = fuser.fuse([done])
        assert result["status"] == "decided"
        assert result["missing"] == [name for name in models if name not in done.members]
        for completion in _completions(done, models, case["k"], rng):
            (full,) = fuser.fuse([completion])
            assert full["label"] == result["label"], (completion.members, result)


def test_without_a_decider_a_request_waits_for_every_member() -> None:
    """The default: the same clear request stays pending until its last member."""
    models = ("a", "b", "c")
    table = JoinTable(models, 1000, 10_000, 1000)
    for name in models[:2]:
        table.add(PredictionEvent("r", name, 0, probs=[1.0, 0.0]), 0)
    assert table.drain() == []
    assert "r" in table


def test_a_clear_request_is_decided_before_its_last_member_and_it_comes_late() -> None:
    """Weights 0.4 / 0.4 / 0.2, soft vote: two members sure of c0 leave the third
    nothing to change; the request closes decided with c0, the third event is late, and
    the result names it missing with status decided."""
    config = make_config((0.4, 0.4, 0.2), labels=["c0", "c1"], models=["a", "b", "c"])
    fuser = Fuser(config, "soft_vote")
    table = JoinTable(fuser.models, 1000, 10_000, 1000, decider=_decider(fuser))
    assert table.add(PredictionEvent("r", "a", 0, probs=[0.9, 0.1]), 0) == "accepted"
    assert table.drain() == []
    assert table.add(PredictionEvent("r", "b", 1, probs=[0.95, 0.05]), 1) == "accepted"
    (done,) = table.drain()
    assert (done.decided, done.expired, sorted(done.members)) == (True, False, ["a", "b"])
    assert table.add(PredictionEvent("r", "c", 2, probs=[0.0, 1.0]), 2) == "late"
    (result,) = fuser.fuse([done])
    assert (result["status"], result["label"], result["missing"]) == ("decided", "c0", ["c"])
    jsonschema.Draft202012Validator(SCHEMA).validate(result)


def test_the_decider_follows_the_fusers_calibration() -> None:
    """Weights 1 / 1 / 0.5, soft vote, a and b in: a says c0 0.9, b c1 0.6. Raw, c0 leads
    by 1.3 - 0.7 = 0.6, more than c's 0.5: decided. With b sharpened (T = 0.1: c1 about
    0.98), c1 leads by about 0.17, which c could overturn: not decided."""
    config = make_config((1.0, 1.0, 0.5), labels=["c0", "c1"], models=["a", "b", "c"])
    members = [
        PredictionEvent("r", "a", 0, probs=[0.9, 0.1]),
        PredictionEvent("r", "b", 1, probs=[0.4, 0.6]),
        None,
    ]
    assert _decider(Fuser(config, "soft_vote"))(members) == 0
    sharp = Fuser(config, "soft_vote", temperatures=np.array([1.0, 0.1, 1.0]))
    assert _decider(sharp)(members) is None
    flat = Fuser(config, "soft_vote", temperatures=np.array([1.0, 20.0, 1.0]))
    assert _decider(flat)(members) == 0  # b near 0.49 / 0.51: c0 leads by about 0.79


@pytest.mark.parametrize("strategy", EARLY_STRATEGIES)
def test_the_decider_follows_the_fusers_weights(strategy: str) -> None:
    """A member that carries nearly all the weight decides alone; after set_weights
    makes it light, the same event no longer decides."""
    config = make_config((10.0, 1.0, 1.0), labels=["c0", "c1"], models=["a", "b", "c"])
    fuser = Fuser(config, strategy)
    decider = _decider(fuser)
    members = [PredictionEvent("r", "a", 0, probs=[0.99, 0.01]), None, None]
    assert decider(members) == 0
    fuser.set_weights(np.array([1.0, 1.0, 1.0]))
    assert decider(members) is None


@settings(max_examples=300)
@given(case=cases())
def test_the_decider_answers_as_decide_one_on_the_rows_it_fuses(case: dict[str, Any]) -> None:
    """The decider's shortcut (less weight present than missing: undecided) never
    skips a request decide_one would decide: on every prefix of every arrival order it
    answers exactly as decide_one on the members' rows. With calibration (computed in
    plain Python, decided with a margin) it may only decide less, never otherwise."""
    fuser = _fuser(case)
    decider = _decider(fuser, case["min_models"])
    m, k = len(fuser.models), case["k"]
    for i, order in enumerate(case["orders"]):
        events: list[PredictionEvent | None] = [None] * m
        for j in order:
            ev = _event(
                f"r{i}", fuser.models[j], 0, case["probs"][i, j], bool(case["as_label"][i, j])
            )
            events[j] = ev
            present = np.array([e is not None for e in events])
            probs = np.zeros((1, m, k))
            for jj, e in enumerate(events):
                if e is not None:
                    probs[0, jj] = (
                        np.eye(k)[e.label] if e.label is not None else case["probs"][i, jj]
                    )
            scored = fuser.calibrate(Batch(probs, np.empty((1, 0)), present[None, :])).probs[0]
            rows = [scored[jj].tolist() if present[jj] else None for jj in range(m)]
            expected = decide_one(
                case["strategy"], rows, fuser.weights.tolist(), case["min_models"], 1.001
            )
            got = decider(events)
            temperatures = case["temperatures"]
            if temperatures is None or (temperatures == 1.0).all():
                assert got == expected
            else:
                assert got is None or got == expected
