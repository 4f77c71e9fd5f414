"""The label alignment of a model that reports in a vocabulary of its own (``[[models]]
labels`` / ``label_map``): the config checks of its ``probs``, ``labels`` and ``label``
in its codes, mapped to the fused labels by the rules of ``worker.vocabulary``."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from worker.decode_checks import _show
from worker.errors import InvalidEvent
from worker.vocabulary import UNMAPPED, Vocabulary

# Producers send the same few label orders again and again: remember their alignment.
_ORDER_CACHE_MAX = 1024


class _ModelCodes:
    """The label alignment of one model with a vocabulary of its own (``[[models]]
    labels`` / ``label_map``): its probs over its codes -> a vector over the fused labels
    (several-to-one summed; mass on unmapped codes dropped and the rest renormalised; no
    mass left: all zeros, the member abstains), its label code -> a fused label index
    (``UNMAPPED`` when the code maps to none). See worker.vocabulary."""

    __slots__ = ("_index", "_n", "_name", "_orders", "_rescale", "_vocab")

    def __init__(self, name: str, vocab: Vocabulary, n_labels: int) -> None:
        self._name = name
        self._vocab = vocab
        self._n = n_labels
        self._index = {code: i for i, code in enumerate(vocab.codes)}
        self._rescale = vocab.has_unmapped
        self._orders: dict[tuple[str, ...], tuple[int, ...]] = {}

    def mapped(
        self, raw: list[float], names: object, tolerance: float, pack: Callable[..., bytes]
    ) -> bytes:
        targets = self._vocab.target if names is None else self._targets(names)
        if len(raw) != len(targets):
            raise InvalidEvent(
                "label_mismatch",
                f"probs has {len(raw)} values, "
                + (
                    f"labels has {len(targets)}"
                    if names is not None
                    else f"model {self._name!r} has {len(targets)} codes (its labels)"
                ),
            )
        if abs(sum(raw) - 1.0) > tolerance:
            raise InvalidEvent(
                "not_normalised",
                f"probs {_show(raw)} sum to {sum(raw)!r}, "
                f"not 1 within fusion.prob_tolerance={tolerance}",
            )
        out = [0.0] * self._n
        for target, p in zip(targets, raw, strict=True):
            if target != UNMAPPED:
                out[target] += p
        if self._rescale:
            kept = sum(out)
            if kept > 0:
                out = [p / kept for p in out]
        return pack(*out)

    def label(self, code: str) -> int:
        position = self._index.get(code)
        if position is None:
            raise InvalidEvent(
                "unknown_label",
                f"label {_show(code)} is not one of the codes of model {self._name!r} "
                f"{_show(list(self._vocab.codes))}",
            )
        return self._vocab.target[position]

    def _targets(self, names: object) -> tuple[int, ...]:
        """The fused label index of each entry of an event's ``labels`` (wire-valid)."""
        key = tuple(cast("list[str]", names))
        cached = self._orders.get(key)
        if cached is not None:
            return cached
        unknown = [code for code in key if code not in self._index]
        if unknown:
            raise InvalidEvent(
                "unknown_label",
                f"labels entries {_show(unknown)} are not codes of model {self._name!r}",
            )
        if len(key) != len(self._index):
            raise InvalidEvent(
                "label_mismatch",
                f"labels {_show(list(key))} is not a permutation of the codes of model "
                f"{self._name!r} {_show(list(self._vocab.codes))}",
            )
        targets = tuple(self._vocab.target[self._index[code]] for code in key)
        if len(self._orders) < _ORDER_CACHE_MAX:
            self._orders[key] = targets
        return targets
