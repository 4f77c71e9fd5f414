"""Configuration: TOML plus FUSION_SECTION__KEY overrides, errors naming key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.cli import main
from worker.config import build_config, load_config
from worker.errors import ConfigError

BASE = """
[kafka]
input_topics = ["predictions"]

[fusion]
strategy = "soft_vote"
labels = ["negative", "neutral", "positive"]

[[models]]
name = "bert-base"
weight = 0.3

[[models]]
name = "roberta"
weight = 0.7
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fusion.toml"
    path.write_text(text)
    return path


def doc(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "fusion": {"labels": ["a", "b"]},
        "models": [{"name": "m1", "weight": 1.0}, {"name": "m2", "weight": 1.0}],
    }
    base.update(sections)
    return base


def test_loads_the_documented_example(tmp_path: Path) -> None:
    """The README's configuration loads with its values and defaults for the rest."""
    cfg = load_config(write(tmp_path, BASE), env={})
    assert cfg.model_names == ("bert-base", "roberta")
    assert cfg.weights == (0.3, 0.7)
    assert cfg.fusion.labels == ("negative", "neutral", "positive")
    assert cfg.kafka.delivery == "at-least-once"
    assert cfg.join.timeout_ms == 1000


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    """FUSION_SECTION__KEY replaces the file's value, parsed as a TOML value when typed."""
    env = {
        "FUSION_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092",
        "FUSION_JOIN__TIMEOUT_MS": "250",
        "FUSION_KAFKA__INPUT_TOPICS": '["a", "b"]',
    }
    cfg = load_config(write(tmp_path, BASE), env=env)
    assert cfg.kafka.bootstrap_servers == "kafka:9092"
    assert cfg.join.timeout_ms == 250
    assert cfg.kafka.input_topics == ("a", "b")


def test_environment_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    """A misspelt override is an error, not silently ignored."""
    with pytest.raises(ConfigError, match="FUSION_JOIN__TIMEOUT"):
        load_config(write(tmp_path, BASE), env={"FUSION_JOIN__TIMEOUT": "5"})


@pytest.mark.parametrize(
    ("sections", "key", "value"),
    [
        ({"join": {"timeout": 5}}, "join.timeout", 5),
        ({"join": {"timeout_ms": "fast"}}, "join.timeout_ms", "fast"),
        ({"join": {"timeout_ms": 0}}, "join.timeout_ms", 0),
        ({"join": {"min_models": 3}}, "join.min_models", 3),
        ({"kafka": {"delivery": "at-most-once"}}, "kafka.delivery", "at-most-once"),
        ({"kafka": {"input_topics": []}}, "kafka.input_topics", []),
        ({"kafka": {"input_topics": ["fused"]}}, "kafka.input_topics", ["fused"]),
        ({"fusion": {"strategy": "mean", "labels": ["a", "b"]}}, "fusion.strategy", "mean"),
        ({"fusion": {"labels": ["a", "a"]}}, "fusion.labels", ["a", "a"]),
        ({"fusion": {"strategy": "soft_vote"}}, "fusion.strategy", "soft_vote"),
        ({"fusion": {"strategy": "stacking", "labels": ["a", "b"]}}, "fusion.stacker", ""),
        ({"metrics": {"port": 70000}}, "metrics.port", 70000),
        ({"kafka": {"security_protocol": "SASL_SSL"}}, "kafka.sasl_mechanism", ""),
        ({"surprise": {}}, "surprise", {}),
    ],
)
def test_invalid_values_name_the_key_and_value(
    sections: dict[str, Any], key: str, value: Any
) -> None:
    """Each invalid setting raises ConfigError carrying the key and the bad value."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(**sections))
    assert info.value.key == key
    assert info.value.value == value
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("models", "key"),
    [
        ([], "models"),
        ([{"name": "a"}, {"name": "a"}], "models[1].name"),
        ([{"name": "a", "weight": 0.0}, {"name": "b", "weight": 0.0}], "models[*].weight"),
        ([{"name": "a", "weight": -1.0}, {"name": "b"}], "models[0].weight"),
        ([{"name": "a", "weight": "x"}], "models[0].weight"),
        ([{"name": "a", "wieght": 1.0}], "models[0].wieght"),
        ([{"weight": 1.0}], "models[0].name"),
    ],
)
def test_invalid_models_are_refused(models: list[dict[str, Any]], key: str) -> None:
    """Empty, duplicate, all-zero, negative and misspelt model entries are refused by key."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(models=models))
    assert info.value.key == key


def test_sasl_password_is_not_in_the_repr() -> None:
    """The password never reaches a log line through the config's repr."""
    cfg = build_config(
        doc(
            kafka={
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_username": "fusion",
                "sasl_password": "s3cret-pa55",
            }
        )
    )
    assert "s3cret-pa55" not in repr(cfg)


def test_cli_exits_2_with_the_key_on_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fusion-worker check` on a bad config exits with code 2 and names the key and value."""
    path = write(tmp_path, BASE.replace("timeout_ms", "x") + "\n[join]\ntimeout_ms = -5\n")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "join.timeout_ms" in err
    assert "-5" in err


def test_cli_exits_2_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config path that does not exist is a configuration error naming the path."""
    assert main(["check", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err
