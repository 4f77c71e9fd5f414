"""The text demo: real sentences from pyjokes, simulated members whose error processes
do what the module says, reproducible files, and consensus beating the average member."""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from worker.demo_text import asr, evaluate, main, ocr, reorder, sentences, simulate


def test_the_corpus_is_real_sentences_from_the_wheel() -> None:
    """pyjokes ships its English sentences: hundreds of them, words and punctuation."""
    texts = sentences()
    assert len(texts) > 200
    assert all(len(t.split()) >= 3 for t in texts[:50])


def test_ocr_only_substitutes_characters_outside_whitespace() -> None:
    """OCR noise keeps the spacing and changes some characters."""
    text = "Modern error-prone engines learn slowly " * 5
    out = ocr(text, random.Random(1), rate=0.2)
    assert out != text
    assert out.split(" ")[-1] == ""  # the trailing space stays
    assert len(out.split()) == len(text.split())


def test_asr_lowercases_drops_punctuation_and_words() -> None:
    """ASR noise: lower case, no punctuation (apostrophes kept), fewer words."""
    text = "Hello, World! It's a Test. " * 10
    out = asr(text, random.Random(2), drop=0.3)
    assert out == out.lower()
    assert not set(",.!") & set(out)
    assert "it's" in out
    assert len(out.split()) < len(text.split())


def test_reorder_without_substitutions_only_swaps_neighbours() -> None:
    """With no replacements the words are the same multiset, in another order."""
    text = " ".join(f"w{i}" for i in range(40))
    out = reorder(text, random.Random(3), ["x"], swap=0.5, sub=0.0)
    assert sorted(out.split()) == sorted(text.split())
    assert out != text


def test_the_simulation_is_reproducible() -> None:
    """The same seed gives the same events."""
    texts = sentences()[:20]
    assert simulate(texts, 5) == simulate(texts, 5)
    assert simulate(texts, 5) != simulate(texts, 6)


def test_consensus_beats_the_average_member(tmp_path: Path) -> None:
    """On the demo data consensus (chrF) has a higher chrF and a lower WER than the
    average member; the command writes events, references and a config."""
    events, references = simulate(sentences())
    rows = {r.name: r for r in evaluate(events, references)}
    fused, average = rows["consensus (chrF)"], rows["average member"]
    assert fused.metrics["chrf"] > average.metrics["chrf"]
    assert fused.metrics["wer"] < average.metrics["wer"]
    main(["--out", str(tmp_path)])
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert orjson.loads(lines[0])["text"]
    assert len((tmp_path / "references.jsonl").read_bytes().splitlines()) == len(references)
    assert 'task = "text"' in (tmp_path / "fusion-text.toml").read_text()
