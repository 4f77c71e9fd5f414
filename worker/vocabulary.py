"""Per-model label vocabularies: how each model's own class codes map to the fused labels.

A model configured with ``[[models]] labels`` (its own codes, in the order of its
``probs``) and ``label_map`` (code -> fused label) reports in its own codes; the decoder
maps its predictions to ``[fusion] labels`` with this table, and the fusion weighs each
fused label over the models that cover it (``Vocabularies.cover``).

Rules (also in docs/design-notes.md, "Label vocabularies"):

- A code maps to ``label_map[code]`` when listed, else to itself when it is a fused
  label, else to no fused label ("unmapped").
- Several codes mapping to one fused label: their probabilities are summed.
- A model covers the fused labels some code maps to; the others are "not covered" for
  it: no made-up probability, and the fusion leaves the model out of those labels.
- Probability mass on unmapped codes is dropped and the rest renormalised: the member's
  vector is its distribution conditioned on the fused label set (the fused labels are
  the whole world of the task). A prediction with no mass on any fused label (or a hard
  ``label`` that is an unmapped code) abstains: the member is listed, with weight 0.

Pure: built once from the configuration, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]

UNMAPPED = -1


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """One model's codes and where each goes.

    codes : the model's own labels, in the order its ``probs`` follow by default
    target : for each code, the index of its fused label, or ``UNMAPPED``
    cover : ndarray of shape (k,), bool; the fused labels some code maps to
    """

    codes: tuple[str, ...]
    target: tuple[int, ...]
    cover: BoolArray

    @property
    def has_unmapped(self) -> bool:
        return UNMAPPED in self.target

    @property
    def is_identity(self) -> bool:
        """The codes are the fused labels in the fused order: nothing to map."""
        return self.target == tuple(range(len(self.cover)))


def vocabulary(
    labels: Sequence[str], codes: Sequence[str], label_map: Mapping[str, str]
) -> Vocabulary:
    """The vocabulary of a model with ``codes`` (empty: the fused ``labels`` themselves)
    and ``label_map``. The configuration has validated them (worker.config)."""
    index = {name: i for i, name in enumerate(labels)}
    own = tuple(codes) or tuple(labels)
    target = tuple(index.get(label_map.get(code, code), UNMAPPED) for code in own)
    cover = np.zeros(len(labels), dtype=np.bool_)
    cover[[t for t in target if t != UNMAPPED]] = True
    return Vocabulary(own, target, cover)


@dataclass(frozen=True, slots=True)
class Vocabularies:
    """Every configured model's vocabulary, in configured model order.

    cover : ndarray of shape (m, k), bool; which fused labels each model covers
    full : True when every model covers every fused label with no unmapped code, so the
        fusion is exactly the one without vocabularies (scikit-learn parity)
    """

    models: tuple[Vocabulary, ...]
    cover: BoolArray

    @property
    def full_cover(self) -> bool:
        return bool(self.cover.all())

    @property
    def may_abstain(self) -> bool:
        """Some model has unmapped codes, so one of its predictions can abstain."""
        return any(v.has_unmapped for v in self.models)

    @property
    def full(self) -> bool:
        return self.full_cover and not self.may_abstain


def vocabularies(
    labels: Sequence[str],
    models: Sequence[tuple[Sequence[str], Mapping[str, str]]],
) -> Vocabularies:
    """The vocabularies of ``models`` (each its codes and label_map) over ``labels``."""
    vocabs = tuple(vocabulary(labels, codes, label_map) for codes, label_map in models)
    cover = (
        np.stack([v.cover for v in vocabs])
        if vocabs
        else np.zeros((0, len(labels)), dtype=np.bool_)
    )
    return Vocabularies(vocabs, cover)
