"""The workers' saved state on its compacted topic, and the pending store's log: what one
worker writes (and Kafka acknowledges), the next owner of the partition reads back."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from stream.config import KafkaConfig, MonitorConfig
from stream.localkafka import LocalKafka
from stream.state import KafkaPendingLog, KafkaState


def test_states_written_are_read_back_by_partition(kafka: LocalKafka) -> None:
    from aiokafka import AIOKafkaProducer

    from stream.worker import ensure_topics

    prefix = f"t{uuid.uuid4().hex[:10]}"
    config = MonitorConfig.model_validate(
        {
            "kafka": {
                "bootstrap": kafka.bootstrap,
                "group": f"{prefix}-worker",
                "events_topic": f"{prefix}.events",
                "outcomes_topic": f"{prefix}.outcomes",
                "partitions": 4,
            },
            "models": [{"name": "m", "reference": "unused.dlprofile"}],
        }
    )
    kc: KafkaConfig = config.kafka
    big = bytes(range(256)) * 12_000  # 3 MB: larger than the broker's default message size

    async def run() -> list[dict[str, bytes]]:
        await ensure_topics(config)
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap, max_request_size=8 * 1024 * 1024 + 65_536
        )
        await producer.start()

        async def send(topic: str, key: bytes | None, value: bytes, partition: int) -> Any:
            return await producer.send(topic, value, key=key, partition=partition)

        writer = KafkaState(kc, kc.state_topic_name, send)
        reader = KafkaState(kc, kc.state_topic_name, send)
        pending = KafkaPendingLog(kc, kc.pending_topic_name, send)
        try:
            await writer.save([(0, "a", b"a1"), (1, "b", b"b1"), (3, "c", b"c1")])
            await writer.save([(0, "a", b"a2"), (3, "d", big)])
            first = [await reader.load(p) for p in range(4)]
            await writer.save([(3, "c", b"c2")])
            again = await reader.load(3)  # the same reader, read again after a new write
            # the pending store's log: offsets of what was written, replay from an offset
            written = await pending.save([(2, b"x0"), (2, b"x1"), (1, b"y0"), (2, b"x2")])
            assert written == [(2, 0), (2, 1), (1, 0), (2, 2)]
            got: list[tuple[int, bytes]] = []
            replayed = await pending.replay(2, 1, lambda o, c: got.append((o, c)))
            assert (replayed, got) == ((2, 4), [(1, b"x1"), (2, b"x2")])
            assert await pending.replay(0, 0, lambda o, c: got.append((o, c))) == (0, 0)
            return [*first, again]
        finally:
            await reader.stop()
            await writer.stop()
            await pending.stop()
            await producer.stop()

    p0, p1, p2, p3, p3_again = asyncio.run(run())
    assert p0 == {"a": b"a2"}
    assert p1 == {"b": b"b1"}
    assert p2 == {}
    assert p3 == {"c": b"c1", "d": big}
    assert p3_again == {"c": b"c2", "d": big}
