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
from typing import Any, cast

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


class _Log:
    """A topic partitioned like the events that the worker writes with its producer
    (``send``: ``(topic, key, value, partition) -> awaitable of the acknowledgement``)
    and reads back, a partition at a time, with a consumer of its own."""

    what = "log"

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        send: Callable[[str, bytes | None, bytes, int], Awaitable[Awaitable[Any]]],
        retry_s: float = 1.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self._send = send
        self._retry_s = retry_s
        self._consumer: Any = None

    async def _retrying(self, partition: int, read: Callable[[], Awaitable[Any]]) -> Any:
        """``read()``, again while Kafka cannot answer: the partition's messages wait
        (without what this topic holds they would be handled from nothing)."""
        from aiokafka.errors import KafkaError

        delay = self._retry_s
        while True:
            try:
                return await read()
            except KafkaError as exc:
                log.warning(
                    "%s partition %d of %s unreadable (%s); retrying in %.0f s",
                    self.what,
                    partition,
                    self.topic,
                    type(exc).__name__,
                    delay,
                )
                await self._drop_consumer()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _scan(
        self, partition: int, start: int, apply: Callable[[Sequence[Any]], None]
    ) -> tuple[int, int]:
        """Hands ``apply`` the records of ``partition`` from ``start`` (or the oldest one
        kept) to the end as it is now, fetch by fetch; returns (first, end) offsets."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.kafka.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",  # retention or compaction moved the start
                max_partition_fetch_bytes=MAX_STATE_BYTES + 65_536,
                fetch_max_bytes=4 * MAX_STATE_BYTES,
                **self.kafka.security.aiokafka_kwargs(),
            )
            await consumer.start()
            self._consumer = consumer
        consumer = self._consumer
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        first = max(start, (await consumer.beginning_offsets([tp]))[tp])
        end = (await consumer.end_offsets([tp]))[tp]
        # an explicit offset: a reset "to the beginning" can lose to the default strategy
        consumer.seek(tp, first)
        while first < end and await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=1_000)
            apply([r for r in batches.get(tp, []) if r.offset < end])
        return first, end

    async def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception as exc:  # already broken: nothing more to release
                log.debug("%s consumer stop: %s", self.what, exc)

    async def stop(self) -> None:
        await self._drop_consumer()


class KafkaState(_Log):
    """Saved states on the compacted topic ``topic``, keyed by model."""

    what = "state"

    async def save(self, items: Items) -> None:
        """Writes the states and waits until Kafka has acknowledged every one."""
        acks = [await self._send(self.topic, m.encode(), data, p) for p, m, data in items]
        await asyncio.gather(*acks)

    async def load(self, partition: int) -> dict[str, bytes]:
        """The newest saved state of each model of ``partition``."""
        return cast(
            dict[str, bytes], await self._retrying(partition, lambda: self._read(partition))
        )

    async def _read(self, partition: int) -> dict[str, bytes]:
        started = time.perf_counter()
        states: dict[str, bytes] = {}

        def apply(records: Sequence[Any]) -> None:
            for record in records:
                model = record.key.decode("utf-8", "replace") if record.key else ""
                if record.value is None:  # a tombstone: the model's state was dropped
                    states.pop(model, None)
                else:
                    states[model] = record.value

        await self._scan(partition, 0, apply)
        log.info(
            "state partition %d: %d models read in %.0f ms",
            partition,
            len(states),
            (time.perf_counter() - started) * 1000,
        )
        return states


class KafkaPendingLog(_Log):
    """The log of the pending-predictions store: one record per handled batch and
    partition (in pieces of at most ``CHUNK_BYTES``) with the rows the batch added to
    the store (predictions, joined markers). A worker given a partition replays it into
    its store from the offset the store has applied; records older than the outcomes'
    time to live leave with the topic's retention."""

    what = "pending-predictions"

    async def save(self, chunks: Sequence[tuple[int, bytes]]) -> list[tuple[int, int]]:
        """Writes (partition, chunk) records and waits for Kafka's acknowledgement;
        returns each one's (partition, offset)."""
        acks = [await self._send(self.topic, None, chunk, p) for p, chunk in chunks]
        return [(m.partition, m.offset) for m in await asyncio.gather(*acks)]

    async def replay(
        self, partition: int, start: int, apply: Callable[[int, bytes], None]
    ) -> tuple[int, int]:
        """Hands ``apply`` each (offset, chunk) of ``partition`` from ``start`` to the
        end; returns (records, bytes) replayed."""
        seen = [0, 0]

        def each(records: Sequence[Any]) -> None:
            for record in records:
                if record.value is not None:
                    apply(record.offset, record.value)
                    seen[0] += 1
                    seen[1] += len(record.value)

        async def run() -> tuple[int, int]:
            await self._scan(partition, start, each)
            return seen[0], seen[1]

        return cast(tuple[int, int], await self._retrying(partition, run))


class MemoryPendingLog:
    """The pending-predictions log in memory (tests): the interface of
    :class:`KafkaPendingLog`."""

    def __init__(self) -> None:
        self.partitions: dict[int, list[bytes]] = {}

    async def save(self, chunks: Sequence[tuple[int, bytes]]) -> list[tuple[int, int]]:
        out = []
        for partition, chunk in chunks:
            records = self.partitions.setdefault(partition, [])
            records.append(chunk)
            out.append((partition, len(records) - 1))
        return out

    async def replay(
        self, partition: int, start: int, apply: Callable[[int, bytes], None]
    ) -> tuple[int, int]:
        records = self.partitions.get(partition, [])[start:]
        for offset, chunk in enumerate(records, start):
            apply(offset, chunk)
        return len(records), sum(map(len, records))
