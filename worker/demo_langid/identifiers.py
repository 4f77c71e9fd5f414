"""The pre-trained language identifiers, each giving a probability vector over its own
language codes (``codes``, in that order): what the library says, in its own words. The
worker maps those codes to the fused labels (``[[models]] labels`` / ``label_map``, see
``languages`` and ``demo.models_toml``); no identifier knows the fused label set.

- ``py3langid``: naive Bayes over byte n-grams; its normalised probabilities over its
  languages (``zxx``, "no linguistic content", among them).
- ``langdetect``: the full posterior over its 55 profiles (fixed seed: it samples).
- ``pycld2``: CLD2's share of the text per language (up to three), normalised; not a
  probability but the closest thing CLD2 exposes.
- ``cld3``: CLD3's probability of its top language; CLD3 exposes no other, so the rest of
  the mass is spread evenly over its other languages.

When an identifier finds no evidence at all (langdetect and CLD2 refuse some texts, CLD3
may say ``und``), all its mass goes to ``und`` (undetermined), a code that maps to no
fused label: the worker lets that member abstain instead of inventing a vector.

The libraries are imported when an identifier is built, so the worker does not need them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from worker.demo_langid.languages import CLD3_CODES

UNDETERMINED = "und"


class Identifier(Protocol):
    """A language identifier: a name (the worker's model name), its own codes (the
    model's ``labels`` in the worker's configuration) and a prediction."""

    name: str
    codes: tuple[str, ...]

    def predict(self, text: str) -> list[float]:
        """Probabilities over ``codes``, in that order, summing to 1."""
        ...


class _Vector:
    """Builds a probability vector over an identifier's codes."""

    def __init__(self, codes: Sequence[str]) -> None:
        self.codes = tuple(codes)
        self._index = {code: i for i, code in enumerate(self.codes)}

    def undetermined(self) -> list[float]:
        vector = [0.0] * len(self.codes)
        vector[self._index[UNDETERMINED]] = 1.0
        return vector

    def normalised(self, scores: Sequence[tuple[str, float]]) -> list[float]:
        """(code, non-negative score) pairs -> a vector over the codes summing to 1; codes
        the identifier does not list are left out; nothing left: undetermined."""
        vector = [0.0] * len(self.codes)
        for code, score in scores:
            position = self._index.get(code)
            if position is not None:
                vector[position] += score
        total = sum(vector)
        if not total > 0:
            return self.undetermined()
        return [v / total for v in vector]


class Py3Langid:
    name = "py3langid"

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self._vector = _Vector([*self._model.labels, UNDETERMINED])
        self.codes = self._vector.codes

    def predict(self, text: str) -> list[float]:
        ranked: list[tuple[str, float]] = self._model.rank(text)
        return self._vector.normalised([(code, float(p)) for code, p in ranked])


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
        self._languages: list[str] = list(self._factory.get_lang_list())
        self._vector = _Vector([*self._languages, UNDETERMINED])
        self.codes = self._vector.codes

    def predict(self, text: str) -> list[float]:
        detector = self._factory.create()
        detector.append(text)
        try:
            detector.get_probabilities()
        except self._error:
            return self._vector.undetermined()  # no letters it knows: no evidence
        pairs = zip(self._languages, map(float, detector.langprob), strict=True)
        return self._vector.normalised(list(pairs))


class Pycld2:
    name = "pycld2"

    def __init__(self) -> None:
        import pycld2

        self._detect: Callable[..., tuple[bool, int, tuple[tuple[str, str, int, float], ...]]]
        self._detect = pycld2.detect
        self._error = pycld2.error
        # "un" is CLD2's own "unknown": a share of the text, not a language.
        known = sorted({code for _, code in pycld2.LANGUAGES} - {"un"})
        self._vector = _Vector([*known, UNDETERMINED])
        self.codes = self._vector.codes

    def predict(self, text: str) -> list[float]:
        try:
            _, _, details = self._detect(text, bestEffort=True)
        except self._error:
            return self._vector.undetermined()  # CLD2 refuses some control characters
        return self._vector.normalised([(code, float(pct)) for _, code, pct, _ in details])


class Cld3:
    name = "cld3"

    def __init__(self) -> None:
        import gcld3

        self._model = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
        self._vector = _Vector([*sorted(CLD3_CODES), UNDETERMINED])
        self.codes = self._vector.codes
        self._languages = len(CLD3_CODES)

    def predict(self, text: str) -> list[float]:
        result = self._model.FindLanguage(text=text)
        if result.language not in CLD3_CODES:
            return self._vector.undetermined()
        top = min(max(float(result.probability), 0.0), 1.0)
        rest = (1.0 - top) / (self._languages - 1)
        return [
            0.0 if code == UNDETERMINED else top if code == result.language else rest
            for code in self.codes
        ]


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
