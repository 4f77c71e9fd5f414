"""Simulated models for demos and load: every configured model publishes a prediction
event per request, keyed by request_id with Kafka's default (murmur2) partitioner.

Models get behaviours by their position in the config, so a demo shows what fusion
is for: the first is steady and fairly accurate, the second slow and sometimes
silent (its requests end ``partial`` at the deadline), the third fast but often wrong.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from worker.config import Config
from worker.runtime.connect import client_options

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Behaviour:
    accuracy: float
    delay_ms: tuple[float, float]  # uniform range
    silent: float  # probability of never reporting


BEHAVIOURS = (
    Behaviour(accuracy=0.85, delay_ms=(5, 40), silent=0.0),
    Behaviour(accuracy=0.80, delay_ms=(40, 600), silent=0.08),
    Behaviour(accuracy=0.60, delay_ms=(2, 20), silent=0.0),
)


class Simulator:
    """Deterministic for a seed: request i always gets the same events."""

    def __init__(self, config: Config, seed: int = 7) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.labels = config.fusion.labels
        topics = config.kafka.input_topics
        names = config.model_names
        # One topic per model when the config lists as many topics as models.
        self.topic_of = {
            m: (topics[i] if len(topics) == len(names) else topics[0]) for i, m in enumerate(names)
        }

    def request(self, i: int, now_ms: int) -> list[tuple[float, str, dict[str, Any]]]:
        """(delay_ms, topic, event) for every model that reports on request ``i``."""
        rid = f"req-{i:08d}"
        out: list[tuple[float, str, dict[str, Any]]] = []
        k = len(self.labels)
        truth = int(self.rng.integers(k)) if k else 0
        target = float(self.rng.normal(0, 1))
        for j, model in enumerate(self.config.model_names):
            b = BEHAVIOURS[j % len(BEHAVIOURS)]
            delay = float(self.rng.uniform(*b.delay_ms))
            if self.rng.random() < b.silent:
                continue
            event: dict[str, Any] = {"request_id": rid, "model": model, "ts": now_ms + int(delay)}
            if k:
                right = self.rng.random() < b.accuracy
                guess = truth if right else int((truth + 1 + self.rng.integers(k - 1)) % k)
                conc = np.full(k, 0.6)
                conc[guess] = 4.0
                event["probs"] = self.rng.dirichlet(conc).tolist()
            else:
                event["score"] = round(target + float(self.rng.normal(0, 1 - b.accuracy)), 6)
            event["model_version"] = f"{model}-v1"
            out.append((delay, self.topic_of[model], event))
        return out


async def publish(
    config: Config,
    rate: float,
    requests: int,
    seed: int = 7,
    stop: asyncio.Event | None = None,
) -> int:
    """Publish ``requests`` requests (0: until ``stop``) at ``rate`` per second."""
    sim = Simulator(config, seed)
    producer = AIOKafkaProducer(
        client_id="fusion-simulator", linger_ms=5, **client_options(config.kafka)
    )
    await producer.start()
    stop = stop or asyncio.Event()
    due: list[tuple[float, int, str, bytes, bytes]] = []
    seq = 0
    sent = 0
    start = time.monotonic()
    i = 0
    try:
        while not stop.is_set() and (requests == 0 or i < requests or due):
            now = time.monotonic()
            while (requests == 0 or i < requests) and start + i / rate <= now:
                now_ms = int(time.time() * 1000)
                for delay, topic, event in sim.request(i, now_ms):
                    seq += 1
                    heapq.heappush(
                        due,
                        (
                            now + delay / 1000,
                            seq,
                            topic,
                            event["request_id"].encode(),
                            orjson.dumps(event),
                        ),
                    )
                i += 1
            while due and due[0][0] <= now:
                _, _, topic, key, value = heapq.heappop(due)
                await producer.send(topic, value, key=key)
                sent += 1
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def run_simulate(config: Config, rate: float, requests: int, seed: int) -> int:
    """The body of `fusion-worker simulate`."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sent = await publish(config, rate, requests, seed, stop)
        log.warning("simulator sent %d events", sent)

    asyncio.run(main())
    return 0
