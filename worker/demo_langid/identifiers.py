"""The pre-trained language identifiers, each giving a probability vector over
``languages.LANGUAGES`` (in that order).

Each library says something different, and each vector is what it says restricted to the
fused set and renormalised:

- ``py3langid``: naive Bayes over byte n-grams; restricted to the set's languages inside the
  model (``set_languages``), so its normalised probabilities are over the set already.
- ``langdetect``: the full posterior over its 55 profiles (fixed seed: it samples), restricted.
- ``pycld2``: CLD2's share of the text per language (up to three), restricted; not a
  probability but the closest thing CLD2 exposes.
- ``cld3``: CLD3's probability of its top language; CLD3 exposes no other, so the rest of
  the mass is spread evenly over the other labels.

When an identifier finds no evidence for any language of the set (a text of digits, a
language outside the set), its vector is uniform: it then leaves the decision to the
others instead of inventing one.

The libraries are imported when an identifier is built, so the worker does not need them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from worker.demo_langid.languages import LANGUAGES, fused_label, label_index, own_codes

N = len(LANGUAGES)


class Identifier(Protocol):
    """A language identifier: a name (the worker's model name) and a prediction."""

    name: str

    def predict(self, text: str) -> list[float]:
        """Probabilities over ``LANGUAGES``, in that order, summing to 1."""
        ...


def _uniform() -> list[float]:
    return [1.0 / N] * N


def _restricted(name: str, scores: Sequence[tuple[str, float]]) -> list[float]:
    """(own code, non-negative score) pairs -> normalised vector over the set."""
    vector = np.zeros(N)
    for code, score in scores:
        label = fused_label(name, code)
        if label is not None:
            vector[label_index(label)] += score
    total = vector.sum()
    if not total > 0:
        return _uniform()
    return (vector / total).tolist()  # type: ignore[no-any-return]


class Py3Langid:
    name = "py3langid"

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self._model.set_languages([c for codes in own_codes(self.name).values() for c in codes])

    def predict(self, text: str) -> list[float]:
        ranked: list[tuple[str, float]] = self._model.rank(text)
        return _restricted(self.name, [(code, float(p)) for code, p in ranked])


class LangDetect:
    name = "langdetect"

    def __init__(self, seed: int = 0) -> None:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
        from langdetect.lang_detect_exception import LangDetectException

        self._factory = DetectorFactory()
        self._factory.load_profile(PROFILES_DIRECTORY)
        # langdetect samples n-grams at random: a fixed seed makes it deterministic.
        self._factory.set_seed(seed)
        self._error = LangDetectException

    def predict(self, text: str) -> list[float]:
        detector = self._factory.create()
        detector.append(text)
        try:
            detector.get_probabilities()
        except self._error:
            return _uniform()  # no letters it knows: no evidence
        codes: list[str] = self._factory.get_lang_list()
        return _restricted(self.name, list(zip(codes, map(float, detector.langprob), strict=True)))


class Pycld2:
    name = "pycld2"

    def __init__(self) -> None:
        import pycld2

        self._detect: Callable[..., Any] = pycld2.detect
        self._error = pycld2.error

    def predict(self, text: str) -> list[float]:
        try:
            _, _, details = self._detect(text, bestEffort=True)
        except self._error:
            return _uniform()  # CLD2 refuses some control characters
        return _restricted(self.name, [(code, float(percent)) for _, code, percent, _ in details])


class Cld3:
    name = "cld3"

    def __init__(self) -> None:
        import gcld3

        self._model = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)

    def predict(self, text: str) -> list[float]:
        result = self._model.FindLanguage(text=text)
        label = fused_label(self.name, result.language)
        if label is None:
            return _uniform()
        top = min(max(float(result.probability), 0.0), 1.0)
        vector = [(1.0 - top) / (N - 1)] * N
        vector[label_index(label)] = top
        return vector


# One table of the identifiers: the CLI, the demo and the tests read it.
IDENTIFIERS: dict[str, Callable[[], Identifier]] = {
    "py3langid": Py3Langid,
    "langdetect": LangDetect,
    "pycld2": Pycld2,
    "cld3": Cld3,
}


def build(name: str) -> Identifier:
    """The identifier of that name; ValueError naming the known ones otherwise."""
    try:
        factory = IDENTIFIERS[name]
    except KeyError:
        raise ValueError(f"unknown identifier {name!r}; known: {', '.join(IDENTIFIERS)}") from None
    return factory()
