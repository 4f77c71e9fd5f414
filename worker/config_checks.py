"""The checks of a configuration that span several keys (topics that must differ, a
strategy valid for the task, label vocabularies against the fused labels, ...): what
field types and bounds cannot say. ``worker.config`` runs them once, at load; each error
names the key and the bad value (``ConfigError``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import ConfigError
from worker.fusion import registry
from worker.fusion.early import EARLY_STRATEGIES
from worker.runtime.event_loop import uvloop_installed

if TYPE_CHECKING:
    # Only types: worker.config imports this module to run the checks.
    from worker.config import Config, FusionConfig, KafkaConfig

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def validate(cfg: Config) -> None:
    """Check what spans several keys of ``cfg``, as msgspec built it (before the
    defaults that depend on other keys are resolved). Raises ConfigError."""
    _validate_kafka(cfg.kafka)
    _validate_models(cfg)
    _validate_fusion(cfg.fusion)
    _validate_vocabularies(cfg)
    _validate_early_decision(cfg)
    _validate_feedback(cfg)
    if cfg.runtime.event_loop == "uvloop" and not uvloop_installed():
        raise ConfigError(
            "runtime.event_loop", "uvloop", 'uvloop is not installed; use "auto" or "asyncio"'
        )
    if cfg.log.level.upper() not in LOG_LEVELS:
        raise ConfigError("log.level", cfg.log.level, f"must be one of {', '.join(LOG_LEVELS)}")


def _validate_kafka(k: KafkaConfig) -> None:
    if not k.bootstrap_servers.strip():
        raise ConfigError("kafka.bootstrap_servers", k.bootstrap_servers, "must not be empty")
    _once_each("kafka.input_topics", k.input_topics, "topic")
    clash = _outputs(k) & set(k.input_topics)
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
        _files_exist("kafka", k, ("sasl_password_file",))
    _files_exist("kafka", k, ("ssl_cafile", "ssl_certfile", "ssl_keyfile"))


def validate_commit_interval(k: KafkaConfig) -> None:
    """Check ``kafka.commit_interval_ms`` once its mode's default is resolved."""
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
    _once_each("fusion.labels", f.labels, "label")
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
    if f.normalise is not None:
        _once_each("fusion.normalise", f.normalise, "step")
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
    _files_exist("fusion", f, ("stacker", "weights_file", "calibration_file"))
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
        used = {*k.input_topics, *_outputs(k)}
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
        task = registry.task_of(cfg.fusion.labels, cfg.fusion.task)
        strategy = registry.lookup(cfg.fusion.strategy, task, key="fusion.strategy")
        if task == "text" or not strategy.weighted or strategy.needs_stacker:
            raise ConfigError(
                "fusion.weights",
                cfg.fusion.weights,
                f"needs a weighted strategy (not {cfg.fusion.strategy!r})",
            )


def _once_each(key: str, values: Sequence[str], what: str) -> None:
    if len(set(values)) != len(values):
        raise ConfigError(key, list(values), f"lists a {what} twice")


def _files_exist(section: str, struct: object, keys: Sequence[str]) -> None:
    """Each of ``keys`` of ``struct`` that is set names an existing file."""
    for key in keys:
        value = getattr(struct, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{section}.{key}", value, "file not found")


def _outputs(k: KafkaConfig) -> set[str]:
    """The topics the worker writes to (the late topic only when set)."""
    return {k.output_topic, k.dlq_topic, k.late_topic} - {""}
