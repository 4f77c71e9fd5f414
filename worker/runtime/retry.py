"""One backoff with jitter and one policy of which Kafka errors are fatal.

Every retry loop of the runtime (connecting at start, the loop's own errors, the sink's
re-sends, opening exactly-once partitions) backs off through ``Backoff``: exponential,
capped, with full jitter, so that replicas that lost the broker together do not come
back in lockstep. ``is_fatal`` says which errors waiting will not cure.
"""

from __future__ import annotations

import asyncio
import random

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
    }
)


def is_fatal(exc: BaseException) -> bool:
    """Errors that waiting will not cure: credentials and permissions."""
    return type(exc).__name__ in _FATAL


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
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not crypto

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
