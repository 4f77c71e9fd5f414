"""Connection settings for the client kit: bootstrap aside, the same security options
as the worker's ``[kafka]`` table, as one frozen, validated object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka.helpers import create_ssl_context

from worker.errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How a client connects: security, identity and timeouts.

    The names and meanings are those of the worker's ``[kafka]`` keys, so a service can
    share one set of settings with the worker. Invalid values raise ``ConfigError``
    naming the key when the object is built; the password never appears in ``repr``.
    """

    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    client_id: str = "fusion-client"
    request_timeout_ms: int = 30_000
    retry_backoff_ms: int = 100

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                "security_protocol",
                self.security_protocol,
                f"must be one of {', '.join(SECURITY_PROTOCOLS)}",
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    "sasl_mechanism",
                    self.sasl_mechanism,
                    f"must be one of {', '.join(SASL_MECHANISMS)} with {self.security_protocol}",
                )
            if not self.sasl_username:
                raise ConfigError(
                    "sasl_username", self.sasl_username, f"required with {self.security_protocol}"
                )
            if not self.sasl_password:
                raise ConfigError(
                    "sasl_password", "<empty>", f"required with {self.security_protocol}"
                )
        for key in ("request_timeout_ms", "retry_backoff_ms"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, getattr(self, key), "must be > 0")

    def kwargs(self, bootstrap_servers: str) -> dict[str, Any]:
        """Keyword arguments for an aiokafka producer or consumer."""
        opts: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile or None,
                certfile=self.ssl_certfile or None,
                keyfile=self.ssl_keyfile or None,
            )
        if self.security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password
        return opts
