"""SASL on a real broker: SCRAM and PLAIN users; the right credentials fuse, a wrong
password stops the worker at start with a clear message, and no log shows a password."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    PrivateBroker,
    count_ids,
    create_topics_on,
    free_port,
    make_events,
    write_config,
)
from tests.kafka_fixtures import consume, decode_values, produce_json

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

USER = "fusion"
PASSWORD = "s3cr3t-Pa55-7f2c"


class SaslBroker(PrivateBroker):
    """A private broker with an extra SASL_PLAINTEXT listener and a SCRAM/PLAIN user."""

    def _pick_ports(self) -> None:
        # Also on a retried start (``start``): new ports for every listener.
        super()._pick_ports()
        self.sasl_port = self.other_port()
        self.env.update(
            {"KAFKA_SASL_PORT": str(self.sasl_port), "KAFKA_SCRAM_USERS": f"{USER}:{PASSWORD}"}
        )
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[SaslBroker]:
    broker = SaslBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.run("reset")


def sasl_config(
    tmp_path: Path, broker: SaslBroker, mechanism: str, name: str, **kafka: str
) -> tuple[Path, int]:
    port = free_port()
    cfg = write_config(
        tmp_path / f"{name}.toml",
        bootstrap=broker.sasl_bootstrap,
        inputs=[f"{name}-in"],
        output=f"{name}-out",
        dlq=f"{name}-dlq",
        group=f"{name}-group",
        metrics_port=port,
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": USER,
            **kafka,
        },
    )
    with cfg.open("a") as fh:
        fh.write('[log]\nlevel = "DEBUG"\n')
    return cfg, port


def run_worker(
    cfg: Path, env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--config", str(cfg)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_right_credentials_fuse_and_never_log_the_password(
    sasl_broker: SaslBroker, tmp_path: Path, mechanism: str
) -> None:
    """With the right password (from the environment) the worker fuses over SASL, and
    its DEBUG log does not contain the password."""
    name = mechanism.lower().replace("-", "")
    await create_topics_on(sasl_broker.bootstrap, [f"{name}-in", f"{name}-out", f"{name}-dlq"], 2)
    cfg, _ = sasl_config(tmp_path, sasl_broker, mechanism, name)
    env = {**os.environ, "FUSION_KAFKA__SASL_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run", "--config", str(cfg)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        await produce_json(sasl_broker.bootstrap, f"{name}-in", make_events(100, seed=21))
        results = decode_values(
            await consume(sasl_broker.bootstrap, f"{name}-out", 100, timeout_s=60)
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert len(count_ids(results)) == 100, text[-3000:]
    assert PASSWORD not in text


async def test_password_from_a_file(sasl_broker: SaslBroker, tmp_path: Path) -> None:
    """kafka.sasl_password_file works as well as the environment variable."""
    await create_topics_on(sasl_broker.bootstrap, ["file-in", "file-out", "file-dlq"], 1)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    cfg, _ = sasl_config(
        tmp_path, sasl_broker, "SCRAM-SHA-256", "file", sasl_password_file=str(secret)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await produce_json(sasl_broker.bootstrap, "file-in", make_events(20, seed=22))
        results = await consume(sasl_broker.bootstrap, "file-out", 20, timeout_s=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(results) == 20


async def test_wrong_password_stops_at_start_and_consumes_nothing(
    sasl_broker: SaslBroker, tmp_path: Path
) -> None:
    """A wrong password: the worker exits non-zero at start with a message naming the
    user and mechanism (not the password), and nothing is consumed or produced."""
    await create_topics_on(sasl_broker.bootstrap, ["bad-in", "bad-out", "bad-dlq"], 1)
    await produce_json(sasl_broker.bootstrap, "bad-in", make_events(5, seed=23))
    cfg, _ = sasl_config(tmp_path, sasl_broker, "SCRAM-SHA-256", "bad")
    wrong = "not-the-" + PASSWORD

    done = run_worker(cfg, {"FUSION_KAFKA__SASL_PASSWORD": wrong}, timeout_s=60)

    assert done.returncode != 0
    assert "authentication" in done.stderr.lower()
    assert repr(USER) in done.stderr
    assert wrong not in done.stderr + done.stdout
    assert await consume(sasl_broker.bootstrap, "bad-out", 1, timeout_s=3) == []
