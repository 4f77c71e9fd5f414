"""Backtesting: score member models and fusion strategies on labelled history.

``run_backtest`` is the body of `fusion-worker backtest`; the modules below it hold the
inputs (``inputs``), the time split (``split``), the metrics (``metrics``), the scoring
(``evaluate``), the terminal table (``table``) and the HTML report (``report``, which
needs the ``fusion-worker[report]`` extra).
"""

from __future__ import annotations

from worker.backtest.evaluate import Evaluation, Row, evaluate
from worker.backtest.run import pick_winner, run_backtest
from worker.backtest.split import TimeSplit, time_split

__all__ = [
    "Evaluation",
    "Row",
    "TimeSplit",
    "evaluate",
    "pick_winner",
    "run_backtest",
    "time_split",
]
