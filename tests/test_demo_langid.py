"""The language-identification demo's pure parts: the label table covers the fused set
for every identifier, each identifier gives a valid probability vector over its own codes
that the worker's configuration maps to the fused set, the corpus holds every language,
the backtest files are what `fusion-worker backtest` reads, and the texts the services
read are parsed strictly."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

pytest.importorskip("py3langid")
pytest.importorskip("langdetect")
pytest.importorskip("pycld2")
pytest.importorskip("gcld3")

from worker.backtest.run import run_backtest
from worker.client import check_event
from worker.config import build_config, load_config
from worker.decode import Decoder
from worker.demo_langid import backtest, corpus
from worker.demo_langid.identifiers import IDENTIFIERS, UNDETERMINED, Identifier, build
from worker.demo_langid.languages import (
    CLD3_CODES,
    LABEL_MAPS,
    LANGUAGES,
    fused_label,
    own_codes,
)
from worker.demo_langid.service import parse_text
from worker.events import unpack_probs


@pytest.fixture(scope="module")
def identifiers() -> dict[str, Identifier]:
    return {name: build(name) for name in IDENTIFIERS}


@pytest.fixture(scope="module")
def decoder(identifiers: dict[str, Identifier]) -> Decoder:
    """The decoder of the demo's worker configuration (own codes, label maps)."""
    import tomllib

    text = backtest.backtest_config(list(identifiers.values()))
    return Decoder(build_config(tomllib.loads(text)))


def fused_top(decoder: Decoder, name: str, probs: list[float]) -> str | None:
    """The fused label the worker's decoder gives an identifier's vector first place
    (None: no mass on any fused label)."""
    event = orjson.dumps({"request_id": "r", "model": name, "ts": 1, "probs": probs})
    fused = unpack_probs(decoder.decode(event, None).probs or b"")
    if not any(fused):
        return None
    return LANGUAGES[max(range(len(fused)), key=fused.__getitem__)]


def library_codes(name: str) -> set[str]:
    """The language codes each library says it knows (CLD3: its documented list)."""
    if name == "py3langid":
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        return set(LanguageIdentifier.from_model_file(MODEL_FILE).labels)
    if name == "langdetect":
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

        factory = DetectorFactory()
        factory.load_profile(PROFILES_DIRECTORY)
        return set(factory.get_lang_list())
    if name == "pycld2":
        import pycld2

        return {code for _, code in pycld2.LANGUAGES}
    return set(CLD3_CODES)


def test_the_table_has_one_entry_per_identifier() -> None:
    """The label table and the identifier registry name the same identifiers."""
    assert set(LABEL_MAPS) == set(IDENTIFIERS)


@pytest.mark.parametrize("name", sorted(IDENTIFIERS))
def test_every_identifier_covers_every_fused_language(name: str) -> None:
    """For each fused label, the library knows a code that the table maps to it."""
    codes = library_codes(name)
    for label, own in own_codes(name).items():
        assert any(code in codes for code in own), (name, label, own)
        assert all(fused_label(name, code) == label for code in own)


def test_the_corpus_has_sentences_of_every_fused_language() -> None:
    """spaCy's examples give at least one sentence for each label, and no other label."""
    sentences = corpus.load()
    assert {s.language for s in sentences} == set(LANGUAGES)
    assert len(sentences) >= 300
    assert len(corpus.load(per_language=1)) == len(LANGUAGES)


@pytest.mark.parametrize("name", sorted(IDENTIFIERS))
def test_every_code_of_the_table_is_one_of_the_identifiers_codes(
    identifiers: dict[str, Identifier], name: str
) -> None:
    """The worker's label_map of an identifier names only codes it publishes."""
    assert set(LABEL_MAPS[name]) <= set(identifiers[name].codes)


@pytest.mark.parametrize("name", sorted(IDENTIFIERS))
@pytest.mark.parametrize("text", ["Das ist ein Haus.", "12345", "", "\x01\x02 ??"])
def test_predictions_are_valid_events(
    identifiers: dict[str, Identifier], decoder: Decoder, name: str, text: str
) -> None:
    """For any text (digits, empty, control characters) the vector has one finite value
    >= 0 per own code, sums to 1, passes the client's checks and the worker's decoder."""
    ident = identifiers[name]
    probs = ident.predict(text)
    assert len(probs) == len(ident.codes)
    assert all(math.isfinite(p) and p >= 0 for p in probs)
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-9)
    check_event({"request_id": "r", "model": name, "probs": probs, "labels": list(ident.codes)})
    fused_top(decoder, name, probs)


@pytest.mark.parametrize("name", sorted(IDENTIFIERS))
def test_each_identifier_recognises_clear_german(
    identifiers: dict[str, Identifier], decoder: Decoder, name: str
) -> None:
    """A clear German sentence gets the code ``de`` first from every identifier, and the
    fused label ``de`` through the worker's mapping."""
    ident = identifiers[name]
    probs = ident.predict(
        "Die ganze Stadt ist ein Startup: Shenzhen ist das Silicon Valley für Hardware-Firmen"
    )
    assert ident.codes[max(range(len(probs)), key=probs.__getitem__)] == "de"
    assert fused_top(decoder, name, probs) == "de"


def test_hebrew_reaches_the_fused_label_through_the_worker_config(
    identifiers: dict[str, Identifier], decoder: Decoder
) -> None:
    """CLD2 and CLD3 say ``iw``, in their own codes; the worker's label_map makes it ``he``."""
    text = corpus.load(["he"], per_language=1)[0].text
    for name in ("pycld2", "cld3"):
        probs = identifiers[name].predict(text)
        assert identifiers[name].codes[max(range(len(probs)), key=probs.__getitem__)] == "iw"
        assert fused_top(decoder, name, probs) == "he"


def test_langdetect_zh_codes_are_summed_into_zh(
    identifiers: dict[str, Identifier], decoder: Decoder
) -> None:
    """langdetect's ``zh-cn`` and ``zh-tw`` both map to ``zh`` (several-to-one, summed)."""
    probs = identifiers["langdetect"].predict(corpus.load(["zh"], per_language=1)[0].text)
    codes = identifiers["langdetect"].codes
    assert fused_top(decoder, "langdetect", probs) == "zh"
    event = orjson.dumps({"request_id": "r", "model": "langdetect", "probs": probs, "ts": 1})
    fused = unpack_probs(decoder.decode(event, None).probs or b"")
    in_set = sum(p for c, p in zip(codes, probs, strict=True) if fused_label("langdetect", c))
    zh = probs[codes.index("zh-cn")] + probs[codes.index("zh-tw")]
    assert fused[LANGUAGES.index("zh")] == pytest.approx(zh / in_set, abs=1e-12)


def test_no_evidence_is_undetermined_and_maps_to_no_fused_label(
    identifiers: dict[str, Identifier], decoder: Decoder
) -> None:
    """langdetect finds no letters in digits: all its mass on ``und``, which the worker
    maps to no fused label (the member abstains), rather than a made-up vector."""
    probs = identifiers["langdetect"].predict("12345")
    assert probs[identifiers["langdetect"].codes.index(UNDETERMINED)] == 1.0
    assert fused_top(decoder, "langdetect", probs) is None


def test_backtest_files_are_what_the_backtest_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``backtest-data`` writes a config, predictions and labels that ``fusion-worker
    backtest`` scores: one row per identifier and per strategy, every request complete."""
    count = backtest.write(tmp_path, per_language=1)
    assert count == len(LANGUAGES)
    config = load_config(tmp_path / "fusion.toml", env={})
    assert config.model_names == tuple(IDENTIFIERS)
    code = run_backtest(config, str(tmp_path / "predictions.jsonl"), str(tmp_path / "labels.jsonl"))
    assert code == 0
    table = capsys.readouterr().out
    for name in [*IDENTIFIERS, "soft_vote", "geometric_mean"]:
        assert name in table
    assert f"{len(LANGUAGES)} labelled requests scored" in table


def test_the_wide_set_leaves_some_labels_uncovered(tmp_path: Path) -> None:
    """``--wide``: more labels than LANGUAGES, each named by some identifier, not all by
    every one (langdetect has no Basque); the configuration loads (no stacking)."""
    backtest.write(tmp_path, per_language=1, wide=True)
    config = load_config(tmp_path / "fusion.toml", env={})
    cover = config.vocabularies.cover
    assert set(LANGUAGES) < set(config.fusion.labels)
    assert cover.any(axis=0).all()
    assert not cover[config.model_names.index("langdetect"), config.fusion.labels.index("eu")]
    lines = (tmp_path / "labels.jsonl").read_bytes().splitlines()
    truth = {orjson.loads(line)["label"] for line in lines}
    assert truth == set(config.fusion.labels)


@pytest.mark.parametrize(
    "value",
    [b"", b"nope", b"[1]", b'{"request_id": "", "text": "a"}', b'{"request_id": "r"}',
     b'{"request_id": "r", "text": 3}'],
)  # fmt: skip
def test_records_that_are_not_texts_are_skipped(value: bytes) -> None:
    """A record without a request_id of 1..256 characters and a string text is no request."""
    assert parse_text(value) is None


def test_a_valid_traceparent_is_carried_and_a_bad_one_dropped() -> None:
    """The text's traceparent header is forwarded when valid, dropped otherwise."""
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    value = b'{"request_id": "r", "text": "hi"}'
    request = parse_text(value, [("traceparent", good.encode())])
    assert request is not None
    assert request.traceparent == good
    dropped = parse_text(value, [("traceparent", b"junk")])
    assert dropped is not None
    assert dropped.traceparent is None


def test_spread_order_puts_every_language_in_both_parts_of_a_time_split() -> None:
    """Each language's sentences are spread over the order: a language with n >= 4
    sentences has at least 2 in the first 60 % and at least 1 in the rest."""
    languages = [lang for lang, n in (("a", 4), ("b", 6), ("c", 30), ("d", 9)) for _ in range(n)]
    order = backtest.spread_order(languages)
    assert sorted(order) == list(range(len(languages)))
    cut = int(0.6 * len(order))
    for lang in "abcd":
        early = sum(languages[i] == lang for i in order[:cut])
        assert early >= 2, lang
        assert languages.count(lang) - early >= 1, lang


def test_the_fit_set_backtests_with_calibration_and_stacking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--min-per-language 6`` keeps the languages with 6+ sentences, whose config maps
    only fused labels, and ``backtest --fit`` trains on the earlier part: the table has
    the stacker, the learned weights and the calibrated rows."""
    backtest.write(tmp_path, min_per_language=6)
    config = load_config(tmp_path / "fusion.toml", env={})
    assert set(config.fusion.labels) < set(LANGUAGES)
    code = run_backtest(
        config,
        str(tmp_path / "predictions.jsonl"),
        str(tmp_path / "labels.jsonl"),
        fit=True,
        fit_dir=tmp_path / "fitted",
    )
    assert code == 0
    table = capsys.readouterr().out
    for row in ("stacking", "soft_vote+learned_weights", "soft_vote+calibrated"):
        assert row in table
