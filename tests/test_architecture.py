"""The layering, read from the source with ast: the pure core (decode, join, fusion, the
engine step) imports no Kafka, no asyncio, no clock and nothing of the runtime; the
runtime modules import each other without a cycle; no module grows past about 400 lines."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent.parent / "worker"
CORE = [
    WORKER / "decode.py",
    WORKER / "decode_checks.py",
    WORKER / "decode_codes.py",
    WORKER / "decode_wire.py",
    WORKER / "join.py",
    WORKER / "join_pending.py",
    WORKER / "join_deadlines.py",
    WORKER / "join_fused.py",
    WORKER / "join_offsets.py",
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


def runtime_classes() -> list[tuple[str, ast.ClassDef]]:
    """Every class of worker/runtime, with its module's name."""
    out = []
    for path in sorted((WORKER / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef):
                out.append((path.stem, node))
    return out


def base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}


def test_no_runtime_class_subclasses_the_loop() -> None:
    """Delivery modes are composed into the loop, never subclasses of it (or of a
    delivery mode)."""
    loops = {n.name for m, n in runtime_classes() if m == "loop"}
    assert "Loop" in loops
    modes = {"AtLeastOnce", "ExactlyOnce", "Loop"}
    offenders = [f"{m}.{n.name}" for m, n in runtime_classes() if base_names(n) & (loops | modes)]
    assert offenders == []


def test_the_subclass_check_can_fail() -> None:
    """A class deriving from the loop is seen as one."""
    (node,) = [
        n for n in ast.walk(ast.parse("class X(loop.Loop): pass")) if isinstance(n, ast.ClassDef)
    ]
    assert base_names(node) == {"Loop"}


MAX_MODULE_LINES = 410
# Modules allowed over the cap, by path under worker/: none now.
MODULE_LINE_CAPS: dict[str, int] = {}
MAX_METHODS = 25


def long_modules(root: Path, caps: Mapping[str, int]) -> dict[str, int]:
    """Every module under ``root`` (at any depth) longer than its cap: ``caps`` by its
    path relative to ``root``, else MAX_MODULE_LINES."""
    return {
        name: n
        for p in sorted(root.rglob("*.py"))
        if (n := len(p.read_text("utf-8").splitlines()))
        > caps.get(name := p.relative_to(root).as_posix(), MAX_MODULE_LINES)
    }


def test_modules_and_runtime_classes_stay_small() -> None:
    """No module of the package over about 400 lines, no runtime class over 25 methods."""
    big = {
        f"{m}.{c.name}": n
        for m, c in runtime_classes()
        if (n := sum(isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for f in c.body))
        > MAX_METHODS
    }
    assert long_modules(WORKER, MODULE_LINE_CAPS) == {}
    assert big == {}


def test_the_size_check_can_fail(tmp_path: Path) -> None:
    """A module one line over the cap is found at any depth, and so is one over its own
    cap; a module at its cap is not."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "capped.py").write_text("x = 1\n" * 421)
    (tmp_path / "at_cap.py").write_text("x = 1\n" * 420)
    caps = {"capped.py": 420, "at_cap.py": 420}
    assert long_modules(tmp_path, caps) == {"sub/long.py": MAX_MODULE_LINES + 1, "capped.py": 421}
