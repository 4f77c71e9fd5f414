"""Configuration: TOML plus FUSION_SECTION__KEY overrides, errors naming key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.cli import main
from worker.config import (
    FusionConfig,
    JoinConfig,
    KafkaConfig,
    LogConfig,
    MetricsConfig,
    ModelConfig,
    build_config,
    load_config,
)
from worker.errors import ConfigError, looks_secret

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


def test_environment_overrides_a_field_of_an_array_of_tables(tmp_path: Path) -> None:
    """FUSION_MODELS__<i>__<KEY> reaches entry i of [[models]], typed as the field."""
    env = {"FUSION_MODELS__0__WEIGHT": "0.5", "FUSION_MODELS__1__NAME": "deberta"}
    cfg = load_config(write(tmp_path, BASE), env=env)
    assert cfg.model_names == ("bert-base", "deberta")
    assert cfg.weights == (0.5, 0.7)


def test_environment_adds_entries_at_the_next_free_index(tmp_path: Path) -> None:
    """Indexes 2 then 3 add two models, in numeric order even past 9."""
    env = {
        "FUSION_MODELS__3__NAME": "d",
        "FUSION_MODELS__2__NAME": "c",
        "FUSION_MODELS__2__WEIGHT": "0.25",
    }
    cfg = load_config(write(tmp_path, BASE), env=env)
    assert cfg.model_names == ("bert-base", "roberta", "c", "d")
    assert cfg.weights == (0.3, 0.7, 0.25, 1.0)


def test_environment_index_that_skips_entries_is_refused(tmp_path: Path) -> None:
    """An index beyond the next free one would leave a hole: refused, naming the variable."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), env={"FUSION_MODELS__5__NAME": "x"})
    assert info.value.key == "FUSION_MODELS__5__NAME"
    assert "index 5" in info.value.problem


def test_environment_value_that_does_not_parse_names_the_variable(tmp_path: Path) -> None:
    """A typed key whose value is not a TOML value of that type names the variable."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), env={"FUSION_JOIN__TIMEOUT_MS": "fast"})
    assert (info.value.key, info.value.value) == ("FUSION_JOIN__TIMEOUT_MS", "fast")
    assert "integer" in info.value.problem


def test_environment_value_of_the_wrong_type_names_the_key(tmp_path: Path) -> None:
    """A TOML value of the wrong type is refused by the key it lands on."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), env={"FUSION_MODELS__1__WEIGHT": "-2"})
    assert (info.value.key, info.value.value) == ("models[1].weight", -2)


@pytest.mark.parametrize(
    ("section", "key", "value", "choices"),
    [
        ("kafka", "delivery", "at-most-once", ["at-least-once", "exactly-once"]),
        ("kafka", "auto_offset_reset", "newest", ["earliest", "latest"]),
        ("kafka", "security_protocol", "TLS", ["PLAINTEXT", "SASL_SSL"]),
        ("log", "format", "xml", ["text", "json"]),
        ("runtime", "event_loop", "libuv", ["auto", "uvloop", "asyncio"]),
    ],
)
def test_enumeration_errors_name_key_value_and_choices(
    section: str, key: str, value: str, choices: list[str]
) -> None:
    """A value outside a Literal enumeration names the key, the value and the choices."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(**{section: {key: value}}))
    assert (info.value.key, info.value.value) == (f"{section}.{key}", value)
    assert all(choice in info.value.problem for choice in choices)
    assert f"{section}.{key}" in str(info.value)
    assert value in str(info.value)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"join": {"timeout_ms": True}}, "join.timeout_ms"),
        ({"join": {"timeout_ms": 1.5}}, "join.timeout_ms"),
        ({"kafka": {"input_topics": ["a", 1]}}, "kafka.input_topics[1]"),
        ({"fusion": {"labels": ["a", "b"], "prob_tolerance": 0.5}}, "fusion.prob_tolerance"),
        ({"fusion": {"labels": ["a", "b"], "geometric_floor": 0.0}}, "fusion.geometric_floor"),
        ({"kafka": {"commit_interval_ms": -1}}, "kafka.commit_interval_ms"),
        ({"join": 5}, "join"),
    ],
)
def test_types_and_bounds_are_checked(sections: dict[str, Any], key: str) -> None:
    """A boolean or float where an integer belongs, an array entry of the wrong type and
    an out-of-bounds number are refused by their key."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(**sections))
    assert info.value.key == key


def test_an_infinite_weight_is_refused() -> None:
    """A weight must be finite: inf would make every other member weigh nothing."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(models=[{"name": "a", "weight": float("inf")}]))
    assert info.value.key == "models[0].weight"


def test_an_unknown_key_suggests_the_close_one() -> None:
    """A misspelt key is refused with the key it probably meant."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(join={"timeout_msec": 5}))
    assert info.value.key == "join.timeout_msec"
    assert "'timeout_ms'" in info.value.problem


@pytest.mark.parametrize(
    ("delivery", "configured", "effective"),
    [
        ("at-least-once", 0, 1000),
        ("exactly-once", 0, 100),
        ("at-least-once", 250, 250),
        ("exactly-once", 50, 50),
    ],
)
def test_commit_interval_is_resolved_at_load(
    delivery: str, configured: int, effective: int
) -> None:
    """commit_interval_ms = 0 becomes the delivery mode's default when the config is
    built; the loaded value is the one in force."""
    cfg = build_config(doc(kafka={"delivery": delivery, "commit_interval_ms": configured}))
    assert cfg.kafka.commit_interval_ms == effective


def test_the_exactly_once_default_interval_is_checked_against_the_timeout() -> None:
    """The resolved interval (100 ms) must fit ten times in the transaction timeout."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(kafka={"delivery": "exactly-once", "transaction_timeout_ms": 999}))
    assert (info.value.key, info.value.value) == ("kafka.commit_interval_ms", 100)


def test_check_keys_defaults_to_true_and_can_be_turned_off(tmp_path: Path) -> None:
    """[kafka] check_keys is on unless set false (here through the environment)."""
    assert load_config(write(tmp_path, BASE), env={}).kafka.check_keys is True
    cfg = load_config(write(tmp_path, BASE), env={"FUSION_KAFKA__CHECK_KEYS": "false"})
    assert cfg.kafka.check_keys is False


def test_the_config_is_frozen(tmp_path: Path) -> None:
    """The config is built once and cannot be changed afterwards."""
    cfg = load_config(write(tmp_path, BASE), env={})
    with pytest.raises(AttributeError):
        cfg.join.timeout_ms = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        '[kafka]\nsasl_pasword = "hunter2"\n',
        '[kafka]\nsasl_password = ["hunter2"]\n',
        '[kafka]\nsasl_secret = "hunter2"\n',
        '[kafka.sasl]\npassword = "hunter2"\n',
        '[surprise]\napi_token = "hunter2"\n',
        '[kafka]\nsasl_password = "hunter2"\nsecurity_protocol = "SASL_SSL"\n',
    ],
)
def test_a_secret_is_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """A value under a key that looks like a secret, misspelt or nested or of the wrong
    type, never reaches the error message; the key is still named."""
    path = write(tmp_path, BASE.replace("[kafka]\n", text, 1))
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "hunter2" not in err


def test_a_secret_from_the_environment_is_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt secret variable is refused by its name, without its value."""
    monkeypatch.setenv("FUSION_KAFKA__SASL_PASWORD", "hunter2")
    assert main(["check", "--config", str(write(tmp_path, BASE))]) == 2
    err = capsys.readouterr().err
    assert "FUSION_KAFKA__SASL_PASWORD" in err
    assert "hunter2" not in err


def test_no_documented_key_but_the_password_looks_secret() -> None:
    """The secret check hides only what may be a secret: every key of the config but
    sasl_password is shown as given (a password file names a path, not a secret)."""
    sections = {
        "kafka": KafkaConfig,
        "join": JoinConfig,
        "fusion": FusionConfig,
        "models": ModelConfig,
        "metrics": MetricsConfig,
        "log": LogConfig,
    }
    flagged = [
        f"{name}.{key}"
        for name, cls in sections.items()
        for key in cls.__struct_fields__
        if looks_secret(f"{name}.{key}")
    ]
    assert flagged == ["kafka.sasl_password"]
    assert looks_secret("FUSION_KAFKA__SASL_PASSWORD")
    assert looks_secret("kafka.sasl_pasword")


def test_cli_exits_2_on_an_enumeration_error_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override outside an enumeration stops the CLI with code 2, naming key and value."""
    monkeypatch.setenv("FUSION_KAFKA__DELIVERY", "at-most-once")
    assert main(["check", "--config", str(write(tmp_path, BASE))]) == 2
    err = capsys.readouterr().err
    assert "kafka.delivery" in err
    assert "at-most-once" in err
    assert "exactly-once" in err


def test_an_empty_required_array_says_how_many_entries_it_needs() -> None:
    """An empty [[models]] or input_topics names the key and the least count."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(models=[]))
    assert (info.value.key, info.value.value) == ("models", [])
    assert info.value.problem == "needs at least 1 entry"


# -- the text task -----------------------------------------------------------------------

TEXT = {"task": "text", "strategy": "consensus"}


@pytest.mark.parametrize(
    ("labels", "strategy", "task"),
    [(["a", "b"], "soft_vote", "classification"), ([], "median", "regression")],
)
def test_the_task_is_derived_from_labels_when_not_given(
    labels: list[str], strategy: str, task: str
) -> None:
    """Without [fusion] task, labels make a classification and none a regression; the
    loaded config holds the task in force."""
    cfg = build_config(doc(fusion={"labels": labels, "strategy": strategy}))
    assert cfg.fusion.task == task


def test_the_text_task_keys_are_loaded(tmp_path: Path) -> None:
    """task, similarity, normalise and max_text_chars load from TOML (the demo's keys)."""
    path = tmp_path / "text.toml"
    path.write_text(
        '[fusion]\ntask = "text"\nstrategy = "consensus"\nsimilarity = "wer"\n'
        'normalise = ["nfkc", "whitespace"]\nmax_text_chars = 2000\n[[models]]\nname = "mt"\n'
    )
    f = load_config(path, env={}).fusion
    assert (f.task, f.similarity, f.normalise, f.max_text_chars) == (
        "text",
        "wer",
        ("nfkc", "whitespace"),
        2000,
    )
    assert f.is_text
    assert not f.is_regression


@pytest.mark.parametrize(
    ("fusion", "key", "value"),
    [
        ({**TEXT, "labels": ["a", "b"]}, "fusion.labels", ["a", "b"]),
        ({"task": "classification", "strategy": "soft_vote"}, "fusion.labels", []),
        ({"task": "text", "strategy": "soft_vote"}, "fusion.strategy", "soft_vote"),
        ({"labels": ["a", "b"], "strategy": "consensus"}, "fusion.strategy", "consensus"),
        ({**TEXT, "max_text_chars": 65_537}, "fusion.max_text_chars", 65_537),
        ({**TEXT, "max_text_chars": 0}, "fusion.max_text_chars", 0),
        ({**TEXT, "normalise": ["nfkc", "nfkc"]}, "fusion.normalise", ["nfkc", "nfkc"]),
        ({**TEXT, "task": "translation"}, "fusion.task", "translation"),
        ({**TEXT, "similarity": "bleu"}, "fusion.similarity", "bleu"),
        ({**TEXT, "text_threads": 0}, "fusion.text_threads", 0),
        ({**TEXT, "text_threads": 65}, "fusion.text_threads", 65),
    ],
)
def test_bad_text_settings_name_the_key_and_value(
    fusion: dict[str, Any], key: str, value: Any
) -> None:
    """Labels with the text task, a text strategy elsewhere (and the reverse), a
    max_text_chars beyond the wire bound, a repeated or unknown step, a thread count
    outside 1..64: refused by key."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(fusion=fusion))
    assert info.value.key == key
    assert info.value.value == value


def test_an_unknown_normalisation_step_names_the_choices() -> None:
    """fusion.normalise takes only the four steps, and says which."""
    with pytest.raises(ConfigError) as info:
        build_config(doc(fusion={**TEXT, "normalise": ["nfkc", "stem"]}))
    assert info.value.key.startswith("fusion.normalise")
    assert "punctuation" in info.value.problem
