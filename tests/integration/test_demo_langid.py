"""The language-identification demo on the real broker: four identifier services, the
worker process and a gateway; every text gets a complete fused answer."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("py3langid")
pytest.importorskip("langdetect")
pytest.importorskip("pycld2")
pytest.importorskip("gcld3")
pytest.importorskip("spacy")

from worker.demo_langid.demo import run
from worker.demo_langid.identifiers import IDENTIFIERS
from worker.demo_langid.languages import LANGUAGES

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_fused_language_answers_for_a_sample(kafka_bootstrap: str, tmp_path: Path) -> None:
    """One sentence per language through services, worker and gateway: every answer is
    complete, from all four identifiers, and the fused label is right for most."""
    report = await run(
        kafka_bootstrap,
        per_language=1,
        show=False,
        summary=False,
        answer_timeout_s=90,
        log_path=tmp_path / "worker.log",
    )
    assert len(report.truth) == len(LANGUAGES)
    assert report.statuses == {"complete": len(LANGUAGES)}
    for name in IDENTIFIERS:
        assert None not in report.members[name], name
    assert report.accuracy(report.fused) >= 0.85
