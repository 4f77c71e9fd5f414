"""Every fused result validates against schemas/fused.v1.json: each strategy, each status,
classification and regression; numbers are plain finite Python floats."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest

from tests.fusion.factories import MODELS, finished, make_config
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser
from worker.fusion.artefact import stacking_document, write_artefact
from worker.fusion.registry import STRATEGIES

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "fused.v1.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
PROBS = {"bert": (0.1, 0.2, 0.7), "roberta": (0.2, 0.3, 0.5), "distil": (0.3, 0.4, 0.3)}


def _classification_requests() -> list[FinishedRequest]:
    """complete (with versions and a trace), partial (a label-only member), insufficient."""
    complete = {
        m: PredictionEvent("c", m, 5, probs=p, model_version="v1", trace_id=f"t-{m}")
        for m, p in PROBS.items()
    }
    partial = {
        "bert": PredictionEvent("p", "bert", 5, probs=PROBS["bert"]),
        "distil": PredictionEvent("p", "distil", 6, label=1),
    }
    insufficient = {"roberta": PredictionEvent("i", "roberta", 5, probs=PROBS["roberta"])}
    return [finished("c", complete), finished("p", partial), finished("i", insufficient)]


def _regression_requests() -> list[FinishedRequest]:
    scores = {"bert": 1.5, "roberta": -2.0, "distil": 1e300}
    complete = {m: PredictionEvent("c", m, 5, score=s) for m, s in scores.items()}
    partial = {m: complete[m] for m in ("bert", "distil")}
    return [
        finished("c", complete),
        finished("p", partial),
        finished("i", {"bert": complete["bert"]}),
    ]


def _check(results: list[dict[str, Any]]) -> None:
    assert [r["status"] for r in results] == ["complete", "partial", "insufficient"]
    for result in results:
        VALIDATOR.validate(result)
        _plain(result)
        assert orjson.loads(orjson.dumps(result)) == result


def _plain(value: Any) -> None:
    """Only JSON types, floats finite and of type float exactly (no numpy scalars)."""
    if isinstance(value, dict):
        for v in value.values():
            _plain(v)
    elif isinstance(value, list):
        for v in value:
            _plain(v)
    elif isinstance(value, float):
        assert type(value) is float
        assert math.isfinite(value)
    else:
        assert value is None or type(value) in (str, int, bool)


@pytest.mark.parametrize(
    "strategy",
    [s for s, v in STRATEGIES.items() if "classification" in v.tasks and s != "stacking"],
)
def test_classification_results_validate(strategy: str) -> None:
    """Every non-stacking strategy's complete/partial/insufficient results validate."""
    _check(Fuser(make_config(min_models=2), strategy).fuse(_classification_requests()))


def test_stacking_results_validate(tmp_path: Path) -> None:
    """Stacking results validate: stacked (complete), fallback (partial), insufficient."""
    path = tmp_path / "stacker.json"
    labels = ("negative", "neutral", "positive")
    write_artefact(path, stacking_document(MODELS, labels, np.ones((3, 9)), np.zeros(3), {}))
    config = make_config(min_models=2, strategy="stacking", stacker=str(path))
    results = Fuser(config).fuse(_classification_requests())
    _check(results)
    assert results[1]["fallback"] == "soft_vote"


@pytest.mark.parametrize("strategy", ["weighted_average", "median", "trimmed_mean"])
def test_regression_results_validate(strategy: str) -> None:
    """Score results validate, including scores near the double limit (no overflow)."""
    config = make_config(labels=(), min_models=2, strategy=strategy)
    _check(Fuser(config).fuse(_regression_requests()))


def test_schema_rejects_a_result_without_prediction_fields() -> None:
    """The schema is not vacuous: a complete result with label null is invalid."""
    (result,) = Fuser(make_config(), "soft_vote").fuse(_classification_requests()[:1])
    result["label"] = None
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(result)


def test_schema_examples_validate() -> None:
    """The examples in the schema itself are valid."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for example in SCHEMA["examples"]:
        VALIDATOR.validate(example)
