"""The Kafka Streams contestant of the throughput benchmark (bench/streams/, modes
``streams-*`` of bench/throughput.py): how its process is spawned, the error when its jar
was not built, and that the Java application fuses with the benchmark's models, weights,
labels and the worker's join settings; no broker, no JVM."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from bench import kit, procs, throughput
from worker.config import DEFAULT_COMMIT_INTERVAL_MS, FusionConfig, JoinConfig

SOURCES = Path(__file__).resolve().parent.parent / "bench" / "streams" / "src" / "main" / "java"
JOIN = (SOURCES / "fusion" / "streams" / "FusionJoin.java").read_text()
APP = (SOURCES / "fusion" / "streams" / "FusionStreams.java").read_text()


def java_constant(name: str) -> str:
    """The initialiser of ``static final <type> <name> = <value>;`` in FusionJoin."""
    found = re.search(rf"static final [\w\[\]]+ {name} = (.+?);", JOIN)
    assert found, name
    return found.group(1)


def java_array(name: str) -> list[str]:
    """The items of a ``{a, b, c}`` array constant of FusionJoin, as written."""
    return [item.strip().strip('"') for item in java_constant(name).strip("{}").split(",")]


def test_streams_modes_are_not_make_benchs() -> None:
    """The default modes (what ``make bench`` runs) are unchanged: no JVM needed there."""
    assert not set(throughput.JVM_MODES) & set(throughput.MODES)


def test_streams_argv_at_least_once() -> None:
    """streams-at-least-once runs the jar with bootstrap, input, output, application id
    and Kafka Streams' ``at_least_once`` guarantee, in that order."""
    argv = throughput.streams_argv(
        "streams-at-least-once", Path("/x/app.jar"), "b:1", ["in"], "out", "grp"
    )
    assert argv == ["-jar", "/x/app.jar", "b:1", "in", "out", "grp", "at_least_once"]


def test_streams_argv_exactly_once_is_v2() -> None:
    """streams-exactly-once asks for ``exactly_once_v2``, the only exactly-once guarantee
    of Kafka Streams 4."""
    argv = throughput.streams_argv(
        "streams-exactly-once", Path("/x/app.jar"), "b:1", ["in"], "out", "grp"
    )
    assert argv[-1] == "exactly_once_v2"


def test_streams_argv_joins_input_topics() -> None:
    """Several input topics go to the application as one comma-separated argument."""
    argv = throughput.streams_argv(
        "streams-at-least-once", Path("/x/app.jar"), "b:1", ["a", "b"], "out", "grp"
    )
    assert argv[3] == "a,b"


def test_contestant_runs_java_on_the_jar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JVM mode's process is ``java -jar <jar> ...``, not the Python interpreter, with
    the run's consumer group as the application id."""
    jar = tmp_path / "fusion-streams.jar"
    jar.write_bytes(b"")
    monkeypatch.setattr(throughput, "STREAMS_JAR", jar)
    monkeypatch.setattr(throughput, "java", lambda: "/opt/jdk/bin/java")
    proc = throughput.contestant(
        "streams-exactly-once", "b:1", ["in"], "out", "dlq", "grp", tmp_path, 0
    )
    assert proc.argv[:3] == ["/opt/jdk/bin/java", "-jar", str(jar)]
    assert proc.argv[6] == "grp"


def test_missing_jar_names_the_make_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the jar, the error says which make target builds it."""
    monkeypatch.setattr(throughput, "STREAMS_JAR", tmp_path / "absent.jar")
    with pytest.raises(FileNotFoundError, match="make bench-jvm"):
        throughput.streams_jar()


def test_main_refuses_jvm_modes_without_the_jar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line stops before loading any event, with that error, when a JVM
    mode is asked for and the jar is not built."""
    monkeypatch.setattr(throughput, "STREAMS_JAR", tmp_path / "absent.jar")
    monkeypatch.setattr(sys, "argv", ["throughput", "--modes", "streams-at-least-once"])
    with pytest.raises(SystemExit) as stopped:
        throughput.main()
    assert stopped.value.code == 2
    assert "make bench-jvm" in capsys.readouterr().err


def test_changelog_topic_is_the_stores() -> None:
    """The topic deleted after a run is the changelog Kafka Streams names for the
    application's store: ``<application id>-<store>-changelog``."""
    store = java_constant("STORE").strip('"')
    assert throughput.changelog_topic("grp") == f"grp-{store}-changelog"


def test_process_prepends_python_by_default(tmp_path: Path) -> None:
    """A Process without a program runs this Python interpreter with its arguments."""
    proc = procs.Process(["-m", "bench.passthrough"], tmp_path / "log")
    assert proc.argv == [sys.executable, "-m", "bench.passthrough"]


def test_process_runs_the_program_given(tmp_path: Path) -> None:
    """A Process with a program runs that program with its arguments."""
    proc = procs.Process(["-jar", "app.jar"], tmp_path / "log", program="java")
    assert proc.argv == ["java", "-jar", "app.jar"]


def test_java_fuses_benchs_models_weights_and_labels() -> None:
    """The Java application's models, weights and labels are bench/kit.py's, in order."""
    assert tuple(java_array("MODELS")) == kit.MODELS
    assert tuple(float(w) for w in java_array("WEIGHTS")) == kit.WEIGHTS
    assert tuple(java_array("LABELS")) == kit.LABELS


def test_java_join_settings_are_the_workers_defaults() -> None:
    """Its join timeout, probability tolerance and memory of fused ids are the worker's
    defaults."""
    join = JoinConfig()
    assert int(java_constant("TIMEOUT_MS")) == join.timeout_ms
    assert float(java_constant("PROB_TOLERANCE")) == FusionConfig().prob_tolerance
    assert java_constant("FUSED_MEMORY_MS") == "5 * TIMEOUT_MS"
    assert 5 * join.timeout_ms == join.fused_memory_effective_ms
    assert int(java_constant("FUSED_MEMORY_COUNT").replace("_", "")) == join.fused_memory_count


def test_java_commit_intervals_are_the_workers() -> None:
    """Its commit interval is the worker's: 100 ms exactly-once, 1000 ms at-least-once."""
    found = re.search(r"EXACTLY_ONCE_V2\.equals\(guarantee\) \? (\d+) : (\d+)", APP)
    assert found
    exactly_once, at_least_once = (int(v) for v in found.groups())
    assert exactly_once == DEFAULT_COMMIT_INTERVAL_MS["exactly-once"]
    assert at_least_once == DEFAULT_COMMIT_INTERVAL_MS["at-least-once"]
