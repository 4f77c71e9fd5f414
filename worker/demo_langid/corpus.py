"""The labelled sentences of the demo and its tests: spaCy's example sentences.

spaCy's wheel ships, for each language it supports, a module ``spacy/lang/<code>/
examples.py`` with a list ``sentences`` of example sentences written by its contributors
(news headlines, proverbs, classic first lines). They are read here as text, with
``ast.literal_eval``: spaCy itself is never imported (seconds of start-up, and none of
its models are needed). The language code of the folder is the label.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worker.demo_langid.languages import LANGUAGES


@dataclass(frozen=True, slots=True)
class Sentence:
    language: str
    text: str


def _lang_dir() -> Path:
    spec = importlib.util.find_spec("spacy")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "spaCy is not installed; install the langid extra: pip install 'fusion-worker[langid]'"
        )
    return Path(spec.origin).parent / "lang"


def _sentences(path: Path) -> list[str]:
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "sentences" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return [s.strip() for s in value if isinstance(s, str) and s.strip()]
    return []


def load(languages: Iterable[str] = LANGUAGES, per_language: int | None = None) -> list[Sentence]:
    """The example sentences of ``languages`` (at most ``per_language`` each, in spaCy's
    order), language by language in the order given."""
    root = _lang_dir()
    out: list[Sentence] = []
    for language in languages:
        path = root / language / "examples.py"
        texts = _sentences(path) if path.is_file() else []
        out.extend(Sentence(language, t) for t in texts[:per_language])
    return out


def available() -> tuple[str, ...]:
    """Every language spaCy ships example sentences for, sorted."""
    return tuple(sorted(p.parent.name for p in _lang_dir().glob("*/examples.py")))
