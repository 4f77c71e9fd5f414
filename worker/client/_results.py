"""``FusedResults``: what an HTTP gateway uses to await the fused answer to its request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.client._memory import ResultMemory
from worker.client._options import ConnectionOptions
from worker.errors import KafkaSetupError

log = logging.getLogger(__name__)


class FusedResults:
    """Listen to the worker's output topic and hand each fused result to whoever awaits it.

    The consumer has no group: it is assigned every partition of ``topic`` and starts at
    the end, when ``start()`` returns (``async with``), so any number of gateway instances
    can run at once and each sees every result published from then on. Results that
    arrive before anyone asks are kept in a bounded memory (``max_results``,
    ``max_age_s``); several callers may await the same request. ``read_committed`` by
    default, so results of an aborted exactly-once transaction are never handed out.
    Partitions added to the topic after start are not followed.

    Usage::

        async with FusedResults("kafka:9092", "fused") as results:
            ...publish the request...
            fused = await results.get("r-1", timeout_s=5.0)   # TimeoutError if none
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        options: ConnectionOptions | None = None,
        max_results: int = 10_000,
        max_age_s: float = 60.0,
        isolation_level: str = "read_committed",
        metadata_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap_servers
        self._options = options or ConnectionOptions()
        self._memory = ResultMemory(max_results, max_age_s)
        self._isolation_level = isolation_level
        self._metadata_timeout_s = metadata_timeout_s
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take every partition and position at its end; idempotent.

        Raises ``KafkaSetupError`` when the topic does not exist.
        """
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **self._options.kwargs(self._bootstrap),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level=self._isolation_level,
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            # Fix every end offset now, so that a result published after start() returns
            # is seen, not skipped by a reset done later on the first fetch. seek_to_end
            # gives up silently after request_timeout_ms; position() waits until known.
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._failure = None
        self._task = asyncio.create_task(self._run(consumer), name=f"fused-results-{self.topic}")

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._metadata_timeout_s
        while True:
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                return set(partitions)
            if loop.time() >= deadline:
                raise KafkaSetupError(
                    f"topic {self.topic!r} not found on {self._bootstrap} within "
                    f"{self._metadata_timeout_s} s: create it or fix the topic name"
                )
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop listening; pending ``get`` calls raise ``RuntimeError``. Safe twice."""
        consumer, self._consumer = self._consumer, None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if consumer is not None:
            await consumer.stop()
        self._fail_waiters(RuntimeError("FusedResults stopped"))

    async def __aenter__(self) -> FusedResults:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the gateway's call ----------------------------------------------------------------

    async def get(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        """The fused result of ``request_id``: at once if it already arrived, else when it
        does. Raises ``TimeoutError`` (``asyncio.TimeoutError``) after ``timeout_s``.

        The dict is shared by every caller of the same request: do not change it.
        """
        if self._failure is not None:
            raise RuntimeError("FusedResults stopped listening") from self._failure
        if self._consumer is None:
            raise RuntimeError("FusedResults is not started: use `async with` or start()")
        loop = asyncio.get_running_loop()
        held = self._memory.get(request_id, loop.time())
        if held is not None:
            return held
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        waiters = self._waiters.setdefault(request_id, [])
        waiters.append(future)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise TimeoutError(
                f"no fused result for request_id {request_id!r} within {timeout_s} s"
            ) from None
        finally:
            # A timed-out or cancelled caller leaves no trace.
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters and self._waiters.get(request_id) is waiters:
                del self._waiters[request_id]

    @property
    def held(self) -> int:
        """How many results are in memory (arrived, not yet forgotten)."""
        return len(self._memory)

    @property
    def waiting(self) -> int:
        """How many ``get`` calls are waiting."""
        return sum(len(w) for w in self._waiters.values())

    # -- the listening task ----------------------------------------------------------------

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError as exc:
                    # The client reconnects by itself; the waiters' timeouts bound the wait.
                    log.warning("reading %s failed, retrying: %s", self.topic, exc)
                    await asyncio.sleep(0.5)
                    continue
                now = loop.time()
                for records in batches.values():
                    for record in records:
                        self._deliver(record.key, record.value, now)
                self._memory.expire(now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("FusedResults stopped listening to %s", self.topic)
            self._failure = exc
            self._fail_waiters(exc)

    def _deliver(self, key: bytes | None, value: bytes | None, now_s: float) -> None:
        if value is None:
            return
        try:
            result = orjson.loads(value)
        except orjson.JSONDecodeError:
            log.debug("skipping a record of %s that is not JSON", self.topic)
            return
        request_id = result.get("request_id") if isinstance(result, dict) else None
        if not isinstance(request_id, str):
            if key is None:
                return
            request_id = key.decode("utf-8", errors="replace")
        if not self._memory.put(request_id, result, now_s):
            return  # a repeat of a result already handed out
        for future in self._waiters.pop(request_id, ()):
            if not future.done():
                future.set_result(result)

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
