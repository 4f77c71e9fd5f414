"""Connection settings shared by every Kafka client the worker opens (security, ids)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import IllegalOperation, KafkaError
from aiokafka.helpers import create_ssl_context

from worker.config import KafkaConfig, sasl_password
from worker.errors import KafkaSetupError
from worker.runtime.produce_encoding import install as install_produce_encoding

# A transactional producer's retry backoff, at most (the Java producer's default). Its
# transaction requests and produce requests meet retriable refusals in the normal course:
# against Kafka 4, a produce answered NOT_ENOUGH_REPLICAS and a TxnOffsetCommit answered
# COORDINATOR_NOT_AVAILABLE, a few times a minute on a steady stream (docs/benchmarks.md).
# aiokafka retries each after the backoff, and the commit, which the results wait for to
# become readable, waits with it: half a second at the worker's 500 ms.
TXN_RETRY_BACKOFF_MS = 100


def client_options(cfg: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer/Producer/AdminClient: bootstrap and security.

    The password is read here, at the edge, and never stored anywhere it could be logged.
    """
    opts: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "security_protocol": cfg.security_protocol,
        "request_timeout_ms": cfg.request_timeout_ms,
        "retry_backoff_ms": cfg.retry_backoff_ms,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = create_ssl_context(
            cafile=cfg.ssl_cafile or None,
            certfile=cfg.ssl_certfile or None,
            keyfile=cfg.ssl_keyfile or None,
        )
    if cfg.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = cfg.sasl_mechanism
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = sasl_password(cfg)
    return opts


def producer_options(
    cfg: KafkaConfig, transactional_id: str | None = None, client_id: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for every AIOKafkaProducer the worker opens: idempotent, acks
    from all replicas, batches as large as the sink fills them; with ``transactional_id``
    a transactional producer (exactly-once, one per input partition number), retrying
    after at most ``TXN_RETRY_BACKOFF_MS``.

    Every producer the worker opens is configured here, so this is also where their
    produce requests get the flat encoding (``produce_encoding``; once per process)."""
    install_produce_encoding()
    opts: dict[str, Any] = {
        "client_id": client_id or cfg.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        # A dead letter carries its whole input value (up to max_event_bytes).
        "max_request_size": max(4 * 1024 * 1024, cfg.max_event_bytes + 64 * 1024),
        **client_options(cfg),
    }
    if transactional_id is not None:
        opts["transactional_id"] = transactional_id
        opts["transaction_timeout_ms"] = cfg.transaction_timeout_ms
        opts["retry_backoff_ms"] = min(cfg.retry_backoff_ms, TXN_RETRY_BACKOFF_MS)
    return opts


@contextlib.asynccontextmanager
async def admin_client(cfg: KafkaConfig, client_id: str | None = None) -> AsyncIterator[Any]:
    """A started AIOKafkaAdminClient, closed on the way out."""
    admin = AIOKafkaAdminClient(client_id=client_id or cfg.client_id, **client_options(cfg))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def probe_credentials(cfg: KafkaConfig) -> None:
    """Fail fast on bad credentials: the clients report an authentication failure only
    as "unable to bootstrap", which looks like an outage and would be retried forever.

    Connects to the first bootstrap server that answers; an unreachable server is an
    outage (the caller retries), a refused login raises KafkaSetupError at once. So does
    a failed TLS handshake (a broker certificate that ``ssl_cafile`` does not verify),
    which the clients would otherwise also retry forever.
    """
    if cfg.security_protocol == "PLAINTEXT":
        return
    opts = client_options(cfg)
    for server in cfg.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await create_conn(
                host.strip("[]"),
                int(port),
                client_id=cfg.client_id,
                request_timeout_ms=cfg.request_timeout_ms,
                ssl_context=opts.get("ssl_context"),
                security_protocol=cfg.security_protocol,
                sasl_mechanism=cfg.sasl_mechanism or None,
                sasl_plain_username=cfg.sasl_username or None,
                sasl_plain_password=opts.get("sasl_plain_password"),
            )
        except ssl.SSLError as exc:
            # Before OSError: SSLError is one, but a handshake refusal is no outage.
            raise KafkaSetupError(_tls_failure(server.strip(), cfg, exc)) from None
        except KafkaError as exc:
            if "Authentication" in type(exc).__name__ or "Sasl" in type(exc).__name__:
                raise KafkaSetupError(
                    f"authentication to {server.strip()} failed for user {cfg.sasl_username!r} "
                    f"with {cfg.sasl_mechanism}: {exc}; check the username and the password "
                    "(FUSION_KAFKA__SASL_PASSWORD or kafka.sasl_password_file)"
                ) from None
            continue
        except (TimeoutError, OSError):
            continue
        with contextlib.suppress(Exception):
            conn.close()
        return


def _tls_failure(server: str, cfg: KafkaConfig, exc: ssl.SSLError) -> str:
    trusted = f"kafka.ssl_cafile = {cfg.ssl_cafile!r}" if cfg.ssl_cafile else "the system CAs"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS handshake with {server} failed: the broker's certificate could not be "
            f"verified ({exc.verify_message}) against {trusted}; point kafka.ssl_cafile at "
            "the CA that signed the broker's certificate"
        )
    return (
        f"TLS handshake with {server} failed: {exc.reason or exc}; check that the address "
        f"is the broker's {cfg.security_protocol} listener and the kafka.ssl_* settings"
    )


async def start_clients(clients: Iterable[Any]) -> None:
    """Start aiokafka clients concurrently: each start is a few round trips (metadata,
    and for a transactional producer its coordinator and the init that fences the
    previous owner). A failure cancels the starts still running and is raised itself,
    not as a group; the caller closes every client, started or not."""
    try:
        async with asyncio.TaskGroup() as group:
            for client in clients:
                group.create_task(client.start())
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None


async def close_client(client: Any, timeout_s: float) -> None:
    """Stop an aiokafka client within ``timeout_s``, whatever state the broker is in.

    While the broker is away aiokafka's fetcher may be retrying; its ``close`` cancels
    that task and the ``CancelledError`` comes out of ``stop()``. Only a cancellation
    of our own task is passed on.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await client.stop()
    except (KafkaError, TimeoutError, IllegalOperation, AssertionError):
        pass
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
