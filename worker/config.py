"""Configuration: one TOML file plus ``FUSION_SECTION__KEY`` environment overrides,
validated once at start into frozen msgspec Structs that the rest of the code receives.

Every Struct is frozen and forbids unknown fields, so a misspelt key is an error rather
than silently ignored. Types, enumerations (``Literal``) and bounds (``Meta``) are
declared on the fields and checked by ``msgspec.convert``; what spans several keys is
checked in ``_validate``. Nothing below this module reads the environment. Every error
names the key and the bad value (``ConfigError``), so an operator can fix it from the
message alone; reading the file and the environment, and wording msgspec's errors, is
``worker.config_source``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from worker.config_source import apply_env, conversion_error, read_toml
from worker.errors import ConfigError
from worker.fusion import registry
from worker.fusion.early import EARLY_STRATEGIES
from worker.text_event import TEXT_MAX_CHARS
from worker.vocabulary import Vocabularies, vocabularies

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
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


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kafka: KafkaConfig = KafkaConfig()
    join: JoinConfig = JoinConfig()
    fusion: FusionConfig = FusionConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    models: Annotated[tuple[ModelConfig, ...], Meta(min_length=1)]
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
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
    _validate(cfg)
    kafka = cfg.kafka
    fusion = cfg.fusion
    if not fusion.task:
        fusion = msgspec.structs.replace(fusion, task=registry.task_of(fusion.labels))
    if not kafka.commit_interval_ms:
        commit_interval_ms = DEFAULT_COMMIT_INTERVAL_MS[kafka.delivery]
        kafka = msgspec.structs.replace(kafka, commit_interval_ms=commit_interval_ms)
    _validate_commit_interval(kafka)
    return msgspec.structs.replace(cfg, kafka=kafka, fusion=fusion, source=source)


def _validate(cfg: Config) -> None:
    _validate_kafka(cfg.kafka)
    _validate_models(cfg)
    _validate_fusion(cfg.fusion)
    _validate_vocabularies(cfg)
    _validate_early_decision(cfg)
    _validate_feedback(cfg)
    if cfg.log.level.upper() not in LOG_LEVELS:
        raise ConfigError("log.level", cfg.log.level, f"must be one of {', '.join(LOG_LEVELS)}")


def _validate_kafka(k: KafkaConfig) -> None:
    if not k.bootstrap_servers.strip():
        raise ConfigError("kafka.bootstrap_servers", k.bootstrap_servers, "must not be empty")
    if len(set(k.input_topics)) != len(k.input_topics):
        raise ConfigError("kafka.input_topics", list(k.input_topics), "lists a topic twice")
    outputs = {k.output_topic, k.dlq_topic, k.late_topic} - {""}
    clash = outputs & set(k.input_topics)
    if clash:
        raise ConfigError(
            "kafka.input_topics", list(k.input_topics), f"also used as an output: {sorted(clash)}"
        )
    if k.security_protocol.startswith("SASL"):
        if not k.sasl_mechanism:
            raise ConfigError(
                "kafka.sasl_mechanism",
                k.sasl_mechanism,
                f"must be one of {', '.join(SASL_MECHANISMS)} with {k.security_protocol}",
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


def _validate_commit_interval(k: KafkaConfig) -> None:
    # A transaction left open longer than a tenth of its timeout risks being aborted
    # by the broker under a slow commit.
    if k.exactly_once and k.commit_interval_ms * 10 > k.transaction_timeout_ms:
        raise ConfigError(
            "kafka.commit_interval_ms",
            k.commit_interval_ms,
            f"must be at most a tenth of kafka.transaction_timeout_ms ({k.transaction_timeout_ms})",
        )


def _validate_models(cfg: Config) -> None:
    seen: set[str] = set()
    for i, model in enumerate(cfg.models):
        if model.name in seen:
            raise ConfigError(f"models[{i}].name", model.name, "duplicate model name")
        seen.add(model.name)
        if not math.isfinite(model.weight):
            raise ConfigError(f"models[{i}].weight", model.weight, "must be finite")
    if sum(cfg.weights) <= 0:
        raise ConfigError("models[*].weight", list(cfg.weights), "at least one weight must be > 0")
    if cfg.join.min_models > len(cfg.models):
        raise ConfigError(
            "join.min_models",
            cfg.join.min_models,
            f"must be between 1 and the number of models ({len(cfg.models)})",
        )


def _validate_fusion(f: FusionConfig) -> None:
    if len(set(f.labels)) != len(f.labels):
        raise ConfigError("fusion.labels", list(f.labels), "lists a label twice")
    if len(f.labels) == 1:
        raise ConfigError(
            "fusion.labels", list(f.labels), "needs at least two labels (or none for scores)"
        )
    task = registry.task_of(f.labels, f.task)
    if task == "classification" and not f.labels:
        raise ConfigError("fusion.labels", [], 'required with task = "classification"')
    if task in ("regression", "text") and f.labels:
        raise ConfigError(
            "fusion.labels", list(f.labels), f"must be empty with task = {task!r} (no labels)"
        )
    if f.normalise is not None and len(set(f.normalise)) != len(f.normalise):
        raise ConfigError("fusion.normalise", list(f.normalise), "lists a step twice")
    strategy = registry.lookup(f.strategy, task, key="fusion.strategy")
    if strategy.needs_stacker and not f.stacker:
        raise ConfigError("fusion.stacker", f.stacker, f"required with strategy = {f.strategy!r}")
    fallbacks = registry.names("classification", stacker=False)
    if f.fallback not in fallbacks:
        raise ConfigError(
            "fusion.fallback",
            f.fallback,
            f"must be a strategy that needs no stacker: one of {', '.join(fallbacks)}",
        )
    for key in ("stacker", "weights_file", "calibration_file"):
        value = getattr(f, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"fusion.{key}", value, "file not found")
    if f.calibration_file:
        if f.is_regression:
            raise ConfigError(
                "fusion.calibration_file",
                f.calibration_file,
                "calibrates probabilities: it needs fusion.labels (not scores)",
            )
        if strategy.needs_stacker:
            # The stacker was fitted on the raw probabilities and learns its own scaling
            # of each member; temperatures before it would feed it inputs it never saw.
            raise ConfigError(
                "fusion.calibration_file",
                f.calibration_file,
                f"cannot be combined with strategy = {f.strategy!r}: the stacker is fitted "
                "on raw probabilities; remove calibration_file or choose another strategy",
            )


def _validate_early_decision(cfg: Config) -> None:
    if not cfg.join.early_decision:
        return
    f = cfg.fusion
    if f.is_regression:
        raise ConfigError(
            "join.early_decision", True, "needs fusion.labels: a score has no label to decide"
        )
    if f.strategy not in EARLY_STRATEGIES:
        raise ConfigError(
            "join.early_decision",
            True,
            f"needs fusion.strategy one of {', '.join(EARLY_STRATEGIES)}, got {f.strategy!r}",
        )


def _validate_vocabularies(cfg: Config) -> None:
    """``[[models]] labels`` and ``label_map`` against ``[fusion] labels``."""
    fused = cfg.fusion.labels
    for i, model in enumerate(cfg.models):
        key = f"models[{i}]"
        if not model.labels and not model.label_map:
            continue
        if not fused:
            which = "labels" if model.labels else "label_map"
            raise ConfigError(
                f"{key}.{which}",
                list(model.labels) if model.labels else model.label_map,
                "needs fusion.labels (label vocabularies are for classification)",
            )
        if not model.labels:
            raise ConfigError(
                f"{key}.label_map", model.label_map, f"needs {key}.labels (the model's own codes)"
            )
        codes = list(model.labels)
        if len(codes) < 2:
            raise ConfigError(f"{key}.labels", codes, "needs at least two codes")
        seen: set[str] = set()
        for code in codes:
            if code in seen:
                raise ConfigError(f"{key}.labels", codes, f"lists the code {code!r} twice")
            seen.add(code)
        for code, label in model.label_map.items():
            if code not in seen:
                raise ConfigError(
                    f"{key}.label_map.{code}", label, f"the code {code!r} is not in {key}.labels"
                )
            if label not in fused:
                raise ConfigError(
                    f"{key}.label_map.{code}", label, f"not one of fusion.labels {list(fused)}"
                )
        if not any(model.label_map.get(code, code) in fused for code in codes):
            raise ConfigError(
                f"{key}.labels", codes, "no code maps to one of fusion.labels (add label_map)"
            )
    vocab = cfg.vocabularies
    if not vocab.full_cover and registry.STRATEGIES[cfg.fusion.strategy].needs_stacker:
        partial = [
            f"models[{j}] ({cfg.models[j].name})"
            for j in range(len(cfg.models))
            if not vocab.cover[j].all()
        ]
        raise ConfigError(
            "fusion.strategy",
            cfg.fusion.strategy,
            "needs every model to cover every fused label; not covered by " + ", ".join(partial),
        )


def _validate_feedback(cfg: Config) -> None:
    fb, k = cfg.feedback, cfg.kafka
    if fb.topic:
        used = {*k.input_topics, k.output_topic, k.dlq_topic, k.late_topic} - {""}
        if fb.topic in used:
            raise ConfigError(
                "feedback.topic",
                fb.topic,
                "is also an input or output topic; labels need their own",
            )
    m = len(cfg.models)
    if not math.isfinite(fb.learning_rate):
        raise ConfigError("feedback.learning_rate", fb.learning_rate, "must be finite")
    if fb.weight_floor * m >= 1:
        raise ConfigError(
            "feedback.weight_floor",
            fb.weight_floor,
            f"must be below 1/{m} (the share each of the {m} models would have)",
        )
    if cfg.fusion.weights == "adaptive":
        task = registry.task_of(cfg.fusion.labels)
        strategy = registry.lookup(cfg.fusion.strategy, task, key="fusion.strategy")
        if task == "text" or not strategy.weighted or strategy.needs_stacker:
            raise ConfigError(
                "fusion.weights",
                cfg.fusion.weights,
                f"needs a weighted strategy (not {cfg.fusion.strategy!r})",
            )


def sasl_password(cfg: KafkaConfig) -> str:
    """The SASL password: from the config value (set through the environment) or the file."""
    if cfg.sasl_password:
        return cfg.sasl_password
    if cfg.sasl_password_file:
        return Path(cfg.sasl_password_file).read_text(encoding="utf-8").strip()
    return ""
