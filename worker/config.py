"""Configuration: one TOML file plus ``FUSION_SECTION__KEY`` environment overrides,
validated once at start into frozen dataclasses that the rest of the code receives.

Nothing below this module reads the environment. Every error names the key and the
bad value (``ConfigError``), so an operator can fix it from the message alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from worker.errors import ConfigError

STRATEGIES = (
    "weighted_average",
    "soft_vote",
    "hard_vote",
    "geometric_mean",
    "median",
    "trimmed_mean",
    "stacking",
)
DELIVERIES = ("at-least-once", "exactly-once")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV_PREFIX = "FUSION_"


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "fusion-worker"
    client_id: str = "fusion-worker"
    input_topics: tuple[str, ...] = ("predictions",)
    output_topic: str = "fused"
    dlq_topic: str = "fusion-dlq"
    # Empty: late events are only counted, not forwarded.
    late_topic: str = ""
    delivery: str = "at-least-once"
    auto_offset_reset: str = "earliest"
    # Values larger than this go to the DLQ with reason ``too_large``.
    max_event_bytes: int = 1_048_576
    fetch_max_records: int = 10_000
    fetch_timeout_ms: int = 100
    # How often offsets are committed (at-least-once) or a transaction is committed
    # (exactly-once). 0 in the file: the mode's default, resolved at load (1000 ms
    # at-least-once, 100 ms exactly-once), so this always holds the effective value.
    commit_interval_ms: int = 0
    transaction_timeout_ms: int = 60_000
    shutdown_timeout_ms: int = 10_000
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = 500
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    # Secrets: set FUSION_KAFKA__SASL_PASSWORD or point sasl_password_file at a file.
    # Never logged (repr=False).
    sasl_password: str = field(default="", repr=False)
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    # A record whose Kafka key is not its request_id goes to the DLQ (``key_mismatch``);
    # false only for single-partition topics, where a wrong key cannot misplace it.
    check_keys: bool = True

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"


@dataclass(frozen=True, slots=True)
class JoinConfig:
    timeout_ms: int = 1000
    min_models: int = 1
    max_pending: int = 100_000
    # How long and how many fused request ids are remembered to recognise late events.
    fused_memory_ms: int = 0  # 0: five timeouts
    fused_memory_count: int = 100_000

    @property
    def fused_memory_effective_ms(self) -> int:
        return self.fused_memory_ms or 5 * self.timeout_ms


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class FusionConfig:
    strategy: str = "soft_vote"
    # Empty: the models predict scores (regression).
    labels: tuple[str, ...] = ()
    # |sum(probs) - 1| above this is an invalid event (reason ``not_normalised``).
    prob_tolerance: float = 1e-3
    # Share cut from each end by ``trimmed_mean`` (as scipy.stats.trim_mean).
    trim_proportion: float = 0.2
    # ``geometric_mean`` clips probabilities to this floor before taking logs.
    geometric_floor: float = 1e-9
    stacker: str = ""
    fallback: str = "soft_vote"
    weights_file: str = ""

    @property
    def is_regression(self) -> bool:
        return not self.labels


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - a container exposes metrics on all interfaces
    port: int = 9400
    # /healthz fails when the loop has not iterated for this long.
    liveness_timeout_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"  # or "json"


@dataclass(frozen=True, slots=True)
class Config:
    kafka: KafkaConfig
    join: JoinConfig
    fusion: FusionConfig
    models: tuple[ModelConfig, ...]
    metrics: MetricsConfig
    log: LogConfig
    source: str = "<defaults>"

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(m.weight for m in self.models)


_SECTIONS: dict[str, type[Any]] = {
    "kafka": KafkaConfig,
    "join": JoinConfig,
    "fusion": FusionConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML), apply ``FUSION_SECTION__KEY`` overrides from ``env``
    (default: ``os.environ``) and validate. Raises ConfigError naming the key."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", str(p), "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", str(p), f"not valid TOML: {exc}") from None
        source = str(p)
    _apply_env(raw, os.environ if env is None else env)
    return build_config(raw, source=source)


def build_config(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed TOML document into a Config."""
    for key in raw:
        if key not in _SECTIONS and key != "models":
            raise ConfigError(key, raw[key], f"unknown section; expected one of {_known()}")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    models = _models(raw.get("models"))
    cfg = Config(models=models, source=source, **sections)
    _validate(cfg)
    return _resolved(cfg)


def _resolved(cfg: Config) -> Config:
    """Defaults that depend on other keys, filled in once so readers see one value."""
    k = cfg.kafka
    if k.commit_interval_ms:
        return cfg
    interval = 100 if k.exactly_once else 1000
    return dataclasses.replace(cfg, kafka=dataclasses.replace(k, commit_interval_ms=interval))


def _known() -> str:
    return ", ".join([*_SECTIONS, "models"])


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(
                name, value, f"unknown section {section!r}; expected one of {_known()}"
            )
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, table, "must be a table")
        table[key] = _env_value(name, value, _SECTIONS[section], key)


def _env_value(name: str, value: str, cls: type[Any], key: str) -> Any:
    kinds = {f.name: f.type for f in fields(cls)}
    kind = kinds.get(key)
    if kind is None:
        raise ConfigError(name, value, f"unknown key {key!r}")
    if kind == "str":
        return value
    # Lists, numbers and booleans are written as TOML values: "[\"a\", \"b\"]", 100, true.
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(name, value, f"not a TOML value of type {kind}") from None


def _section(name: str, cls: type[Any], table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(name, table, "must be a table")
    kinds = {f.name: f.type for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{name}.{key}"
        if key not in kinds:
            raise ConfigError(full, value, f"unknown key; expected one of {', '.join(kinds)}")
        values[key] = _coerce(full, value, str(kinds[key]))
    return cls(**values)


def _coerce(key: str, value: Any, kind: str) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "must be an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, value, "must be a number")
        if not math.isfinite(value):
            raise ConfigError(key, value, "must be finite")
        return float(value)
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, value, "must be a list of strings")
        return tuple(value)
    raise AssertionError(f"no coercion for {kind}")  # pragma: no cover - a new field type


def _models(value: Any) -> tuple[ModelConfig, ...]:
    if value is None or value == []:
        raise ConfigError("models", value, "at least one [[models]] entry is required")
    if not isinstance(value, list):
        raise ConfigError("models", value, "must be an array of tables ([[models]])")
    out: list[ModelConfig] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        key = f"models[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(key, entry, "must be a table with name and weight")
        extra = set(entry) - {"name", "weight"}
        if extra:
            raise ConfigError(f"{key}.{sorted(extra)[0]}", entry[sorted(extra)[0]], "unknown key")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}.name", name, "must be a non-empty string")
        if name in seen:
            raise ConfigError(f"{key}.name", name, "duplicate model name")
        seen.add(name)
        weight = _coerce(f"{key}.weight", entry.get("weight", 1.0), "float")
        if weight < 0:
            raise ConfigError(f"{key}.weight", weight, "must be >= 0")
        out.append(ModelConfig(name=name, weight=weight))
    if sum(m.weight for m in out) <= 0:
        raise ConfigError(
            "models[*].weight", [m.weight for m in out], "at least one weight must be > 0"
        )
    return tuple(out)


def _positive(key: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(key, value, "must be > 0")


def _validate(cfg: Config) -> None:
    k, j, f, m = cfg.kafka, cfg.join, cfg.fusion, cfg.metrics
    if not k.bootstrap_servers.strip():
        raise ConfigError("kafka.bootstrap_servers", k.bootstrap_servers, "must not be empty")
    if not k.input_topics:
        raise ConfigError(
            "kafka.input_topics", list(k.input_topics), "at least one topic is required"
        )
    if len(set(k.input_topics)) != len(k.input_topics):
        raise ConfigError("kafka.input_topics", list(k.input_topics), "lists a topic twice")
    for key in ("output_topic", "dlq_topic", "group_id"):
        if not getattr(k, key):
            raise ConfigError(f"kafka.{key}", getattr(k, key), "must not be empty")
    outputs = {k.output_topic, k.dlq_topic, k.late_topic} - {""}
    clash = outputs & set(k.input_topics)
    if clash:
        raise ConfigError(
            "kafka.input_topics", list(k.input_topics), f"also used as an output: {sorted(clash)}"
        )
    if k.delivery not in DELIVERIES:
        raise ConfigError("kafka.delivery", k.delivery, f"must be one of {', '.join(DELIVERIES)}")
    if k.auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError(
            "kafka.auto_offset_reset", k.auto_offset_reset, "must be earliest or latest"
        )
    for key in (
        "max_event_bytes",
        "fetch_max_records",
        "fetch_timeout_ms",
        "transaction_timeout_ms",
        "shutdown_timeout_ms",
        "request_timeout_ms",
        "retry_backoff_ms",
    ):
        _positive(f"kafka.{key}", getattr(k, key))
    if k.commit_interval_ms < 0:
        raise ConfigError(
            "kafka.commit_interval_ms", k.commit_interval_ms, "must be >= 0 (0: default)"
        )
    interval_ms = k.commit_interval_ms or (100 if k.exactly_once else 1000)
    if k.exactly_once and interval_ms * 10 > k.transaction_timeout_ms:
        raise ConfigError(
            "kafka.commit_interval_ms",
            k.commit_interval_ms,
            f"must be at most a tenth of kafka.transaction_timeout_ms ({k.transaction_timeout_ms})",
        )
    if k.security_protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            "kafka.security_protocol",
            k.security_protocol,
            f"must be one of {', '.join(SECURITY_PROTOCOLS)}",
        )
    if k.security_protocol.startswith("SASL"):
        if k.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                "kafka.sasl_mechanism",
                k.sasl_mechanism,
                f"must be one of {', '.join(SASL_MECHANISMS)}",
            )
        if not k.sasl_username:
            raise ConfigError(
                "kafka.sasl_username", k.sasl_username, f"required with {k.security_protocol}"
            )
        if not k.sasl_password and not k.sasl_password_file:
            raise ConfigError(
                "kafka.sasl_password",
                "<unset>",
                "set FUSION_KAFKA__SASL_PASSWORD or kafka.sasl_password_file",
            )
        if k.sasl_password_file and not Path(k.sasl_password_file).is_file():
            raise ConfigError("kafka.sasl_password_file", k.sasl_password_file, "file not found")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(k, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"kafka.{key}", value, "file not found")

    _positive("join.timeout_ms", j.timeout_ms)
    _positive("join.max_pending", j.max_pending)
    _positive("join.fused_memory_count", j.fused_memory_count)
    if j.fused_memory_ms < 0:
        raise ConfigError(
            "join.fused_memory_ms", j.fused_memory_ms, "must be >= 0 (0: five timeouts)"
        )
    if not 1 <= j.min_models <= len(cfg.models):
        raise ConfigError(
            "join.min_models",
            j.min_models,
            f"must be between 1 and the number of models ({len(cfg.models)})",
        )

    if f.strategy not in STRATEGIES:
        raise ConfigError("fusion.strategy", f.strategy, f"must be one of {', '.join(STRATEGIES)}")
    if len(set(f.labels)) != len(f.labels):
        raise ConfigError("fusion.labels", list(f.labels), "lists a label twice")
    if len(f.labels) == 1:
        raise ConfigError(
            "fusion.labels", list(f.labels), "needs at least two labels (or none for scores)"
        )
    if f.is_regression and f.strategy in ("soft_vote", "hard_vote", "geometric_mean", "stacking"):
        raise ConfigError(
            "fusion.strategy", f.strategy, "needs fusion.labels (a classification task)"
        )
    if not 0 < f.prob_tolerance < 0.5:
        raise ConfigError("fusion.prob_tolerance", f.prob_tolerance, "must be in (0, 0.5)")
    if not 0 <= f.trim_proportion < 0.5:
        raise ConfigError("fusion.trim_proportion", f.trim_proportion, "must be in [0, 0.5)")
    if not 0 < f.geometric_floor < 1:
        raise ConfigError("fusion.geometric_floor", f.geometric_floor, "must be in (0, 1)")
    if f.strategy == "stacking" and not f.stacker:
        raise ConfigError("fusion.stacker", f.stacker, "required with strategy = 'stacking'")
    if f.fallback not in STRATEGIES or f.fallback == "stacking":
        raise ConfigError("fusion.fallback", f.fallback, "must be a strategy other than stacking")
    for key in ("stacker", "weights_file"):
        value = getattr(f, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"fusion.{key}", value, "file not found")

    if not 0 < m.port < 65536:
        raise ConfigError("metrics.port", m.port, "must be a TCP port (1-65535)")
    _positive("metrics.liveness_timeout_ms", m.liveness_timeout_ms)
    if cfg.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log.level", cfg.log.level, "must be DEBUG, INFO, WARNING or ERROR")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError("log.format", cfg.log.format, "must be text or json")


def sasl_password(cfg: KafkaConfig) -> str:
    """The SASL password: from the config value (set through the environment) or the file."""
    if cfg.sasl_password:
        return cfg.sasl_password
    if cfg.sasl_password_file:
        return Path(cfg.sasl_password_file).read_text(encoding="utf-8").strip()
    return ""
