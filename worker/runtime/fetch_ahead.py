"""Send the next fetch request before the step works on the batch just fetched.

aiokafka's fetcher asks the broker for more only once the buffered records are taken
and its background task has run: ``getmany`` sets a future, the fetcher's routine
wakes and makes a task for the request, and that task writes it to the socket. That is
three turns of the event loop, and the step (decode, join, fuse, write) gives the loop
none. So the request left after the step, and whenever records were already waiting at
the broker (a worker catching up after a stall, or at full load) the next ``getmany``
waited a round trip that could have overlapped the step.

Giving the loop those turns first writes the request at once, as Kafka's Java consumer
sends the next fetch before ``poll`` returns. The number of turns is aiokafka's (the
pinned minor, see pyproject.toml): tests/integration/test_fetch_ahead.py checks that
the request is written after them and not before, so an aiokafka that needs more turns
fails there instead of quietly waiting again.
"""

from __future__ import annotations

import asyncio

# The event loop turns from ``getmany`` taking the last buffered records to the fetch
# request written: the consumed signal's callback, the fetcher's routine, the request's
# task (aiokafka 0.14, ``Fetcher._fetch_requests_routine``).
TURNS = 3


async def fetch_ahead() -> None:
    """Let aiokafka's fetcher send its next request (call right after a non-empty
    ``getmany``). With records still buffered it sends none. The turns also run what
    else is ready (the producer's sends), which the loop would run after the step."""
    for _ in range(TURNS):
        await asyncio.sleep(0)
