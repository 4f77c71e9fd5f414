"""The backtest's HTML report renders: every image the page shows is a real PNG file."""

from __future__ import annotations

import re
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.backtest.evaluate import Evaluation, evaluate
from worker.backtest.report import write_report
from worker.backtest.table import format_table
from worker.config import build_config
from worker.errors import FusionError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["a", "b", "c"]
MODELS = ["m1", "m2", "m3"]


def fused(
    rid: str, strategy: str, status: str, probs: list[float] | None, members: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": rid,
        "strategy": strategy,
        "status": status,
        "members": members,
        "missing": [m for m in MODELS if m not in members],
    }
    if probs is not None:
        out.update(label=LABELS[int(np.argmax(probs))], probs=probs, labels=LABELS)
    else:
        out.update(label=None, probs=None)
    return out


def synthetic(n: int = 60, seed: int = 1) -> Evaluation:
    """Fused results of two strategies over three members with some members missing."""
    config = build_config(
        {
            "fusion": {"labels": LABELS},
            "join": {"min_models": 2},
            "models": [{"name": m} for m in MODELS],
        }
    )
    rng = np.random.default_rng(seed)
    truth: dict[str, str | float] = {}
    results: dict[str, list[dict[str, Any]]] = {"soft_vote": [], "hard_vote": []}
    for i in range(n):
        rid = f"r{i}"
        y = int(rng.integers(3))
        truth[rid] = LABELS[y]
        members = {}
        for m in MODELS:
            if rng.random() < 0.15:
                continue
            p = rng.dirichlet(np.ones(3)) * 0.5 + 0.5 * np.eye(3)[y if rng.random() < 0.7 else 0]
            members[m] = {"weight": 1.0, "label": LABELS[int(p.argmax())], "probs": p.tolist()}
        status = (
            "complete" if len(members) == 3 else "partial" if len(members) >= 2 else "insufficient"
        )
        avg = np.mean([v["probs"] for v in members.values()], axis=0) if members else None
        for name in results:
            probs = None if status == "insufficient" or avg is None else avg.tolist()
            results[name].append(fused(rid, name, status, probs, members))
    return evaluate(config, results, truth)


def png_header(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and its CRC."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} has no PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert zlib.crc32(kind + body) == crc, f"{path.name}: IHDR CRC mismatch"
    width, height = struct.unpack(">II", body[:8])
    return width, height


def test_every_image_of_the_page_is_a_valid_png(tmp_path: Path) -> None:
    """index.html exists; every <img src> names a file beside it with a PNG signature and
    a decodable IHDR header of a non-empty image."""
    ev = synthetic()
    page = write_report(ev, tmp_path / "report", format_table(ev))
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*\bsrc="([^"]+)"', text)
    assert len(sources) == 4  # metrics, reliability, agreement, missing
    for src in sources:
        path = page.parent / src
        assert path.is_file(), f"{src} is missing"
        width, height = png_header(path)
        assert width > 0
        assert height > 0


def test_pngs_open_with_an_image_library(tmp_path: Path) -> None:
    """The PNGs decode fully (pixel data too), not only their headers."""
    image = pytest.importorskip("PIL.Image")
    ev = synthetic()
    page = write_report(ev, tmp_path, format_table(ev))
    for src in re.findall(r'src="([^"]+)"', page.read_text(encoding="utf-8")):
        with image.open(page.parent / src) as img:
            img.load()
            assert img.format == "PNG"


def test_page_shows_the_table_escaped(tmp_path: Path) -> None:
    """The terminal table appears on the page, HTML-escaped."""
    ev = synthetic()
    page = write_report(ev, tmp_path, "a <b> & c")
    assert "a &lt;b&gt; &amp; c" in page.read_text(encoding="utf-8")


def test_missing_matplotlib_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the report extra, --report fails with a FusionError that names the extra."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(FusionError, match=r"fusion-worker\[report\]"):
        write_report(synthetic(), tmp_path, "table")
