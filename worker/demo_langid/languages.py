"""The fused label set of the language-identification demo and, in one table, how the
worker maps each identifier's own codes to it.

Labels are ISO 639-1 codes as spaCy names its languages (``nb`` for Norwegian Bokmål).
The set is every language that all four identifiers cover *and* spaCy ships example
sentences for (see ``corpus``).

The identifiers publish in their own codes (``identifiers``); ``LABEL_MAPS`` is what the
worker's configuration says of them (``[[models]] label_map``, written by
``demo.models_toml``): the codes that differ from the fused label (CLD2 and CLD3 still
say ``iw`` for Hebrew; langdetect splits Chinese in two, summed into ``zh``). Any other
code is its own label when it is in the set, and maps to no fused label otherwise (the
worker drops its mass and renormalises the rest).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LANGUAGES: tuple[str, ...] = (
    "ar", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "gu",
    "he", "hi", "hr", "hu", "id", "it", "ja", "kn", "ko", "lt", "ml", "nb", "ne", "nl",
    "pl", "pt", "ro", "ru", "sk", "sl", "sq", "sv", "ta", "te", "tr", "uk", "ur", "vi",
    "zh",
)  # fmt: skip

# identifier -> {its own code: fused label}, for the codes that are not the label itself:
# the worker's [[models]] label_map of each identifier.
LABEL_MAPS: Mapping[str, Mapping[str, str]] = {
    "py3langid": {"no": "nb"},
    "langdetect": {"no": "nb", "zh-cn": "zh", "zh-tw": "zh"},
    "pycld2": {"iw": "he", "no": "nb", "zh-Hant": "zh"},
    "cld3": {"iw": "he", "no": "nb"},
}

# CLD3 cannot list its languages at run time; these are the codes its documentation lists.
CLD3_CODES = frozenset(
    {
        "af", "am", "ar", "bg", "bg-Latn", "bn", "bs", "ca", "ceb", "co", "cs", "cy", "da", "de",
        "el", "el-Latn", "en", "eo", "es", "et", "eu", "fa", "fi", "fil", "fr", "fy", "ga", "gd",
        "gl", "gu", "ha", "haw", "hi", "hi-Latn", "hmn", "hr", "ht", "hu", "hy", "id", "ig", "is",
        "it", "iw", "ja", "ja-Latn", "jv", "ka", "kk", "km", "kn", "ko", "ku", "ky", "la", "lb",
        "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "no",
        "ny", "pa", "pl", "ps", "pt", "ro", "ru", "ru-Latn", "sd", "si", "sk", "sl", "sm", "sn",
        "so", "sq", "sr", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "tr", "uk", "ur", "uz",
        "vi", "xh", "yi", "yo", "zh", "zh-Latn", "zu",
    }
)  # fmt: skip

_INDEX = {label: i for i, label in enumerate(LANGUAGES)}


def fused_label(identifier: str, code: str) -> str | None:
    """The fused label of an identifier's language code, or None when outside the set."""
    label = LABEL_MAPS[identifier].get(code, code)
    return label if label in _INDEX else None


def label_index(label: str) -> int:
    """The position of a fused label in ``LANGUAGES`` (and in every probability vector)."""
    return _INDEX[label]


def own_codes(identifier: str) -> dict[str, list[str]]:
    """For each fused label, the identifier's codes that map to it (for restricting a model
    to the set)."""
    inverse: dict[str, list[str]] = {label: [label] for label in LANGUAGES}
    for code, label in LABEL_MAPS[identifier].items():
        codes = inverse[label]
        if codes == [label]:
            codes.clear()
        codes.append(code)
    return inverse


def covered_languages(
    candidates: Iterable[str], codes: Mapping[str, Iterable[str]]
) -> tuple[str, ...]:
    """The ``candidates`` that at least one identifier (name -> its own codes) names, as the
    label itself or through ``LABEL_MAPS``; in the order given. A wider fused set than
    ``LANGUAGES``, where some identifiers do not cover some labels."""
    named = {LABEL_MAPS[name].get(code, code) for name, own in codes.items() for code in own}
    return tuple(label for label in candidates if label in named)
