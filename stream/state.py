"""Where a worker keeps each model's saved state: a compacted Kafka topic partitioned like
the events, so the state of a model's events partition is the same partition of the state
topic.

Two rules make a takeover lose nothing:

- a batch's state is written, and acknowledged by Kafka, before the batch's messages are
  acknowledged (so a committed offset is never ahead of the saved state);
- a worker given a partition reads that partition of the state topic to its end before it
  handles a message of it (so it starts from the newest state, which records the last
  offset it includes; messages handed again below it are skipped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stream.config import KafkaConfig

log = logging.getLogger("driftline.state")

#: (partition, model, saved state) triples written by one batch
Items = Sequence[tuple[int, str, bytes]]

#: largest saved state of one model; the state topic is created to accept it
MAX_STATE_BYTES = 8 * 1024 * 1024


class MemoryState:
    """Saved states in memory, by partition: the handler's state without Kafka (tests,
    benchmarks), with the same interface as :class:`KafkaState`."""

    def __init__(self) -> None:
        self.partitions: dict[int, dict[str, bytes]] = {}

    async def load(self, partition: int) -> dict[str, bytes]:
        return dict(self.partitions.get(partition, {}))

    async def save(self, items: Items) -> None:
        for partition, model, data in items:
            self.partitions.setdefault(partition, {})[model] = data

    def __contains__(self, model: object) -> bool:
        return any(model in states for states in self.partitions.values())


class KafkaState:
    """Saved states on the compacted topic ``topic``; ``send`` is the worker's producer
    (``(topic, key, value, partition) -> awaitable of the acknowledgement``)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        send: Callable[[str, bytes, bytes, int], Awaitable[Awaitable[Any]]],
        retry_s: float = 1.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self._send = send
        self._retry_s = retry_s
        self._consumer: Any = None

    async def save(self, items: Items) -> None:
        """Writes the states and waits until Kafka has acknowledged every one."""
        acks = [await self._send(self.topic, m.encode(), data, p) for p, m, data in items]
        await asyncio.gather(*acks)

    async def load(self, partition: int) -> dict[str, bytes]:
        """The newest saved state of each model of ``partition``; retried while Kafka
        cannot answer (the partition's messages wait: without their state they would be
        counted from nothing)."""
        from aiokafka.errors import KafkaError

        delay = self._retry_s
        while True:
            try:
                return await self._read(partition)
            except KafkaError as exc:
                log.warning(
                    "state partition %d of %s unreadable (%s); retrying in %.0f s",
                    partition,
                    self.topic,
                    type(exc).__name__,
                    delay,
                )
                await self._drop_consumer()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _read(self, partition: int) -> dict[str, bytes]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.kafka.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",  # compaction moved the start: read from it
                max_partition_fetch_bytes=MAX_STATE_BYTES + 65_536,
                fetch_max_bytes=4 * MAX_STATE_BYTES,
                **self.kafka.security.aiokafka_kwargs(),
            )
            await consumer.start()
            self._consumer = consumer
        consumer = self._consumer
        started = time.perf_counter()
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        states: dict[str, bytes] = {}
        # an explicit offset: a reset "to the beginning" can lose to the default strategy
        consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=1_000)
            for record in batches.get(tp, []):
                if record.offset >= end:
                    break
                model = record.key.decode("utf-8", "replace") if record.key else ""
                if record.value is None:  # a tombstone: the model's state was dropped
                    states.pop(model, None)
                else:
                    states[model] = record.value
        log.info(
            "state partition %d: %d models read in %.0f ms",
            partition,
            len(states),
            (time.perf_counter() - started) * 1000,
        )
        return states

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception as exc:  # already broken: nothing more to release
                log.debug("state consumer stop: %s", exc)

    async def stop(self) -> None:
        await self._drop_consumer()
