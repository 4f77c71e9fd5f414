"""TLS on a real broker: a private broker with an SSL listener whose certificate a test
CA signed (made here with the JDK's keytool); the worker trusting that CA fuses over
TLS, and a worker trusting another CA is refused at start with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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

STOREPASS = "test-store-pass"
# The broker's certificate names the address clients dial, so hostname checks pass.
SAN = "SAN=IP:127.0.0.1,DNS:localhost"


def keytool(*args: str) -> None:
    done = subprocess.run(["keytool", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"keytool {' '.join(args[:1])} failed:\n{done.stdout}{done.stderr}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (its PKCS12 keystore, its certificate as PEM)."""
    store, pem = directory / f"{name}.p12", directory / f"{name}.pem"
    common = ["-keystore", str(store), "-storetype", "PKCS12", "-storepass", STOREPASS]
    keytool(
        "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", f"CN={name}", "-ext", "bc:c", "-validity", "2", *common,
    )  # fmt: skip
    keytool("-exportcert", "-rfc", "-alias", "ca", "-file", str(pem), *common)
    return store, pem


def make_broker_keystore(directory: Path, ca_store: Path, ca_pem: Path) -> Path:
    """The broker's PKCS12 keystore: its key and a certificate signed by the CA, with
    the CA in the chain."""
    store = directory / "broker.p12"
    csr, signed = directory / "broker.csr", directory / "broker.pem"
    common = ["-keystore", str(store), "-storetype", "PKCS12", "-storepass", STOREPASS]
    keytool(
        "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
        "-dname", "CN=127.0.0.1", "-ext", SAN, "-validity", "2", *common,
    )  # fmt: skip
    keytool("-certreq", "-alias", "broker", "-file", str(csr), *common)
    keytool(
        "-gencert", "-alias", "ca", "-keystore", str(ca_store), "-storepass", STOREPASS,
        "-infile", str(csr), "-outfile", str(signed), "-rfc", "-ext", SAN, "-validity", "2",
    )  # fmt: skip
    keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem), *common)
    keytool("-importcert", "-noprompt", "-alias", "broker", "-file", str(signed), *common)
    return store


@dataclass(frozen=True)
class Certificates:
    ca_pem: Path  # the CA that signed the broker's certificate
    other_ca_pem: Path  # a CA that did not
    broker_keystore: Path


class TlsBroker(PrivateBroker):
    """A private broker with an extra SSL listener (plaintext stays for the admin)."""

    def __init__(self, certs: Certificates) -> None:
        self.certs = certs
        super().__init__()

    def _pick_ports(self) -> None:
        # Also on a retried start (``start``): new ports for every listener.
        super()._pick_ports()
        self.ssl_port = self.other_port()
        self.env.update(
            {
                "KAFKA_SSL_PORT": str(self.ssl_port),
                "KAFKA_SSL_KEYSTORE": str(self.certs.broker_keystore),
                "KAFKA_SSL_KEYSTORE_PASSWORD": STOREPASS,
            }
        )
        self.ssl_bootstrap = f"127.0.0.1:{self.ssl_port}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca_store, ca_pem = make_ca(directory, "fusion-test-ca")
    _, other_pem = make_ca(directory, "some-other-ca")
    return Certificates(ca_pem, other_pem, make_broker_keystore(directory, ca_store, ca_pem))


@pytest.fixture(scope="module")
def tls_broker(certs: Certificates) -> Iterator[TlsBroker]:
    broker = TlsBroker(certs)
    broker.start()
    try:
        yield broker
    finally:
        broker.run("reset")


def tls_config(tmp_path: Path, broker: TlsBroker, name: str, cafile: Path) -> Path:
    return write_config(
        tmp_path / f"{name}.toml",
        bootstrap=broker.ssl_bootstrap,
        inputs=[f"{name}-in"],
        output=f"{name}-out",
        dlq=f"{name}-dlq",
        group=f"{name}-group",
        metrics_port=free_port(),
        kafka={"security_protocol": "SSL", "ssl_cafile": str(cafile)},
    )


async def test_worker_trusting_the_ca_fuses_over_tls(
    tls_broker: TlsBroker, certs: Certificates, tmp_path: Path
) -> None:
    """With ssl_cafile the CA of the broker's certificate, the worker connects over TLS
    (security_protocol SSL) and fuses every request."""
    await create_topics_on(tls_broker.bootstrap, ["ok-in", "ok-out", "ok-dlq"], 2)
    cfg = tls_config(tmp_path, tls_broker, "ok", certs.ca_pem)
    log = tmp_path / "ok.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run", "--config", str(cfg)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        await produce_json(tls_broker.bootstrap, "ok-in", make_events(200, seed=31))
        results = decode_values(await consume(tls_broker.bootstrap, "ok-out", 200, timeout_s=60))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(count_ids(results)) == 200, log.read_text(errors="replace")[-3000:]
    assert {r["status"] for r in results} == {"complete"}


@pytest.mark.parametrize("command", ["run", "check"])
async def test_wrong_ca_is_refused_at_start_with_a_clear_message(
    tls_broker: TlsBroker, certs: Certificates, tmp_path: Path, command: str
) -> None:
    """With ssl_cafile a CA that did not sign the broker's certificate, `run` and
    `check` exit non-zero at start, saying the certificate could not be verified, and
    nothing is fused."""
    name = f"bad{command}"
    await create_topics_on(tls_broker.bootstrap, [f"{name}-in", f"{name}-out", f"{name}-dlq"], 1)
    await produce_json(tls_broker.bootstrap, f"{name}-in", make_events(5, seed=32))
    cfg = tls_config(tmp_path, tls_broker, name, certs.other_ca_pem)

    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", command, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode != 0, done.stdout + done.stderr
    message = done.stderr.lower()
    assert "certificate" in message, done.stderr
    assert "verif" in message, done.stderr
    assert tls_broker.ssl_bootstrap in done.stderr
    assert await consume(tls_broker.bootstrap, f"{name}-out", 1, timeout_s=3) == []
