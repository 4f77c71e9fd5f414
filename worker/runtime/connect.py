"""Connection settings shared by every Kafka client the worker opens (security, ids)."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from worker.config import KafkaConfig, sasl_password


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
