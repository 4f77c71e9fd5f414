"""Normalisation of text answers before they are compared (pure, no I/O).

Two answers that differ only in ways a user does not care about ("Paris." and
" paris") should count as one answer in a vote and as equal in a similarity. Each step
is an option, applied in this order, so that the result does not depend on chance:

1. ``nfkc``: Unicode NFKC, so that compatibility forms (full-width letters, ligatures,
   superscripts, non-breaking spaces) become their plain equivalents first and the
   later steps see them.
2. ``case``: ``str.casefold`` (Unicode caseless matching: "Straße" and "STRASSE" fold
   alike, which ``lower`` does not do).
3. ``punctuation``: every character of a Unicode punctuation category (P*) is removed;
   symbols (S*) such as "+" or "$" are kept, since they carry meaning in answers.
4. ``whitespace``: runs of whitespace become one space, leading and trailing
   whitespace goes.

The fused text is always a member's own text, never the normalised form.
"""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from functools import cache

STEPS = ("nfkc", "case", "punctuation", "whitespace")


@dataclass(frozen=True, slots=True)
class TextNormalisation:
    """Which normalisation steps apply (see the module doc); all on by default."""

    nfkc: bool = True
    case: bool = True
    punctuation: bool = True
    whitespace: bool = True

    @classmethod
    def of(cls, steps: tuple[str, ...] | list[str]) -> TextNormalisation:
        """From a list of step names, e.g. ``["nfkc", "whitespace"]``; an unknown name is
        a ValueError naming it and the known ones."""
        unknown = sorted(set(steps) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown normalisation step(s) {unknown}; known: {list(STEPS)}")
        return cls(**{name: name in steps for name in STEPS})

    @property
    def steps(self) -> tuple[str, ...]:
        """The names of the steps that apply, in their order."""
        return tuple(name for name in STEPS if getattr(self, name))


NONE = TextNormalisation(nfkc=False, case=False, punctuation=False, whitespace=False)


@cache
def _punctuation_table() -> dict[int, None]:
    """str.translate table deleting every Unicode punctuation character (built once,
    on first use: a scan of all code points takes a fraction of a second)."""
    return {
        cp: None
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)).startswith("P")
    }


def prepare(options: TextNormalisation) -> None:
    """Build what ``normalise`` needs for ``options`` now (the punctuation table takes
    ~0.4 s): call it at start, so that the first request does not wait for it."""
    if options.punctuation:
        _punctuation_table()


def normalise(text: str, options: TextNormalisation) -> str:
    """``text`` with the steps of ``options`` applied, in the module doc's order."""
    if options.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if options.case:
        text = text.casefold()
    if options.punctuation:
        text = text.translate(_punctuation_table())
    if options.whitespace:
        text = " ".join(text.split())
    return text
