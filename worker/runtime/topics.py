"""Start-up checks of the cluster: the topics exist and the inputs are co-partitioned."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import KafkaConfig
from worker.errors import KafkaSetupError

log = logging.getLogger(__name__)

UNKNOWN_TOPIC = 3


async def partition_counts(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    """Partitions per topic; a missing topic maps to 0."""
    described: list[dict[str, Any]] = await admin.describe_topics(list(topics))
    counts: dict[str, int] = {}
    for d in described:
        if d.get("error_code", 0) == UNKNOWN_TOPIC:
            counts[d["topic"]] = 0
        else:
            counts[d["topic"]] = len(d.get("partitions") or ())
    return counts


async def check_topics(admin: AIOKafkaAdminClient, cfg: KafkaConfig) -> int:
    """Refuse to start unless every topic exists and all inputs have one partition count.

    Returns that partition count. Co-partitioning is what lets one worker see every
    event of a request: murmur2(request_id) picks the same partition number in each
    input topic only when the counts are equal.
    """
    outputs = [t for t in (cfg.output_topic, cfg.dlq_topic, cfg.late_topic) if t]
    counts = await partition_counts(admin, [*cfg.input_topics, *outputs])
    missing = [t for t, n in counts.items() if n == 0]
    if missing:
        raise KafkaSetupError(
            f"topics {missing} do not exist on {cfg.bootstrap_servers}; create them "
            "(the worker does not create its input and output topics)"
        )
    inputs = {t: counts[t] for t in cfg.input_topics}
    if len(set(inputs.values())) > 1:
        raise KafkaSetupError(
            f"input topics are not co-partitioned: partition counts {inputs}; give every "
            "input topic the same number of partitions, keyed by request_id"
        )
    return next(iter(inputs.values()))


async def ensure_topics(admin: AIOKafkaAdminClient, topics: dict[str, int]) -> None:
    """Create the topics that do not exist yet (for the demo and tests)."""
    counts = await partition_counts(admin, list(topics))
    new = [NewTopic(t, n, 1) for t, n in topics.items() if counts.get(t, 0) == 0]
    if new:
        await admin.create_topics(new)
        log.info("created topics %s", [t.name for t in new])
