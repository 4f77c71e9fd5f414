"""One backoff with jitter and one policy of which Kafka errors are fatal.

Every retry loop of the runtime (connecting at start, the loop's own errors, the sink's
re-sends, opening exactly-once partitions) backs off through ``Backoff``: exponential,
capped, with full jitter, so that replicas that lost the broker together do not come
back in lockstep. ``is_fatal`` says which errors waiting will not cure: credentials,
permissions (topic, group, cluster, transactional id), and configurations the broker
refuses; start-up, the loop, the sink and the exactly-once transactions all ask it, and
the worker stops on them with a non-zero exit. ``TopicWatch`` makes a missing topic
fatal once it has been missing for longer than ``[kafka] unknown_topic_timeout_ms``
(a topic being created is missing for a moment; a deleted one stays missing).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka.errors import KafkaError

from worker.errors import FusionError, KafkaSetupError

log = logging.getLogger(__name__)

# The longest wait between two attempts, whatever the base.
MAX_BACKOFF_MS = 10_000

_FATAL = frozenset(
    {
        "AuthenticationFailedError",
        "SaslAuthenticationFailed",
        "AuthenticationMethodNotSupported",
        "UnsupportedSaslMechanismError",
        "IllegalSaslStateError",
        "TopicAuthorizationFailedError",
        "GroupAuthorizationFailedError",
        "ClusterAuthorizationFailedError",
        "TransactionalIdAuthorizationFailed",
        "InvalidConfigurationError",
        "InvalidRequestError",
        "PolicyViolationError",
        "InvalidTransactionTimeout",
        "UnsupportedVersionError",
        "UnsupportedForMessageFormatError",
    }
)
# What an operator should do about a fatal error, by kind.
_ADVICE = (
    ("Authorization", "grant the worker's principal the ACL it needs"),
    ("Authentication", "fix the credentials ([kafka] sasl_*, ssl_*)"),
    ("Sasl", "fix the credentials ([kafka] sasl_*, ssl_*)"),
    ("Transaction", "fix [kafka] transaction_timeout_ms (the broker's maximum bounds it)"),
    ("", "fix the configuration or the broker"),
)


def is_fatal(exc: BaseException) -> bool:
    """Errors that waiting will not cure: credentials, permissions, and requests or
    configurations the broker refuses as invalid."""
    return type(exc).__name__ in _FATAL


def fatal_message(exc: BaseException) -> str:
    """``Type: message; what to do``, for the log line the worker stops with."""
    name = type(exc).__name__
    text = str(exc)
    what = text if text.startswith(name) else f"{name}: {text}"
    advice = next(a for kind, a in _ADVICE if kind in name)
    return f"{what}; {advice}"


class TopicWatch:
    """Makes a missing topic fatal once it has been missing for ``timeout_ms``.

    ``observe(missing, now_s)`` is given the topics found missing at ``now_s``
    (monotonic seconds); a topic seen again is forgotten. It is pure (the clock is
    passed in); ``watch`` is the task that fetches the metadata and calls it."""

    def __init__(self, timeout_ms: int) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        self.timeout_ms = timeout_ms
        self._since: dict[str, float] = {}

    @property
    def check_interval_s(self) -> float:
        """How often to look: four times per bound, at most every five seconds."""
        return min(self.timeout_ms / 4000, 5.0)

    async def watch(self, ours: set[str], existing: Callable[[], Awaitable[Iterable[str]]]) -> None:
        """Every ``check_interval_s``, ask ``existing()`` (the cluster's topics) and
        ``observe`` which of ``ours`` are missing; returns only by raising. A deleted input
        would silently drop out of the subscription, a deleted output be re-sent to for
        ever: hence a bound."""
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                found = set(await existing())
            except KafkaError as exc:
                # An outage is the loop's to wait out; it says nothing of the topics.
                log.debug("topic check skipped: %s", exc)
                continue
            self.observe(ours - found, time.monotonic())

    def observe(self, missing: set[str], now_s: float) -> None:
        """Raise ``KafkaSetupError`` naming the topics missing for ``timeout_ms``."""
        self._since = {t: self._since.get(t, now_s) for t in missing}
        gone = sorted(
            t for t, since in self._since.items() if now_s - since >= self.timeout_ms / 1000
        )
        if gone:
            raise KafkaSetupError(
                f"topic {', '.join(gone)} does not exist (missing for longer than "
                f"[kafka] unknown_topic_timeout_ms = {self.timeout_ms}); create it or fix "
                "the configuration"
            )


# The jitter's draws when no generator is given (not crypto).
_SHARED_RNG = random.Random()  # noqa: S311


class Backoff:
    """Exponential backoff from ``base_ms`` to ``max_ms``, each wait drawn uniformly
    from [half, all] of the current step ("equal jitter": never shorter than half, so a
    retry does not hammer a broker that is still away).

    ``rng`` is injectable so tests can pin the draws.
    """

    def __init__(
        self, base_ms: int, max_ms: int = MAX_BACKOFF_MS, rng: random.Random | None = None
    ) -> None:
        if base_ms <= 0:
            raise ValueError(f"base_ms must be > 0, got {base_ms}")
        self.base_ms = base_ms
        self.max_ms = max(max_ms, base_ms)
        self._step_ms = float(base_ms)
        # Not a Random() of its own: seeding one reads the OS's entropy, and the sink
        # makes a Backoff per batch it submits, nearly always without a failure.
        self._rng: random.Random = rng if rng is not None else _SHARED_RNG

    def next_s(self) -> float:
        """The next wait, in seconds, and move the step on."""
        step = self._step_ms
        self._step_ms = min(step * 2, self.max_ms)
        return self._rng.uniform(step / 2, step) / 1000

    def reset(self) -> None:
        """After a success: the next failure waits from the base again."""
        self._step_ms = float(self.base_ms)

    async def sleep(self) -> float:
        """Wait the next step; returns how long it waited, in seconds."""
        wait = self.next_s()
        await asyncio.sleep(wait)
        return wait


async def retry_until_connected(
    connect: Callable[[], Awaitable[Any]],
    backoff: Backoff,
    where: str,
    beat: Callable[[], None],
    stopping: asyncio.Event,
) -> None:
    """Keep trying ``connect`` while the broker at ``where`` is unreachable; configuration
    errors and fatal broker errors stop at once (``KafkaSetupError``), as does a stop
    asked for meanwhile."""
    while True:
        beat()
        try:
            await connect()
            return
        except FusionError:
            raise
        except KafkaError as exc:
            if is_fatal(exc):
                raise KafkaSetupError(f"cannot use {where}: {fatal_message(exc)}") from None
            if stopping.is_set():
                raise KafkaSetupError(f"stopped while connecting: {exc}") from None
            wait = backoff.next_s()
            log.warning("broker not reachable (%s); retrying in %.1fs", exc, wait)
            await asyncio.sleep(wait)
