"""Per-model label vocabularies at load and at decode: ``[[models]] labels`` and
``label_map`` are validated with errors naming the key and value, and the decoder maps a
model's own codes to the fused labels (several-to-one summed, unmapped mass dropped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.config import Config, build_config, load_config
from worker.decode import Decoder
from worker.errors import ConfigError, InvalidEvent
from worker.events import unpack_probs

LABELS = ["negative", "neutral", "positive"]
# "sent" has its own codes, covers two labels, and sums two codes into "negative";
# "rater" has an extra code that maps to no fused label.
SENT = {
    "name": "sent",
    "labels": ["POS", "NEG", "ANGRY"],
    "label_map": {"POS": "positive", "NEG": "negative", "ANGRY": "negative"},
}
RATER = {"name": "rater", "labels": ["positive", "neutral", "negative", "spam"]}


def config(*models: dict[str, Any], labels: list[str] = LABELS, **fusion: Any) -> Config:
    return build_config({"models": list(models), "fusion": {"labels": labels, **fusion}})


DECODER = Decoder(config(SENT, RATER, {"name": "plain"}))


def decode(**fields: Any) -> Any:
    doc = {"request_id": "r", "ts": 1, **fields}
    return DECODER.decode(orjson.dumps(doc), None)


def reason(**fields: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode(**fields)
    return info.value.reason


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        ({"labels": ["a", "a", "positive"]}, "models[0].labels", ["a", "a", "positive"]),
        ({"labels": ["POS"]}, "models[0].labels", ["POS"]),
        ({"label_map": {"POS": "positive"}}, "models[0].label_map", {"POS": "positive"}),
        (
            {"labels": ["POS", "NEG"], "label_map": {"POS": "positive", "BAD": "negative"}},
            "models[0].label_map.BAD",
            "negative",
        ),
        (
            {"labels": ["POS", "NEG"], "label_map": {"POS": "good"}},
            "models[0].label_map.POS",
            "good",
        ),
        ({"labels": ["x", "y"]}, "models[0].labels", ["x", "y"]),
    ],
    ids=["duplicate-code", "one-code", "map-without-labels", "key-not-a-code", "not-fused", "none"],
)
def test_a_bad_vocabulary_is_refused_naming_key_and_value(
    model: dict[str, Any], key: str, value: Any
) -> None:
    """Duplicate codes, a single code, a map without codes, a map key that is not a code,
    a mapped label outside fusion.labels, codes that reach no fused label: each refused."""
    with pytest.raises(ConfigError) as err:
        config({"name": "m", **model})
    assert err.value.key == key
    assert err.value.value == value


def test_a_vocabulary_needs_a_classification_task() -> None:
    """Scores have no labels to map to: labels on a model of a regression config is refused."""
    with pytest.raises(ConfigError) as err:
        config({"name": "m", "labels": ["a", "b"]}, labels=[], strategy="weighted_average")
    assert err.value.key == "models[0].labels"
    assert "fusion.labels" in err.value.problem


def test_a_vocabulary_loads_from_toml(tmp_path: Path) -> None:
    """``labels`` and an inline ``label_map`` table in ``[[models]]``; the coverage follows."""
    path = tmp_path / "fusion.toml"
    path.write_text(
        '[fusion]\nlabels = ["negative", "neutral", "positive"]\n'
        '[[models]]\nname = "sent"\nlabels = ["POS", "NEG"]\n'
        'label_map = { POS = "positive", NEG = "negative" }\n'
        '[[models]]\nname = "plain"\n'
    )
    cfg = load_config(path, env={})
    assert cfg.models[0].label_map == {"POS": "positive", "NEG": "negative"}
    assert cfg.vocabularies.cover.tolist() == [[True, False, True], [True, True, True]]


# -- decoding ---------------------------------------------------------------------------


def test_probs_in_own_codes_are_mapped_and_several_to_one_summed() -> None:
    """POS 0.5, NEG 0.3, ANGRY 0.2 -> negative 0.5, neutral 0 (not covered), positive 0.5."""
    ev = decode(model="sent", probs=[0.5, 0.3, 0.2])
    assert unpack_probs(ev.probs) == [0.3 + 0.2, 0.0, 0.5]


def test_the_event_labels_reorder_own_codes() -> None:
    """``labels`` in the model's own codes give the order of ``probs``."""
    ev = decode(model="sent", probs=[0.2, 0.5, 0.3], labels=["ANGRY", "POS", "NEG"])
    assert unpack_probs(ev.probs) == [0.2 + 0.3, 0.0, 0.5]


def test_mass_on_an_unmapped_code_is_dropped_and_the_rest_renormalised() -> None:
    """spam 0.5 is left out; the fused labels share the other half in proportion."""
    ev = decode(model="rater", probs=[0.3, 0.1, 0.1, 0.5])
    assert unpack_probs(ev.probs) == pytest.approx([0.2, 0.2, 0.6], abs=1e-15)


def test_all_mass_on_unmapped_codes_gives_zeros() -> None:
    """Nothing on a fused label: a zero vector (the fusion lets the member abstain)."""
    ev = decode(model="rater", probs=[0.0, 0.0, 0.0, 1.0])
    assert unpack_probs(ev.probs) == [0.0, 0.0, 0.0]


def test_a_label_code_is_mapped_and_an_unmapped_one_abstains() -> None:
    """ANGRY is negative (index 0); spam maps to no fused label (-1)."""
    assert decode(model="sent", label="ANGRY").label == 0
    assert decode(model="rater", label="spam").label == -1


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"model": "sent", "label": "negative"}, "unknown_label"),
        ({"model": "sent", "probs": [0.5, 0.5], "labels": ["POS", "positive"]}, "unknown_label"),
        ({"model": "sent", "probs": [0.5, 0.5]}, "label_mismatch"),
        ({"model": "sent", "probs": [0.5, 0.5], "labels": ["POS", "NEG"]}, "label_mismatch"),
        ({"model": "sent", "probs": [0.5, 0.3, 0.3]}, "not_normalised"),
        ({"model": "sent", "score": 0.5}, "label_mismatch"),
        ({"model": "plain", "label": "POS"}, "unknown_label"),
    ],
    ids=["fused-name", "labels-fused-name", "short", "labels-subset", "sum", "score", "plain"],
)
def test_own_codes_are_checked(fields: dict[str, Any], expected: str) -> None:
    """A model with codes of its own is held to them: a fused label name is not one of its
    codes, ``labels`` must be a permutation of its codes; a model without keeps the fused
    labels."""
    assert reason(**fields) == expected


def test_a_model_without_vocabulary_decodes_as_before() -> None:
    """``plain`` still sends fused labels, in any order."""
    ev = decode(model="plain", probs=[0.7, 0.2, 0.1], labels=["positive", "neutral", "negative"])
    assert unpack_probs(ev.probs) == [0.1, 0.2, 0.7]


def test_a_mapped_label_of_the_wrong_type_names_its_code() -> None:
    """msgspec does not name a table's key in its error; the message does."""
    with pytest.raises(ConfigError) as err:
        config({"name": "m", "labels": ["POS", "NEG"], "label_map": {"NEG": "negative", "POS": 1}})
    assert err.value.key == "models[0].label_map.POS"
    assert err.value.value == 1
