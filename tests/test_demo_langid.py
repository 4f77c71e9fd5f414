"""The language-identification demo's pure parts: the label table covers the fused set
for every identifier, each identifier gives a valid probability vector over it, the
corpus holds every language, and the texts the services read are parsed strictly."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("py3langid")
pytest.importorskip("langdetect")
pytest.importorskip("pycld2")
pytest.importorskip("gcld3")

from worker.client import check_event
from worker.demo_langid import corpus
from worker.demo_langid.identifiers import IDENTIFIERS, Identifier, build
from worker.demo_langid.languages import (
    CLD3_CODES,
    LABEL_MAPS,
    LANGUAGES,
    fused_label,
    own_codes,
)
from worker.demo_langid.service import parse_text


@pytest.fixture(scope="module")
def identifiers() -> dict[str, Identifier]:
    return {name: build(name) for name in IDENTIFIERS}


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
@pytest.mark.parametrize("text", ["Das ist ein Haus.", "12345", "", "\x01\x02 ??"])
def test_predictions_are_valid_events(
    identifiers: dict[str, Identifier], name: str, text: str
) -> None:
    """For any text (digits, empty, control characters) the vector has one finite value
    >= 0 per label, sums to 1 and passes the client's checks."""
    probs = identifiers[name].predict(text)
    assert len(probs) == len(LANGUAGES)
    assert all(math.isfinite(p) and p >= 0 for p in probs)
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-9)
    check_event({"request_id": "r", "model": name, "probs": probs, "labels": list(LANGUAGES)})


@pytest.mark.parametrize("name", sorted(IDENTIFIERS))
def test_each_identifier_recognises_clear_german(
    identifiers: dict[str, Identifier], name: str
) -> None:
    """A clear German sentence gets the German label first from every identifier."""
    probs = identifiers[name].predict(
        "Die ganze Stadt ist ein Startup: Shenzhen ist das Silicon Valley für Hardware-Firmen"
    )
    assert LANGUAGES[max(range(len(probs)), key=probs.__getitem__)] == "de"


def test_hebrew_reaches_the_fused_label_through_the_table(
    identifiers: dict[str, Identifier],
) -> None:
    """CLD2 and CLD3 say ``iw``; the table turns it into ``he``."""
    text = corpus.load(["he"], per_language=1)[0].text
    for name in ("pycld2", "cld3"):
        probs = identifiers[name].predict(text)
        assert LANGUAGES[max(range(len(probs)), key=probs.__getitem__)] == "he"


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
