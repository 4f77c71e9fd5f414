"""The exception tree: one root, small named subclasses, each telling an operator what to do."""

from __future__ import annotations

import difflib
import re

HIDDEN = "<hidden>"
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credentials")
_SECRET_PARTS = ("pass", "pwd", "secret", "token")


def looks_secret(key: str) -> bool:
    """Whether a configuration key (``kafka.sasl_password``, an environment variable
    name) may hold a secret, misspellings included: ``sasl_pasword`` does.

    A key ending in ``_file`` names a file holding the secret, not the secret.
    """
    lowered = key.lower()
    if lowered.endswith("_file"):
        return False
    for word in re.split(r"[^a-z0-9]+", lowered):
        if any(part in word for part in _SECRET_PARTS):
            return True
        if word and difflib.get_close_matches(word, _SECRET_WORDS, n=1, cutoff=0.75):
            return True
    return False


def redact(key: str, value: object) -> object:
    """``value`` with every secret-looking part hidden: all of it under a secret key,
    the secret keys' values inside tables and arrays."""
    if looks_secret(key):
        return HIDDEN
    if isinstance(value, dict):
        return {k: redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact("", v) for v in value]
    return value


class FusionError(Exception):
    """Root of every error fusion-worker raises on purpose."""


class ConfigError(FusionError):
    """The configuration is invalid: fix the named key and start again.

    The worker exits with code 2 on this error before it touches Kafka. A value under a
    key that looks like a secret is never kept or shown (``looks_secret``).
    """

    def __init__(self, key: str, value: object, problem: str) -> None:
        shown = redact(key, value)
        if shown is HIDDEN and isinstance(value, str) and value:
            # Some messages quote the value itself ("Invalid enum value 'x'").
            problem = problem.replace(value, HIDDEN)
        self.key = key
        self.value = shown
        self.problem = problem
        super().__init__(f"config key {key!r} = {shown!r}: {problem}")


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
