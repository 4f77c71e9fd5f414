"""The exception tree: one root, small named subclasses, each telling an operator what to do."""

from __future__ import annotations


class FusionError(Exception):
    """Root of every error fusion-worker raises on purpose."""


class ConfigError(FusionError):
    """The configuration is invalid: fix the named key and start again.

    The worker exits with code 2 on this error before it touches Kafka.
    """

    def __init__(self, key: str, value: object, problem: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        super().__init__(f"config key {key!r} = {value!r}: {problem}")


class InvalidEvent(FusionError):
    """An input event breaks the contract; the runtime sends it to the dead-letter topic.

    ``reason`` is a stable code (``json``, ``schema``, ``unknown_model``,
    ``unknown_label``, ``label_mismatch``, ``non_finite``, ``negative``,
    ``not_normalised``, ``too_large``, ...) used as the DLQ header ``error`` and as
    a metric label; ``detail`` is for humans.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ArtefactError(FusionError):
    """A fitted artefact (stacker, learned weights) does not match the configuration:
    refit it or fix ``[fusion] stacker`` / ``weights_file``."""


class KafkaSetupError(FusionError):
    """The broker or topics are not as the configuration requires (missing topic,
    partition counts that differ, authentication failed): fix the cluster or the config."""
