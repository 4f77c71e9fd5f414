"""`fusion-worker check`: the config is valid (it loaded), the broker answers, the
topics exist and the inputs are co-partitioned."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError

from worker.config import Config
from worker.errors import KafkaSetupError
from worker.runtime.connect import admin_client, probe_credentials
from worker.runtime.feedback import check_labels_topic
from worker.runtime.topics import check_topics, partition_counts


async def _check(config: Config) -> int:
    cfg = config.kafka
    await probe_credentials(cfg)
    try:
        async with admin_client(cfg) as admin:
            partitions = await check_topics(admin, cfg)
            outputs = (await partition_counts(admin, [cfg.output_topic]))[cfg.output_topic]
            if config.feedback.topic:
                await check_labels_topic(admin, config)
    except KafkaError as exc:
        raise KafkaSetupError(f"cannot connect to {cfg.bootstrap_servers}: {exc}") from None
    models, strategy = len(config.models), config.fusion.strategy
    print(f"config: {config.source}: ok ({models} models, strategy {strategy})")
    print(f"broker: {cfg.bootstrap_servers}: ok")
    inputs = list(cfg.input_topics)
    print(f"topics: inputs {inputs} co-partitioned, {partitions} partitions; outputs exist")
    if not cfg.exactly_once:
        print(f"read-back: {_readback(config, partitions, outputs)}")
    if config.feedback.topic:
        print(f"labels: {config.feedback.topic} co-partitioned with the inputs")
    return 0


def _readback(config: Config, inputs: int, outputs: int) -> str:
    """Whether at-least-once reads its output back at assignment (worker/runtime/
    readback.py), which needs the output topic co-partitioned with the inputs."""
    out = config.kafka.output_topic
    if not config.kafka.readback_max_records:
        return "off (kafka.readback_max_records = 0): results may repeat after a crash"
    if outputs != inputs:
        return (
            f"off: output topic {out} has {outputs} partitions, the inputs {inputs}; give it "
            f"{inputs} so that results fused before a crash are not published again"
        )
    return f"on (output topic {out} co-partitioned with the inputs)"


def run_check(config: Config) -> int:
    return asyncio.run(_check(config))
