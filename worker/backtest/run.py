"""`fusion-worker backtest`: fuse labelled history with every strategy in one pass, score
members and strategies, print the table, optionally write the HTML report.

With ``fit``: a time-ordered split (worker.backtest.split) trains the stacker, the
learned weights and the member temperatures on the earlier requests (through
worker.fusion.fit) and evaluates everything on the later ones, each strategy with and
without calibration (a configured calibration_file is then not used, as a configured
stacker is not); the winner (lowest log loss, ties by accuracy; for scores lowest
RMSE, ties by MAE; for texts highest chrF, ties by WER) is named with the config lines
that select it.

The text task (``[fusion] task = "text"``): the labels carry the reference texts
(``{"request_id", "text"}``), the table shows exact match, chrF and WER per member and
per strategy and the average member (``worker.backtest.text_evaluate``), and the verdict
says on which metrics the winner beats the average and the best member. ``--fit`` and
``--bootstrap`` are classification and regression tools and refuse text.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.backtest.compare import Comparison, paired_bootstrap
from worker.backtest.evaluate import Evaluation, Row, evaluate
from worker.backtest.fitting import (
    CALIBRATED,
    Variant,
    fitted_variants,
    split_records,
    uncalibrated,
)
from worker.backtest.inputs import (
    Label,
    first_times,
    load_labels,
    load_predictions,
)
from worker.backtest.split import DEFAULT_TRAIN_SHARE, TimeSplit, time_split
from worker.backtest.table import format_table
from worker.config import Config
from worker.engine import InRecord
from worker.errors import ConfigError
from worker.events import FinishedRequest
from worker.fusion import Fuser, registry
from worker.offline import labels_by_partition, read_labels
from worker.replay import Record, replay_results

log = logging.getLogger(__name__)


class _Collect:
    """Fuses each finished batch with every variant and keeps the results per variant;
    the join runs once for all of them."""

    def __init__(self, variants: Sequence[Variant]) -> None:
        self.fusers = [(v.name, Fuser(v.config, strategy=v.strategy)) for v in variants]
        self.results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}

    def fuse(self, finished: list[FinishedRequest]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name, fuser in self.fusers:
            results = fuser.fuse(finished)
            self.results[name].extend(results)
            out.extend(results)
        return out


def default_strategies(config: Config) -> list[str]:
    """Every strategy valid for the config's task but those that need a fitted stacker."""
    return list(
        registry.names(registry.task_of(config.fusion.labels, config.fusion.task), stacker=False)
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What a backtest found: the scores, the winner, the variants it ran and the
    lines printed under the table."""

    evaluation: Evaluation
    winner: Row | None
    variants: list[Variant]
    split: TimeSplit | None
    comparison: Comparison | None
    lines: list[str]

    @property
    def table(self) -> str:
        return format_table(self.evaluation, self.winner.name if self.winner else None)


def backtest(
    config: Config,
    records: list[Record],
    truth: dict[str, Label],
    strategies: Sequence[str] | None = None,
    fit: bool = False,
    train_share: float = DEFAULT_TRAIN_SHARE,
    fit_dir: Path = Path("backtest-fit"),
    bootstrap: int = 0,
    label_events: Sequence[InRecord] | None = None,
) -> Outcome:
    """Fuse ``records`` with every strategy in one pass and score them on ``truth``.

    With ``fit``: split by time, fit on the earlier requests (artefacts into
    ``fit_dir``), fuse and score the later ones only. ``bootstrap``: resamples of the
    paired comparison of the winner with the best member (0: none).

    ``label_events`` (``[fusion] weights = "adaptive"``, label lines with ts): one more
    variant, ``<strategy>+adaptive``, fused by a second pass that learns from them on
    event time, per partition number, as ``replay --labels`` does.
    """
    names = _strategies(config, strategies, fit)
    if bootstrap > 0 and config.fusion.is_text:
        raise ConfigError("--bootstrap", bootstrap, "the paired bootstrap needs labels or scores")
    lines: list[str] = []
    split: TimeSplit | None = None
    fitted: list[Variant] = []
    if fit:
        split = time_split(first_times(config, records), train_share)
        train, records = split_records(config, records, split)
        fitted = fitted_variants(config, train, truth, split, fit_dir, names)
        lines.append(
            f"time split: {len(split.train)} earlier requests trained the stacker, the "
            f"learned weights and the temperatures; the {len(split.test)} requests from "
            f"{_when(split.cut_ts)} on are evaluated"
        )
        # The fitted calibration is compared with none (a configured one is not used).
        config = uncalibrated(config)
    variants = [Variant(s, s, config) for s in names] + fitted
    collect = _Collect(variants)
    for _ in replay_results(config, records, collect):
        pass
    if label_events:
        name = f"{config.fusion.strategy}+adaptive"
        partitions = max((r[0] for r in records), default=0) + 1
        by_partition = labels_by_partition(label_events, partitions)
        collect.results[name] = list(replay_results(config, records, Fuser(config), by_partition))
        variants.append(Variant(name, config.fusion.strategy, config))
    if split is not None:
        # Train labels are no concern of the evaluation (not "labels without a result").
        truth = {rid: y for rid, y in truth.items() if rid in split.test}
    ev = evaluate(config, collect.results, truth)
    winner = pick_winner(ev)
    best = best_member(ev)
    comparison = None
    if winner is not None and best is not None and bootstrap > 0:
        comparison = paired_bootstrap(winner, best, ev.task, bootstrap)
    lines += _verdict(ev, winner, best)
    lines += _calibration_lines(ev)
    if comparison is not None and winner is not None and best is not None:
        lines.append(comparison.describe(winner.name, best.name))
    lines += _config_lines(winner, variants)
    return Outcome(ev, winner, variants, split, comparison, lines)


def run_backtest(
    config: Config,
    predictions: str,
    labels: str,
    strategies: Sequence[str] | None = None,
    report: Path | None = None,
    fit: bool = False,
    train_share: float = DEFAULT_TRAIN_SHARE,
    fit_dir: Path | None = None,
    bootstrap: int = 0,
    progress: bool | None = None,
) -> int:
    """The body of `fusion-worker backtest`: prints the table and the verdict, writes the
    report; returns the exit code.

    ``predictions``/``labels``: a JSON Lines path or ``TOPIC@FROM..TO``. ``fit_dir``:
    where fitted artefacts go (default: the report directory, else ``./backtest-fit``).
    """
    if report is not None:
        from worker.backtest.report import check_available

        check_available()  # fail before the work, not after it
    _strategies(config, strategies, fit)  # a bad --strategy fails before any reading
    records = load_predictions(config, predictions, progress)
    truth = load_labels(config, labels)
    label_events = _label_events(config, labels)
    outcome = backtest(
        config,
        records,
        truth,
        strategies,
        fit,
        train_share,
        fit_dir or report or Path("backtest-fit"),
        bootstrap,
        label_events,
    )
    ev = outcome.evaluation
    lines = [
        f"predictions: {predictions} ({len(records)} records); labels: {labels} "
        f"({len(truth)}); {ev.requests} labelled requests scored, {ev.unlabelled} results "
        f"without a label, {ev.unseen} labels without a result",
        *outcome.lines,
    ]
    table = outcome.table
    print(table)
    print()
    print("\n".join(lines))
    if report is not None:
        from worker.backtest.report import write_report

        winner = outcome.winner.name if outcome.winner else None
        page = write_report(ev, report, table, lines, winner)
        print(f"report: {page}")
    return 0


def _label_events(config: Config, labels: str) -> list[InRecord] | None:
    """With adaptive weights and a labels file: its lines as label events (ts needed)."""
    if config.fusion.weights != "adaptive":
        return None
    path = Path(labels)
    if not path.is_file():
        log.warning("adaptive weights are backtested from a labels file only, not %s", labels)
        return None
    with path.open("rb") as fh:
        return read_labels(fh)


def _strategies(config: Config, strategies: Sequence[str] | None, fit: bool) -> list[str]:
    names = list(strategies) if strategies else default_strategies(config)
    task = registry.task_of(config.fusion.labels, config.fusion.task)
    if task == "text" and fit:
        raise ConfigError("--fit", True, "fitting needs a classification config (fusion.labels)")
    for name in names:
        registry.lookup(name, task, key="--strategy")
    if len(set(names)) != len(names):
        raise ConfigError("--strategy", ",".join(names), "lists a strategy twice")
    if "stacking" in names:
        if fit:
            # --fit trains its own stacker; the configured one (if any) is not compared.
            names.remove("stacking")
        elif not config.fusion.stacker:
            raise ConfigError("--strategy", "stacking", "needs fusion.stacker or --fit")
    elif not strategies and config.fusion.stacker and not fit:
        names.append("stacking")
    return names


def _when(ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return f"ts {ts_ms} ({when.replace('+00:00', 'Z')})"


def _key(row: Row, task: str) -> tuple[float, float]:
    if task == "classification":
        primary, second = row.metrics["log_loss"], -row.metrics["accuracy"]
    elif task == "text":
        primary, second = -row.metrics["chrf"], row.metrics["wer"]
    else:
        primary, second = row.metrics["rmse"], row.metrics["mae"]
    return (
        math.inf if math.isnan(primary) else primary,
        math.inf if math.isnan(second) else second,
    )


def pick_winner(ev: Evaluation) -> Row | None:
    """The best strategy: lowest log loss, ties by higher accuracy (scores: lowest RMSE,
    ties by MAE; texts: highest chrF, ties by lower WER), then by name; None when no
    strategy answered anything."""
    rows = [r for r in ev.strategies if r.answered]
    if not rows:
        return None
    return min(rows, key=lambda r: (*_key(r, ev.task), r.name))


def best_member(ev: Evaluation) -> Row | None:
    """The best member by the winner's ranking (None when no member answered)."""
    members = [r for r in ev.members if r.answered]
    if not members:
        return None
    return min(members, key=lambda r: (*_key(r, ev.task), r.name))


def _verdict(ev: Evaluation, winner: Row | None, best: Row | None) -> list[str]:
    if winner is None:
        return ["no strategy produced a prediction"]
    if ev.task == "text":
        return _text_verdict(ev, winner, best)
    metric = "log_loss" if ev.task == "classification" else "rmse"
    lines = [f"winner: {winner.name} ({metric} {winner.metrics[metric]:.4f})"]
    if best is not None:
        beats = _key(winner, ev.task) < _key(best, ev.task)
        lines.append(
            f"best single member: {best.name} ({metric} {best.metrics[metric]:.4f}); "
            f"fusion {'beats' if beats else 'does not beat'} it"
        )
    return lines


# The text verdict's metrics: (key, name, True when higher is better).
_TEXT_VERDICT = (
    ("chrf", "chrF", True),
    ("wer", "WER", False),
    ("exact_match", "exact match", True),
)


def _text_verdict(ev: Evaluation, winner: Row, best: Row | None) -> list[str]:
    """The winner against the average and the best member, metric by metric."""
    lines = [f"winner: {winner.name} (chrF {winner.metrics['chrf']:.4f})"]
    average = next((r for r in ev.rows if r.kind == "summary"), None)
    for other in (average, best):
        if other is None:
            continue
        better = [
            name
            for key, name, higher in _TEXT_VERDICT
            if (winner.metrics[key] > other.metrics[key]) == higher
            and winner.metrics[key] != other.metrics[key]
        ]
        worse = [name for _, name, _ in _TEXT_VERDICT if name not in better]
        who = "the average member" if other is average else f"the best single member, {other.name}"
        figures = ", ".join(f"{name} {other.metrics[key]:.4f}" for key, name, _ in _TEXT_VERDICT)
        lines.append(
            f"{who} ({figures}): {winner.name} beats it on {', '.join(better) or 'nothing'}"
            + (f", not on {', '.join(worse)}" if worse and better else "")
        )
    return lines


def _config_lines(winner: Row | None, variants: Sequence[Variant]) -> list[str]:
    """The [fusion] lines that select the winner."""
    if winner is None:
        return []
    variant = next(v for v in variants if v.name == winner.name)
    lines = ["config to select it:", "[fusion]", f'strategy = "{variant.strategy}"']
    if variant.strategy == "stacking":
        lines.append(f'stacker = "{variant.config.fusion.stacker}"')
    if variant.config.fusion.weights_file:
        lines.append(f'weights_file = "{variant.config.fusion.weights_file}"')
    if variant.config.fusion.calibration_file:
        lines.append(f'calibration_file = "{variant.config.fusion.calibration_file}"')
    return lines


def _calibration_lines(ev: Evaluation) -> list[str]:
    """Each calibrated row against its uncalibrated twin: log loss and accuracy (scores
    from the table; nothing when calibration was not fitted)."""
    rows = {r.name: r for r in ev.strategies if r.answered}
    pairs = [
        (rows[name.removesuffix(CALIBRATED)], row)
        for name, row in rows.items()
        if name.endswith(CALIBRATED) and name.removesuffix(CALIBRATED) in rows
    ]
    if not pairs:
        return []
    lines = ["calibration (temperatures fitted on the earlier requests), raw -> calibrated:"]
    for raw, cal in pairs:
        lines.append(
            f"  {raw.name}: log_loss {raw.metrics['log_loss']:.4f} -> "
            f"{cal.metrics['log_loss']:.4f}, accuracy {raw.metrics['accuracy']:.4f} -> "
            f"{cal.metrics['accuracy']:.4f}"
        )
    return lines
