"""serving_hooks publishers against real brokers: delivery, outages, bounded memory."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from serving_hooks.publisher import AsyncPublisher, PublisherConfig, SyncPublisher
from stream.events import decode
from stream.localkafka import LocalKafka

from .conftest import REPO, Setup, consume_all, free_port, wait_for


def record_many(pub: SyncPublisher | AsyncPublisher, n: int, model: str = "fraud") -> list[float]:
    """Records n events; returns the record() call times in seconds, sorted."""
    took = []
    for i in range(n):
        started = time.perf_counter()
        pub.record(model, "3", {"amount": float(i), "country": "DE"}, prediction=0.5,
                   latency_ms=3.0, event_id=f"{model}-{i}")  # fmt: skip
        took.append(time.perf_counter() - started)
    return sorted(took)


def test_sync_publisher_delivers_valid_events_and_close_flushes(setup: Setup) -> None:
    topic = f"{setup.prefix}.hook"
    pub = SyncPublisher(PublisherConfig(bootstrap=setup.kafka.bootstrap, topic=topic, linger_ms=20))
    record_many(pub, 1_500, "fraud")
    record_many(pub, 500, "churn")
    pub.close()  # flushes
    events = [e for raw in consume_all(setup.kafka.bootstrap, topic) for e in decode(raw).events]
    assert len(events) == 2_000
    assert {e.model for e in events} == {"fraud", "churn"}
    assert all(e.model_version == "3" and e.latency_ms == 3.0 and e.status == "ok" for e in events)
    assert pub.metrics.sent._value.get() == 2_000


def test_async_publisher_delivers(setup: Setup) -> None:
    topic = f"{setup.prefix}.ahook"

    async def run() -> None:
        pub = AsyncPublisher(PublisherConfig(bootstrap=setup.kafka.bootstrap, topic=topic))
        await pub.start()
        record_many(pub, 1_000)
        await pub.close()

    asyncio.run(run())
    events = [e for raw in consume_all(setup.kafka.bootstrap, topic) for e in decode(raw).events]
    assert sorted(e.event_id for e in events) == sorted(f"fraud-{i}" for i in range(1_000))


def test_broker_down_then_up_then_killed_then_up(tmp_path: Path) -> None:
    broker = LocalKafka(
        home=Path(os.environ.get("DRIFTLINE_KAFKA_HOME", REPO / ".kafka")),
        name=f"pytest-outage-{os.getpid()}",
        port=free_port(),
        controller_port=free_port(),
    )
    topic = "hook.outage"
    pub = SyncPublisher(
        PublisherConfig(
            bootstrap=broker.bootstrap,
            topic=topic,
            max_queue=1_000,
            retry_backoff_s=0.2,
            max_backoff_s=1.0,
        )
    )
    try:
        # never started: record() returns at once, the queue holds 1000, the rest is dropped
        took = record_many(pub, 5_000, "before")
        # no call waits on the broker (a connect attempt takes seconds); the slowest can
        # still lose the GIL to the sender thread for a switch interval (5 ms) or two
        assert took[int(len(took) * 0.99)] < 0.001
        assert took[-1] < 0.05
        assert pub.queued == 1_000
        wait_for(
            lambda: pub.metrics.dropped.labels("queue_full")._value.get() == 4_000,
            10,
            "drops counted",
        )
        broker.up()
        wait_for(lambda: pub.queued == 0, 60, "the queue to drain once the broker is up")
        record_many(pub, 300, "during")
        wait_for(lambda: pub.queued == 0, 30, "the second batch sent")
        broker.down(kill=True)  # SIGKILL mid-run
        record_many(pub, 500, "outage")
        assert pub.queued <= 1_000
        broker.up()
        wait_for(lambda: pub.queued == 0, 90, "publishing to resume after the restart")
        pub.close()
        events = [e for raw in consume_all(broker.bootstrap, topic) for e in decode(raw).events]
        ids = {e.event_id for e in events}
        assert {f"before-{i}" for i in range(1_000)} <= ids
        assert {f"during-{i}" for i in range(300)} <= ids
        assert {f"outage-{i}" for i in range(500)} <= ids
        assert pub.metrics.dropped.labels("queue_full")._value.get() == 4_000
    finally:
        pub.close()
        broker.down()
        broker.wipe()
