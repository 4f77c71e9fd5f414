"""Demo data for text fusion on real text, and its backtest table.

The text is real: the 283 English one-liners that the pyjokes package (BSD licence)
carries inside its wheel (``pyjokes.get_jokes("en", "all")``), one request each. The
members are SIMULATED: each is a copy of the sentence passed through a documented error
process with its own rates and a fixed seed, standing in for models of different kinds:

- ``ocr``:      character substitutions as an OCR engine makes them: with probability
                4% per character, a look-alike (rn->m, l->1, O->0, e->c, ...) or, when
                there is none, a random lower-case letter.
- ``asr``:      a speech recogniser's output: lower case, no punctuation, and each word
                dropped with probability 10%.
- ``reorder``:  a translation-like output: each pair of neighbouring words swapped with
                probability 12%, and 3% of the words replaced by another word of the
                corpus.
- ``mixed``:    all three processes at half those rates.

Each member also sends a ``confidence``: 1 minus the share of characters its process
changed (a simulation too, not a model's log-probability).

``python -m worker.demo_text --out DIR`` writes DIR/events.jsonl (prediction events
with ``text``), DIR/references.jsonl (request_id, text), DIR/fusion-text.toml (the
configuration these events are for: task "text", consensus) and prints the table of
exact match, chrF and WER per member, per strategy (consensus with each similarity),
for the average member and the best member, computed with
worker.backtest.text_metrics (``--quiet``: no table). ``make text-demo`` then runs
``fusion-worker fuse`` and ``fusion-worker backtest`` on these files, the path a user
takes with real models.
"""

from __future__ import annotations

import argparse
import random
import string
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from worker.backtest.text_metrics import (
    TEXT_METRICS,
    TextRow,
    format_text_table,
    member_row,
    strategy_row,
)
from worker.fusion.text import TextOptions, fuse_text_batch

SEED = 16
FIRST_TS = 1_700_000_000_000
LOOK_ALIKE = {
    "rn": "m", "m": "rn", "l": "1", "1": "l", "O": "0", "0": "O", "e": "c", "c": "e",
    "S": "5", "5": "S", "i": "l", "B": "8", "g": "q", "h": "b", "u": "v", "a": "o",
}  # fmt: skip


def ocr(text: str, rng: random.Random, rate: float = 0.04) -> str:
    """Look-alike character substitutions (see the module doc)."""
    out, i = [], 0
    while i < len(text):
        if text[i : i + 2] == "rn" and rng.random() < rate:
            out.append("m")
            i += 2
            continue
        ch = text[i]
        if not ch.isspace() and rng.random() < rate:
            ch = LOOK_ALIKE.get(ch) or rng.choice(string.ascii_lowercase)
        out.append(ch)
        i += 1
    return "".join(out)


def asr(text: str, rng: random.Random, drop: float = 0.10) -> str:
    """Lower case, punctuation gone, words dropped (see the module doc)."""
    plain = "".join(
        ch for ch in text.lower() if not unicodedata.category(ch).startswith("P") or ch == "'"
    )
    words = [w for w in plain.split() if rng.random() >= drop]
    return " ".join(words) if words else plain.split()[0] if plain.split() else text


def reorder(
    text: str, rng: random.Random, vocabulary: Sequence[str], swap: float = 0.12, sub: float = 0.03
) -> str:
    """Neighbour swaps and word replacements (see the module doc)."""
    words = [w if rng.random() >= sub else rng.choice(vocabulary) for w in text.split()]
    i = 0
    while i < len(words) - 1:
        if rng.random() < swap:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    return " ".join(words)


def members(vocabulary: Sequence[str]) -> dict[str, Callable[[str, random.Random], str]]:
    """The simulated members, by model name, in configured order."""
    return {
        "ocr": ocr,
        "asr": asr,
        "reorder": lambda t, rng: reorder(t, rng, vocabulary),
        "mixed": lambda t, rng: reorder(
            asr(ocr(t, rng, 0.02), rng, 0.05), rng, vocabulary, 0.06, 0.015
        ),
    }


def sentences() -> list[str]:
    """pyjokes' English one-liners, in the package's order."""
    import pyjokes  # only the demo needs it (the text-demo extra)

    return [" ".join(joke.split()) for joke in pyjokes.get_jokes("en", "all")]


def _changed_share(before: str, after: str) -> float:
    from rapidfuzz.distance import Levenshtein

    return min(1.0, Levenshtein.distance(before, after) / max(1, len(before)))


def simulate(
    texts: Sequence[str], seed: int = SEED
) -> tuple[list[dict[str, object]], dict[str, str]]:
    """Prediction events (every member for every request, in member order) and the
    references by request_id."""
    vocabulary = sorted({w for t in texts for w in t.split()})
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not a secret
    events: list[dict[str, object]] = []
    references: dict[str, str] = {}
    for n, text in enumerate(texts):
        rid = f"joke-{n:04d}"
        references[rid] = text
        for k, (model, process) in enumerate(members(vocabulary).items()):
            out = process(text, rng)
            events.append(
                {
                    "request_id": rid,
                    "model": model,
                    "ts": FIRST_TS + 1000 * n + 10 * k,
                    "text": out,
                    "confidence": round(1.0 - _changed_share(text, out), 4),
                }
            )
    return events, references


CONFIG = """# The text demo's configuration (issue #16): the keys of the text task.
[kafka]
input_topics = ["predictions-text"]
output_topic = "fused-text"

[join]
timeout_ms = 1000

[fusion]
task = "text"
strategy = "consensus"      # or text_vote
similarity = "chrf"         # chrf | token_f1 | wer
max_text_chars = 2000
normalise = ["nfkc", "whitespace"]

[[models]]
name = "ocr"

[[models]]
name = "asr"

[[models]]
name = "reorder"

[[models]]
name = "mixed"
"""


def evaluate(events: Sequence[dict[str, object]], references: dict[str, str]) -> list[TextRow]:
    """Members, the strategies, and the average and best member (by chrF)."""
    names = list(dict.fromkeys(str(e["model"]) for e in events))
    ids = list(references)
    by_member: dict[str, dict[str, str]] = {m: {} for m in names}
    for e in events:
        by_member[str(e["model"])][str(e["request_id"])] = str(e["text"])
    rows = [member_row(m, by_member[m], references) for m in names]
    grid: list[Sequence[str | None]] = [[by_member[m].get(r) for m in names] for r in ids]
    weights = [1.0] * len(names)
    strategies = {
        "consensus (chrF)": ("consensus", TextOptions(similarity="chrf")),
        "consensus (token F1)": ("consensus", TextOptions(similarity="token_f1")),
        "consensus (1 - WER)": ("consensus", TextOptions(similarity="wer")),
        "text_vote": ("text_vote", TextOptions()),
    }
    for label, (strategy, options) in strategies.items():
        fused = fuse_text_batch(grid, weights, strategy, options)
        results = {
            r: ("complete", f.text) if f is not None else ("insufficient", None)
            for r, f in zip(ids, fused, strict=True)
        }
        rows.append(strategy_row(label, results, references))
    member_rows = rows[: len(names)]
    average = {m: sum(r.metrics[m] for r in member_rows) / len(member_rows) for m in TEXT_METRICS}
    best = max(member_rows, key=lambda r: r.metrics["chrf"])
    n = len(ids)
    rows.append(TextRow("average member", "summary", n, n, {}, average))
    rows.append(TextRow(f"best member ({best.name})", "summary", n, n, {}, dict(best.metrics)))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Text fusion demo data and its table.")
    parser.add_argument("--out", type=Path, default=Path(".cache/text-demo"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--quiet", action="store_true", help="write the files, print no table")
    args = parser.parse_args(argv)
    events, references = simulate(sentences(), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    (args.out / "references.jsonl").write_bytes(
        b"".join(orjson.dumps({"request_id": r, "text": t}) + b"\n" for r, t in references.items())
    )
    (args.out / "fusion-text.toml").write_text(CONFIG, "utf-8")
    print(
        f"{len(references)} requests (pyjokes' English sentences), {len(events)} events from "
        f"4 SIMULATED members, seed {args.seed}; files in {args.out}"
    )
    if not args.quiet:
        print(format_text_table(evaluate(events, references)))


if __name__ == "__main__":
    main()
