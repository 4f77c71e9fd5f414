"""The backtest table printed on the terminal (and shown as is in the HTML report)."""

from __future__ import annotations

import math

from worker.backtest.evaluate import Evaluation, Row
from worker.backtest.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
from worker.backtest.text_metrics import TEXT_METRICS

HEADERS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "log_loss": "log loss",
    "brier": "Brier",
    "ece": "ECE",
    "mae": "MAE",
    "rmse": "RMSE",
    "exact_match": "exact match",
    "chrf": "chrF",
    "wer": "WER",
}
METRICS = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
    "text": TEXT_METRICS,
}


def format_table(ev: Evaluation, winner: str | None = None) -> str:
    """Members first, then strategies (then summary rows: the text task's average
    member); ``*`` marks ``winner``. Coverage of a strategy is complete/partial/
    insufficient in percent of the requests, of a member the share it reported."""
    names = METRICS[ev.task]
    header = ["predictor", "kind", "answered", "coverage c/p/i %", *(HEADERS[n] for n in names)]
    body = [_cells(r, names, winner) for r in ev.rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        rest = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(first + rest).rstrip()

    rule = "-" * len(line(header))
    out = [line(header), rule]
    for i, cells in enumerate(body):
        if i and ev.rows[i].kind != ev.rows[i - 1].kind:
            out.append(rule)
        out.append(line(cells))
    return "\n".join(out)


def _cells(row: Row, names: tuple[str, ...], winner: str | None) -> list[str]:
    if row.kind == "member":
        coverage = f"reported {_pct(row.coverage['reported'])}"
    elif row.kind != "strategy":
        coverage = ""
    else:
        c = row.coverage
        coverage = "/".join(_pct(c[s], sign=False) for s in ("complete", "partial", "insufficient"))
    mark = " *" if row.name == winner and row.kind == "strategy" else ""
    return [
        row.name + mark,
        row.kind,
        f"{row.answered}/{row.requests}",
        coverage,
        *(_num(row.metrics.get(n, math.nan)) for n in names),
    ]


def _pct(v: float, sign: bool = True) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{100 * v:.1f}" + ("%" if sign else "")


def _num(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"
