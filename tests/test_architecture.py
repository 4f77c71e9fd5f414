"""The layering, read from the source with ast: the pure core (decode, join, fusion, the
engine step) imports no Kafka, no asyncio, no clock and nothing of the runtime; the
runtime modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent.parent / "worker"
CORE = [
    WORKER / "decode.py",
    WORKER / "decode_checks.py",
    WORKER / "decode_codes.py",
    WORKER / "join.py",
    WORKER / "join_pending.py",
    WORKER / "join_state.py",
    WORKER / "engine.py",
    WORKER / "engine_labels.py",
    WORKER / "records.py",
    WORKER / "events.py",
    WORKER / "state_deps.py",
    WORKER / "tracecontext.py",
    WORKER / "labels.py",
    WORKER / "learning.py",
    *sorted((WORKER / "fusion").glob("*.py")),
]
FORBIDDEN = ("aiokafka", "asyncio", "time", "worker.runtime", "datetime")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def offends(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(WORKER)))
def test_the_pure_core_imports_no_kafka_no_clock_no_runtime(path: Path) -> None:
    """A core module imports none of aiokafka, asyncio, time, datetime, worker.runtime."""
    bad = sorted(m for m in imports(path) if offends(m))
    assert not bad, f"{path.name} imports {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself can fail: a module importing the clock is caught."""
    src = tmp_path / "m.py"
    src.write_text("import time\nfrom worker.runtime.sink import Sink\n")
    assert sorted(m for m in imports(src) if offends(m)) == [
        "time",
        "worker.runtime.sink",
        "worker.runtime.sink.Sink",
    ]


def runtime_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in (WORKER / "runtime").glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for m in imports(path):
            parts = m.split(".")
            if parts[:2] == ["worker", "runtime"] and len(parts) > 2 and parts[2] in modules:
                deps.add(parts[2])
        graph[name] = deps - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_runtime_modules_import_each_other_without_a_cycle() -> None:
    """No two runtime modules need each other (directly or through others)."""
    assert cycle(runtime_graph()) is None


def test_the_cycle_check_can_fail() -> None:
    """The detector finds a two-module cycle."""
    assert cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
