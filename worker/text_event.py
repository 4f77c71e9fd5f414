"""The checks of a prediction event's ``text`` and ``confidence`` (the text task), for the
decoder to call; plain arguments, no configuration object.

Reasons (``InvalidEvent.reason``, the DLQ header ``error``), in the order checked (wire
checks first, as the decoder does):

- ``text_type``      ``text`` is not a JSON string (a wire reason: the schema sees it).
- ``schema``         ``text`` longer than ``TEXT_MAX_CHARS`` (65,536), the wire bound of
                     the schema and of the client kit (``worker.client``).
- ``schema``         ``confidence`` is not a number in [0, 1] (a bool is not a number),
                     or is sent without ``text`` -- the decoder's usual wire reason.
- ``text_too_long``  more than ``max_text_chars`` characters (code points), as sent
                     (configuration: the schema cannot know the limit).
- ``text_empty``     nothing left once normalised as configured, or only whitespace
                     (configuration: "..." is empty only when punctuation is removed).

The length is checked before normalising, so a long text costs no normalisation, and
on the text as sent, so that the limit is the one a producer can see.
"""

from __future__ import annotations

import math

from worker.errors import InvalidEvent
from worker.fusion.textnorm import TextNormalisation, normalise

TEXT_REASONS = ("text_type", "text_too_long", "text_empty")
# The text reasons that depend on the configuration (the schema cannot see them).
TEXT_CONFIG_REASONS = frozenset({"text_too_long", "text_empty"})
TEXT_FIELDS = frozenset({"text", "confidence"})
# The wire bound (schemas/prediction.v1.json maxLength, worker.client's TEXT_MAX_CHARS);
# [fusion] max_text_chars may only lower it.
TEXT_MAX_CHARS = 65_536


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(value: object, max_text_chars: int, normalisation: TextNormalisation) -> str:
    """The ``text`` of an event, as sent, if valid; else InvalidEvent (module doc)."""
    return check_text_config(check_text_type(value), max_text_chars, normalisation)


def check_text_type(value: object) -> str:
    """The wire checks of ``text``: a string (else ``text_type``) of at most
    ``TEXT_MAX_CHARS`` characters (else ``schema``)."""
    if type(value) is not str:
        raise InvalidEvent("text_type", f"text must be a string, got {_show(value)}")
    if len(value) > TEXT_MAX_CHARS:
        raise InvalidEvent(
            "schema", f"text has {len(value)} characters, more than {TEXT_MAX_CHARS}"
        )
    return value


def check_text_config(text: str, max_text_chars: int, normalisation: TextNormalisation) -> str:
    """The configuration checks of a string ``text``: its length, then emptiness."""
    if len(text) > max_text_chars:
        raise InvalidEvent(
            "text_too_long",
            f"text of {len(text)} characters exceeds fusion.max_text_chars={max_text_chars}",
        )
    if not normalise(text, normalisation).strip():
        raise InvalidEvent(
            "text_empty",
            f"text {_show(text)} is empty once normalised ({', '.join(normalisation.steps)})",
        )
    return text


def check_confidence(value: object) -> float:
    """The ``confidence`` of an event as a float in [0, 1]; else InvalidEvent("schema")."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidEvent("schema", f"confidence must be a number in [0, 1], got {_show(value)}")
    confidence = float(value)
    if not math.isfinite(confidence):  # pragma: no cover - orjson yields no NaN
        raise InvalidEvent("non_finite", f"confidence must be finite, got {value!r}")
    if not 0.0 <= confidence <= 1.0:
        raise InvalidEvent("schema", f"confidence must be a number in [0, 1], got {value!r}")
    return confidence


def check_text_fields(
    doc: dict[str, object], max_text_chars: int, normalisation: TextNormalisation
) -> tuple[str | None, float | None]:
    """``(text, confidence)`` of a parsed event: None for fields not sent. The wire checks
    of both fields come before the configuration checks, as in the decoder, so that a
    schema-invalid event never gets a configuration reason. Checks ``confidence``
    without ``text`` too; the check that exactly one of probs / label / score / text is
    sent stays with the decoder."""
    text = check_text_type(doc["text"]) if "text" in doc else None
    confidence = None
    if "confidence" in doc:
        if text is None:
            raise InvalidEvent("schema", "confidence is only allowed with text")
        confidence = check_confidence(doc["confidence"])
    if text is not None:
        check_text_config(text, max_text_chars, normalisation)
    return text, confidence
