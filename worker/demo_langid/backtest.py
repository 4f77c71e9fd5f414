"""``python -m worker.demo_langid backtest-data --out DIR``: the demo's labelled history
for ``fusion-worker backtest``, without Kafka.

Each of spaCy's example sentences (``corpus``) is one request; each identifier's
prediction of it is one event, in the identifier's own codes, as its service would
publish it. Writes into DIR:

- ``predictions.jsonl``: the events, one per line;
- ``labels.jsonl``: ``{"request_id", "label"}``, the sentence's language;
- ``fusion.toml``: the worker's configuration, the identifiers with their own codes and
  label maps (``demo.models_toml``), as the live demo runs it.

``--wide`` widens the fused set to every language of spaCy's examples that at least one
identifier names: then some identifiers do not cover some labels (langdetect has no
Basque, for one), and the worker weighs each label over the identifiers that cover it.

Requests are in a fixed order (event time) that spreads each language's sentences evenly
over time, so a time split of ``backtest --fit`` trains and scores on every language
rather than on the first ones of the corpus. ``--min-per-language N`` keeps only the
languages with at least N sentences: fitting a stacker needs at least 2 complete
labelled requests of every label in the train part, which the rarest languages of the
corpus (one Bulgarian sentence) cannot give.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson

from worker.demo_langid import corpus
from worker.demo_langid.demo import models_toml
from worker.demo_langid.identifiers import IDENTIFIERS, Identifier, build
from worker.demo_langid.languages import LANGUAGES, covered_languages

# Event time of the first request (2026-01-01), ms; requests 10 ms apart.
FIRST_TS = 1_767_225_600_000
SEED = 17


def backtest_config(identifiers: Sequence[Identifier], labels: Sequence[str] = LANGUAGES) -> str:
    """The configuration ``fusion-worker backtest`` reads: the demo's fusion and models."""
    lines = ["[join]", "timeout_ms = 1000", "[fusion]", 'strategy = "soft_vote"']
    return "\n".join([*lines, *models_toml(identifiers, labels)]) + "\n"


def spread_order(languages: Sequence[str], seed: int = SEED) -> list[int]:
    """Indexes into ``languages`` (one entry per sentence) in an order where each
    language's sentences are spread evenly over the whole: its i-th of n sentences sits
    at (i + u) / n of the way, u a fixed random offset in [0, 1). Any time prefix then
    holds about its share of every language, which a plain shuffle does not promise."""
    rng = random.Random(seed)  # noqa: S311 - a fixed order, not a secret
    counts = Counter(languages)
    seen: dict[str, int] = {}
    keyed: list[tuple[float, float, int]] = []
    for index, language in enumerate(languages):
        i = seen.get(language, 0)
        seen[language] = i + 1
        keyed.append(((i + rng.random()) / counts[language], rng.random(), index))
    return [index for *_, index in sorted(keyed)]


def write(
    out: Path,
    per_language: int | None = None,
    wide: bool = False,
    min_per_language: int = 1,
) -> int:
    """Write the three files into ``out``; returns the number of requests. ``wide``: the
    fused set is every language of spaCy's examples that at least one identifier names
    (``languages.covered_languages``), so some identifiers leave some labels uncovered;
    else the demo's ``LANGUAGES``, which all four cover. ``min_per_language``: only the
    languages with at least that many sentences are fused (and labelled)."""
    identifiers = [build(name) for name in IDENTIFIERS]
    fused: Sequence[str] = LANGUAGES
    if wide:
        fused = covered_languages(corpus.available(), {i.name: i.codes for i in identifiers})
    sentences = corpus.load(fused, per_language=per_language)
    if min_per_language > 1:
        counts = Counter(s.language for s in sentences)
        fused = [lang for lang in fused if counts[lang] >= min_per_language]
        sentences = [s for s in sentences if counts[s.language] >= min_per_language]
    order = spread_order([s.language for s in sentences])
    out.mkdir(parents=True, exist_ok=True)
    events: list[bytes] = []
    labels: list[bytes] = []
    for position, index in enumerate(order):
        sentence = sentences[index]
        rid = f"s-{index:04d}"
        ts = FIRST_TS + 10 * position
        for ident in identifiers:
            event = {"request_id": rid, "model": ident.name, "ts": ts}
            events.append(orjson.dumps({**event, "probs": ident.predict(sentence.text)}))
        labels.append(orjson.dumps({"request_id": rid, "label": sentence.language}))
    (out / "predictions.jsonl").write_bytes(b"\n".join(events) + b"\n")
    (out / "labels.jsonl").write_bytes(b"\n".join(labels) + b"\n")
    (out / "fusion.toml").write_text(backtest_config(identifiers, fused), "utf-8")
    return len(sentences)
