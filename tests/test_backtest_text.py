"""The backtest on the text task: fused through the engine, scored by exact match, chrF
and WER against reference texts from the labels file, the table, the verdict and the
HTML report."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from worker.backtest.run import run_backtest
from worker.backtest.text_metrics import corpus_chrf, corpus_wer
from worker.config import build_config, load_config
from worker.demo_text import main as write_demo
from worker.errors import ConfigError, FusionError

MODELS = ("good", "noisy", "bad")
REFERENCES = {
    "r0": "the cat sat on the mat",
    "r1": "a dog barked at the moon",
    "r2": "rain falls on the plain",
}
ANSWERS = {
    "good": ["the cat sat on the mat", "a dog barked at the moon", "rain falls in the plain"],
    "noisy": ["the cat sat on a mat", "a dog barked at moon", "rain falls on the plain"],
    "bad": ["cats", "dogs bark", "the plain"],
}


def write_case(tmp_path: Path) -> tuple[Path, Path, Path]:
    config = tmp_path / "text.toml"
    config.write_text(
        '[fusion]\ntask = "text"\nstrategy = "consensus"\n'
        + "".join(f'[[models]]\nname = "{m}"\n' for m in MODELS)
    )
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"".join(
            orjson.dumps({"request_id": rid, "model": m, "ts": 1000 * i + j, "text": ANSWERS[m][i]})
            + b"\n"
            for i, rid in enumerate(REFERENCES)
            for j, m in enumerate(MODELS)
        )
    )
    labels = tmp_path / "references.jsonl"
    labels.write_bytes(
        b"".join(orjson.dumps({"request_id": r, "text": t}) + b"\n" for r, t in REFERENCES.items())
    )
    return config, events, labels


def test_the_table_scores_members_strategies_and_the_average_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each member and each text strategy has a row with exact match, chrF and WER (the
    corpus figures of text_metrics), and the average member a summary row."""
    config, events, labels = write_case(tmp_path)
    assert run_backtest(load_config(config, env={}), str(events), str(labels)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-3:] == ["match", "chrF", "WER"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}
    refs = list(REFERENCES.values())
    good = rows["good"]
    assert float(good[-2]) == pytest.approx(corpus_chrf(ANSWERS["good"], refs), abs=1e-4)
    assert float(good[-1]) == pytest.approx(corpus_wer(ANSWERS["good"], refs), abs=1e-4)
    assert float(good[-3]) == pytest.approx(2 / 3, abs=1e-4)
    assert {"text_vote", "consensus", "average"} <= rows.keys()
    assert "summary" in rows["average"]


def test_the_verdict_compares_the_winner_with_the_average_and_the_best_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The winner is named by chrF, and the lines say on which metrics it beats the
    average member and the best member."""
    config, events, labels = write_case(tmp_path)
    run_backtest(load_config(config, env={}), str(events), str(labels))
    out = capsys.readouterr().out
    assert "winner: consensus" in out
    assert "the average member (" in out
    assert "the best single member, good (" in out


def test_the_report_has_the_text_metrics(tmp_path: Path) -> None:
    """--report writes the page with the text table and the metric bars."""
    config, events, labels = write_case(tmp_path)
    run_backtest(load_config(config, env={}), str(events), str(labels), report=tmp_path / "r")
    page = (tmp_path / "r" / "index.html").read_text()
    assert "chrF" in page
    assert "(text)" in page
    assert (tmp_path / "r" / "metrics.png").stat().st_size > 0


def test_a_label_line_without_a_text_is_refused(tmp_path: Path) -> None:
    """Under the text task the labels file carries the reference text: a line with a
    label instead names the problem and the line."""
    config, events, labels = write_case(tmp_path)
    labels.write_bytes(b'{"request_id": "r0", "label": "cat"}\n')
    with pytest.raises(FusionError, match="reference text"):
        run_backtest(load_config(config, env={}), str(events), str(labels))


def test_fit_is_refused_for_text(tmp_path: Path) -> None:
    """--fit trains stackers and weights for labels, not texts: a ConfigError on --fit."""
    config, events, labels = write_case(tmp_path)
    with pytest.raises(ConfigError) as info:
        run_backtest(load_config(config, env={}), str(events), str(labels), fit=True)
    assert info.value.key == "--fit"


def test_on_the_demo_consensus_beats_the_average_member_through_the_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's files through `backtest` (the engine, not the core directly): consensus
    has a higher chrF and a lower WER than the average member."""
    write_demo(["--out", str(tmp_path), "--quiet"])
    cfg = build_config(
        {
            "fusion": {"task": "text", "strategy": "consensus"},
            "models": [{"name": m} for m in ("ocr", "asr", "reorder", "mixed")],
        }
    )
    run_backtest(
        cfg, str(tmp_path / "events.jsonl"), str(tmp_path / "references.jsonl"), ["consensus"]
    )
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    consensus, average = rows["consensus"], rows["average"]
    assert float(consensus[-2]) > float(average[-2])
    assert float(consensus[-1]) < float(average[-1])


def test_bootstrap_is_refused_for_text(tmp_path: Path) -> None:
    """The paired bootstrap resamples label or score losses: a ConfigError on --bootstrap."""
    config, events, labels = write_case(tmp_path)
    with pytest.raises(ConfigError) as info:
        run_backtest(load_config(config, env={}), str(events), str(labels), bootstrap=100)
    assert info.value.key == "--bootstrap"
