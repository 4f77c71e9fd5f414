"""The backtest's HTML report: ``index.html`` with the metrics table and PNG plots beside it
(metric bars per predictor, reliability diagrams, the members' agreement matrix, the
missing rate by model).

matplotlib is an optional extra (``fusion-worker[report]``), imported only here and
only when a report is asked for. Figures are drawn on the Agg canvas directly, without
pyplot, so no global backend or figure registry is touched.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.backtest.evaluate import Evaluation, Row
from worker.backtest.metrics import ECE_BINS
from worker.backtest.table import METRICS
from worker.errors import FusionError

log = logging.getLogger(__name__)

MEMBER_COLOUR = "#8c8c8c"
STRATEGY_COLOUR = "#1f77b4"
WINNER_COLOUR = "#d62728"
TITLES = {
    "accuracy": "accuracy (higher is better)",
    "macro_f1": "macro-F1 (higher is better)",
    "log_loss": "log loss (lower is better)",
    "brier": "Brier score (lower is better)",
    "ece": "expected calibration error (lower is better)",
    "mae": "mean absolute error (lower is better)",
    "rmse": "root mean squared error (lower is better)",
    "exact_match": "exact match (higher is better)",
    "chrf": "chrF (higher is better)",
    "wer": "word error rate (lower is better)",
}


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), or a FusionError that says how to install the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise FusionError(
            "--report needs matplotlib, which is not installed: pip install 'fusion-worker[report]'"
        ) from None
    return Figure, FigureCanvasAgg


def check_available() -> None:
    """Raise the FusionError of a missing matplotlib now, before a long backtest."""
    _matplotlib()


def write_report(
    evaluation: Evaluation,
    out_dir: Path,
    table: str,
    summary: Sequence[str] = (),
    winner: str | None = None,
) -> Path:
    """Write ``index.html`` and its PNGs into ``out_dir``; return the page's path.

    ``table`` is the terminal table (shown as is), ``summary`` lines go above it.
    """
    figure, canvas = _matplotlib()
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        canvas(fig)
        fig.savefig(out_dir / name, format="png", dpi=100, metadata={"Software": None})
        plots.append((name, caption))

    names = METRICS[evaluation.task]
    save(_metric_bars(figure, evaluation, names, winner), "metrics.png", "Metrics per predictor")
    if evaluation.task == "classification":
        rel = [r for r in evaluation.rows if r.reliability is not None]
        if rel:
            save(
                _reliability(figure, rel),
                "reliability.png",
                f"Reliability diagrams ({ECE_BINS} equal-width bins on the max probability)",
            )
    save(_agreement(figure, evaluation), "agreement.png", _agreement_caption(evaluation))
    save(_missing(figure, evaluation), "missing.png", "Missing rate by model")
    page = out_dir / "index.html"
    page.write_text(_html(evaluation, table, summary, plots), encoding="utf-8")
    log.info("report written to %s", page)
    return page


def _agreement_caption(evaluation: Evaluation) -> str:
    if evaluation.task == "classification":
        return "Members' agreement: share of co-reported requests with the same label"
    if evaluation.task == "text":
        return (
            "Members' agreement: mean chrF of the row member's text against the column "
            "member's, on co-reported requests"
        )
    return "Members' agreement: correlation of scores on co-reported requests"


def _metric_bars(figure: Any, ev: Evaluation, names: Sequence[str], winner: str | None) -> Any:
    rows = ev.rows
    fig = figure(figsize=(4.2 * len(names), 0.35 * len(rows) + 1.6), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    y = np.arange(len(rows))
    colours = [_colour(r, winner) for r in rows]
    for ax, name in zip(axes, names, strict=True):
        values = [r.metrics.get(name, math.nan) for r in rows]
        shown = [0.0 if math.isnan(v) else v for v in values]
        ax.barh(y, shown, color=colours)
        for yi, v in zip(y, values, strict=True):
            ax.text(0, yi, " n/a" if math.isnan(v) else f" {v:.4f}", va="center", fontsize=8)
        ax.set_title(TITLES[name], fontsize=9)
        ax.invert_yaxis()
    axes[0].set_yticks(y, [r.name for r in rows], fontsize=8)
    return fig


def _colour(row: Row, winner: str | None) -> str:
    if row.kind != "strategy":
        return MEMBER_COLOUR
    return WINNER_COLOUR if row.name == winner else STRATEGY_COLOUR


def _reliability(figure: Any, rows: Sequence[Row]) -> Any:
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = figure(figsize=(3.2 * cols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for ax, row in zip(axes, rows, strict=False):
        assert row.reliability is not None
        conf, acc, count = row.reliability
        used = count > 0
        ax.bar(
            centres[used],
            acc[used],
            width=1.0 / ECE_BINS,
            color=MEMBER_COLOUR if row.kind == "member" else STRATEGY_COLOUR,
            edgecolor="white",
        )
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--")
        ax.plot(conf[used], acc[used], "o", color="black", markersize=3)
        ece = row.metrics.get("ece", math.nan)
        ax.set_title(f"{row.name}  ECE {ece:.3f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    return fig


def _agreement(figure: Any, ev: Evaluation) -> Any:
    m = len(ev.models)
    fig = figure(figsize=(1.2 * m + 2.5, 1.0 * m + 1.5), layout="constrained")
    ax = fig.subplots()
    shown = np.nan_to_num(ev.agreement, nan=0.0)
    lo = -1.0 if ev.task == "regression" else 0.0
    image = ax.imshow(shown, vmin=lo, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(m), ev.models, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(m), ev.models, fontsize=8)
    for i in range(m):
        for j in range(m):
            v = ev.agreement[i, j]
            text = "n/a" if math.isnan(v) else f"{v:.2f}"
            # Dark text on the light (high) end of viridis, light text on the dark end.
            colour = "black" if not math.isnan(v) and (v - lo) / (1.0 - lo) > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    return fig


def _missing(figure: Any, ev: Evaluation) -> Any:
    fig = figure(figsize=(max(4.0, 1.0 * len(ev.models) + 2.0), 3.0), layout="constrained")
    ax = fig.subplots()
    values = [ev.missing_rate[m] for m in ev.models]
    shown = [0.0 if math.isnan(v) else v for v in values]
    ax.bar(range(len(values)), shown, color=MEMBER_COLOUR)
    ax.set_xticks(range(len(values)), ev.models, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("missing rate")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    top = max(shown) if shown else 0.0
    ax.set_ylim(0, max(0.05, top * 1.25))
    for x, v in enumerate(values):
        ax.text(
            x,
            0 if math.isnan(v) else v,
            "n/a" if math.isnan(v) else f"{v:.1%}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    return fig


def _html(
    ev: Evaluation, table: str, summary: Sequence[str], plots: Sequence[tuple[str, str]]
) -> str:
    esc = html.escape
    figures = "\n".join(
        f'<figure><img src="{esc(name)}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for name, caption in plots
    )
    notes = "".join(f"<li>{esc(line)}</li>" for line in [*summary, *ev.notes])
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fusion-worker backtest</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 80em; }}
pre {{ background: #f5f5f5; padding: 1em; overflow-x: auto; }}
figure {{ margin: 2em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>fusion-worker backtest</h1>
<p>{ev.requests} labelled requests evaluated ({ev.task}); {ev.unlabelled} results without a
label left out; {ev.unseen} labels without any result. Members in grey, strategies in blue,
the winner in red.</p>
<ul>{notes}</ul>
<h2>Metrics</h2>
<pre>{esc(table)}</pre>
<h2>Plots</h2>
{figures}
<p>Definitions: docs/backtest.md (accuracy and macro-F1 on answered requests; log loss
and Brier score over the configured labels; ECE with {ECE_BINS} equal-width bins on the
max probability; text: exact match, corpus chrF and corpus WER against the references;
insufficient results count only in the coverage).</p>
</body>
</html>
"""
