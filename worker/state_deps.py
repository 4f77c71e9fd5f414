"""What a pending request's saved state depends on, and how a restore under a changed
configuration adapts it (issue #14 part 4). Pure: no Kafka, no I/O.

Each state in the exactly-once changelog carries ``deps``: the label order, the model
names, the strategy and the task it was written under (``describe``). On restore,
``realign`` compares them with the configuration in force:

- the same: the state as it is;
- labels reordered or added: each member's ``probs`` (and ``label`` index) is moved to
  the new order by label name, an added label getting probability 0 (the member did
  not predict it);
- a model removed: its member is dropped (a request left with no member is dropped);
  a model added: the request waits for it like any missing member;
- another strategy for the same task: the state holds only the members' predictions,
  so it is restored as it is and fused with the new strategy;
- a label removed, or another task: the state cannot be read. ``StateMismatch`` (a
  ``ConfigError``: the worker exits with code 2, it does not restart into the same
  failure) names what changed. The committed offsets lie past the events of the saved
  requests, so dropping the state would lose them: the operator restores the previous
  configuration (or deletes the changelog, accepting that loss).

A state without ``deps`` (written before they were recorded) is taken as written under
the configuration in force, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.config import Config
from worker.errors import ConfigError
from worker.fusion import registry

Deps = dict[str, Any]


class StateMismatch(ConfigError):
    """The pending state was written under a configuration it cannot be realigned to."""


def describe(config: Config) -> Deps:
    """The dependencies of a state written under ``config``."""
    labels = list(config.fusion.labels)
    return {
        "labels": labels,
        "models": list(config.model_names),
        "strategy": config.fusion.strategy,
        "task": registry.task_of(labels),
    }


def realign(state: dict[str, Any], current: Deps) -> dict[str, Any] | None:
    """``state`` (``JoinTable.pending_state`` output) adapted to ``current``; None when
    no member is left. Raises ``StateMismatch`` when it cannot be adapted."""
    saved = state.get("deps")
    if saved is None or saved == current:
        return state
    rid = state.get("request_id")
    if saved.get("task") != current["task"]:
        raise StateMismatch(
            "fusion.labels",
            current["labels"],
            f"the pending state of request {rid!r} was saved for task {saved.get('task')!r} "
            f"(labels {saved.get('labels')}), the configuration is for "
            f"{current['task']!r}; restore the previous [fusion] labels",
        )
    old_labels: Sequence[str] = saved.get("labels") or []
    new_labels: Sequence[str] = current["labels"]
    removed = [name for name in old_labels if name not in new_labels]
    if removed:
        raise StateMismatch(
            "fusion.labels",
            list(new_labels),
            f"labels {removed} of the saved pending state (request {rid!r}, labels "
            f"{list(old_labels)}) are no longer configured; its members' probabilities "
            "cannot be realigned: put them back",
        )
    where = [list(new_labels).index(name) for name in old_labels]
    members: dict[str, Any] = {}
    for model, fields in state["members"].items():
        if model not in current["models"]:
            continue  # a model removed: its member goes
        members[model] = _realign_member(fields, where, len(new_labels))
    if not members:
        return None
    return {**state, "members": members, "deps": current}


def _realign_member(fields: dict[str, Any], where: list[int], n: int) -> dict[str, Any]:
    """One member's fields with ``probs`` and ``label`` moved to the new label order:
    the old label i is the new label ``where[i]``."""
    out = dict(fields)
    if "probs" in fields:
        probs = [0.0] * n
        for i, p in enumerate(fields["probs"]):
            probs[where[i]] = p
        out["probs"] = probs
    elif "label" in fields:
        out["label"] = where[int(fields["label"])]
    return out


def describe_change(saved: Deps, current: Deps) -> str:
    """What differs between two descriptors, for a log line."""
    parts = [
        f"{key} {saved.get(key)!r} -> {current[key]!r}"
        for key in ("labels", "models", "strategy", "task")
        if saved.get(key) != current[key]
    ]
    return "; ".join(parts) or "nothing"
