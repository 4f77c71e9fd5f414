"""Configuration: one TOML file plus ``FUSION_SECTION__KEY`` environment overrides,
validated once at start into frozen msgspec Structs that the rest of the code receives.

Every Struct is frozen and forbids unknown fields, so a misspelt key is an error rather
than silently ignored. Types, enumerations (``Literal``) and bounds (``Meta``) are
declared on the fields and checked by ``msgspec.convert``; what spans several keys is
checked by ``worker.config_checks``. Nothing below this module reads the environment. Every error
names the key and the bad value (``ConfigError``), so an operator can fix it from the
message alone; reading the file and the environment, and wording msgspec's errors, is
``worker.config_source``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from worker.config_checks import LOG_LEVELS as LOG_LEVELS
from worker.config_checks import SASL_MECHANISMS as SASL_MECHANISMS
from worker.config_checks import validate, validate_commit_interval
from worker.config_source import apply_env, conversion_error, read_toml
from worker.errors import ConfigError
from worker.fusion import registry
from worker.text_event import TEXT_MAX_CHARS
from worker.vocabulary import Vocabularies, vocabularies

# What ``commit_interval_ms = 0`` means for each delivery mode, resolved at load.
DEFAULT_COMMIT_INTERVAL_MS = {"at-least-once": 1000, "exactly-once": 100}

Positive = Annotated[int, Meta(gt=0)]
NonNegative = Annotated[int, Meta(ge=0)]
NonEmpty = Annotated[str, Meta(min_length=1)]


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: NonEmpty = "fusion-worker"
    client_id: str = "fusion-worker"
    input_topics: Annotated[tuple[str, ...], Meta(min_length=1)] = ("predictions",)
    output_topic: NonEmpty = "fused"
    dlq_topic: NonEmpty = "fusion-dlq"
    # Empty: late events are only counted, not forwarded.
    late_topic: str = ""
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Reject (DLQ, reason ``key_mismatch``) records whose Kafka key is not their request_id.
    check_keys: bool = True
    # Values larger than this go to the DLQ with reason ``too_large``.
    max_event_bytes: Positive = 1_048_576
    fetch_max_records: Positive = 10_000
    fetch_timeout_ms: Positive = 100
    # How often offsets are committed (at-least-once) or a transaction is committed
    # (exactly-once). 0 in the file: the mode's default (DEFAULT_COMMIT_INTERVAL_MS),
    # resolved when the config is built, so the loaded value is always the one in force.
    commit_interval_ms: NonNegative = 0
    transaction_timeout_ms: Positive = 60_000
    # At-least-once: at assignment, read the output topic back from the position stored
    # with the committed offsets, so that requests already fused are not published again
    # (worker/runtime/readback.py); at most this many records per partition (0: off) and
    # this long for all of an assignment.
    readback_max_records: NonNegative = 500_000
    readback_timeout_ms: Positive = 5_000
    shutdown_timeout_ms: Positive = 10_000
    request_timeout_ms: Positive = 30_000
    retry_backoff_ms: Positive = 500
    # A topic of ours missing for this long (deleted while the worker runs) stops it.
    unknown_topic_timeout_ms: Positive = 30_000
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    sasl_username: str = ""
    # Secrets: set FUSION_KAFKA__SASL_PASSWORD or point sasl_password_file at a file.
    # Never logged: __repr__ hides it.
    sasl_password: str = ""
    sasl_password_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __repr__(self) -> str:
        shown = (
            f"{name}={'<hidden>' if name == 'sasl_password' else repr(getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"KafkaConfig({', '.join(shown)})"

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"


class JoinConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    timeout_ms: Positive = 1000
    min_models: Positive = 1
    max_pending: Positive = 100_000
    # How long and how many fused request ids are remembered to recognise late events.
    fused_memory_ms: NonNegative = 0  # 0: five timeouts
    fused_memory_count: Positive = 100_000
    # Fuse a request as soon as its missing members cannot change the fused label
    # (status "decided"); weighted_average, soft_vote and hard_vote only.
    early_decision: bool = False

    @property
    def fused_memory_effective_ms(self) -> int:
        return self.fused_memory_ms or 5 * self.timeout_ms


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: NonEmpty
    weight: Annotated[float, Meta(ge=0)] = 1.0
    # The model's own class codes, in the order of its probs; empty: [fusion] labels.
    labels: tuple[NonEmpty, ...] = ()
    # Own code -> fused label, for codes that are not the fused label's own name. A code
    # neither listed nor a fused label maps to no fused label (see worker.vocabulary).
    label_map: dict[str, str] = {}


NormaliseStep = Literal["nfkc", "case", "punctuation", "whitespace"]


class FusionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # A name of worker.fusion.registry.STRATEGIES, valid for the task.
    strategy: str = "soft_vote"
    # Empty in the file: derived from labels (classification with labels, else
    # regression), resolved at load, so the loaded value is always the task in force.
    task: Literal["", "classification", "regression", "text"] = ""
    # Empty: the models predict scores (regression).
    labels: tuple[str, ...] = ()
    # |sum(probs) - 1| above this is an invalid event (reason ``not_normalised``).
    prob_tolerance: Annotated[float, Meta(gt=0, lt=0.5)] = 1e-3
    # Share cut from each end by ``trimmed_mean`` (as scipy.stats.trim_mean).
    trim_proportion: Annotated[float, Meta(ge=0, lt=0.5)] = 0.2
    # ``geometric_mean`` clips probabilities to this floor before taking logs.
    geometric_floor: Annotated[float, Meta(gt=0, lt=1)] = 1e-9
    stacker: str = ""
    fallback: str = "soft_vote"
    weights_file: str = ""
    # Member temperatures (`fit --method calibration`), applied before every strategy.
    calibration_file: str = ""
    # "adaptive": the weights learn from the labels ([feedback]); "static": they stay.
    weights: Literal["static", "adaptive"] = "static"
    # The text task (worker.fusion.text): how consensus compares texts, which
    # normalisation steps apply before comparing (None: the strategy's default), and
    # the longest text accepted (the wire bound of the schema may only be lowered).
    similarity: Literal["chrf", "token_f1", "wer"] = "chrf"
    normalise: tuple[NormaliseStep, ...] | None = None
    max_text_chars: Annotated[int, Meta(ge=1, le=TEXT_MAX_CHARS)] = TEXT_MAX_CHARS
    # Threads that count chrF / token F1 n-grams of a batch (the compiled kernel, which
    # releases the GIL): up to the cores the worker may use; 1, the loop's own thread.
    text_threads: Annotated[int, Meta(ge=1, le=64)] = 1

    @property
    def is_regression(self) -> bool:
        return registry.task_of(self.labels, self.task) == "regression"

    @property
    def is_text(self) -> bool:
        return self.task == "text"


class FeedbackConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The labels topic (schemas/label.v1.json, keyed by request_id, co-partitioned with
    # the inputs). Empty: the live worker reads no labels.
    topic: str = ""
    # How long and how many fused requests' member predictions wait for their label.
    memory_ms: Positive = 600_000
    memory_count: Positive = 100_000
    # The exponentiated-gradient step and the least weight a model keeps (adaptive).
    learning_rate: Annotated[float, Meta(gt=0)] = 0.01
    weight_floor: Annotated[float, Meta(ge=0, lt=1)] = 0.02
    # The live quality gauges cover the last ``window`` labelled requests.
    window: Positive = 1000


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - a container exposes metrics on all interfaces
    port: Annotated[int, Meta(ge=1, le=65535)] = 9400
    # /healthz fails when the loop has not iterated for this long.
    liveness_timeout_ms: Positive = 30_000
    # A model's windowed live accuracy below this fires FusionModelAccuracyLow (exported
    # as fusion_quality_accuracy_floor; 0: never).
    accuracy_floor: Annotated[float, Meta(ge=0, le=1)] = 0.0


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Any case: "info" is INFO, as logging itself takes it after upper().
    level: str = "INFO"
    format: Literal["text", "json"] = "text"


class RuntimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The streaming worker's event loop (worker/runtime/event_loop.py): "auto" is uvloop
    # where it is installed, else asyncio's own; "uvloop" refuses to start without it.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kafka: KafkaConfig = KafkaConfig()
    join: JoinConfig = JoinConfig()
    fusion: FusionConfig = FusionConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    models: Annotated[tuple[ModelConfig, ...], Meta(min_length=1)]
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    # Where the config came from; set by load_config, not a key of the file.
    source: str = "<defaults>"

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(m.weight for m in self.models)

    @property
    def vocabularies(self) -> Vocabularies:
        """Each model's label vocabulary over ``[fusion] labels`` (worker.vocabulary)."""
        return vocabularies(self.fusion.labels, [(m.labels, m.label_map) for m in self.models])


SECTIONS = tuple(name for name in Config.__struct_fields__ if name != "source")


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML), apply ``FUSION_SECTION__KEY`` overrides from ``env``
    (default: ``os.environ``) and validate. Raises ConfigError naming the key."""
    raw: dict[str, Any] = {} if path is None else read_toml(Path(path))
    apply_env(raw, env, Config, SECTIONS)
    return build_config(raw, source="<defaults>" if path is None else str(path))


def build_config(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed TOML document into a Config."""
    if "source" in raw:
        raise ConfigError(
            "source", raw["source"], f"unknown section; expected one of {', '.join(SECTIONS)}"
        )
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise conversion_error(exc, raw, Config, SECTIONS) from None
    validate(cfg)
    kafka = cfg.kafka
    fusion = cfg.fusion
    if not fusion.task:
        fusion = msgspec.structs.replace(fusion, task=registry.task_of(fusion.labels))
    if not kafka.commit_interval_ms:
        commit_interval_ms = DEFAULT_COMMIT_INTERVAL_MS[kafka.delivery]
        kafka = msgspec.structs.replace(kafka, commit_interval_ms=commit_interval_ms)
    validate_commit_interval(kafka)
    return msgspec.structs.replace(cfg, kafka=kafka, fusion=fusion, source=source)


def sasl_password(cfg: KafkaConfig) -> str:
    """The SASL password: from the config value (set through the environment) or the file."""
    if cfg.sasl_password:
        return cfg.sasl_password
    if cfg.sasl_password_file:
        return Path(cfg.sasl_password_file).read_text(encoding="utf-8").strip()
    return ""
