"""Publishers for serving pods: ``record(...)`` costs microseconds and never raises.

A recorded prediction becomes one ``driftline.event/v1`` dict appended to a bounded queue;
a background sender (an asyncio task, or a daemon thread for threaded servers) groups the
queue into ``driftline.batch/v1`` envelopes per model (flushed when ``batch_size`` events
or ``linger_ms`` are reached), compresses them and sends them keyed by model. If the broker
is unreachable the sender keeps retrying with backoff while the queue holds; once the
queue is full, **new events are dropped** (the oldest are kept, they are closer to being
sent) and counted in ``driftline_hook_events_dropped_total``. Memory is therefore bounded
by ``max_queue`` events whatever happens to Kafka. ``close()`` flushes what is queued
(within ``close_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("driftline.hooks")
EVENT_SCHEMA = "driftline.event/v1"
BATCH_SCHEMA = "driftline.batch/v1"


@dataclass(frozen=True)
class PublisherConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "driftline.events"
    max_queue: int = 100_000
    batch_size: int = 500
    linger_ms: float = 50.0
    compression: str | None = "gzip"
    retry_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    close_timeout_s: float = 10.0


class HookMetrics:
    """The hook's own metrics, registrable in the serving app's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.queued = Counter("driftline_hook_events_queued", "Events recorded", registry=r)
        self.sent = Counter(
            "driftline_hook_events_sent", "Events acknowledged by Kafka", registry=r
        )
        self.dropped = Counter(
            "driftline_hook_events_dropped",
            "Events dropped (queue full or bad input)",
            ["reason"],
            registry=r,
        )
        self.errors = Counter("driftline_hook_send_errors", "Failed send attempts", registry=r)
        self.depth = Gauge("driftline_hook_queue_depth", "Events waiting to be sent", registry=r)


_encoder = msgspec.json.Encoder()


def make_event(
    model: str,
    model_version: str,
    features: Mapping[str, float | str | None],
    prediction: float | str | None = None,
    latency_ms: float | None = None,
    status: str = "ok",
    event_id: str | None = None,
    ts_ms: int | None = None,
) -> dict[str, Any]:
    return {
        "schema": EVENT_SCHEMA,
        "event_id": event_id or uuid.uuid4().hex,
        "model": model,
        "model_version": str(model_version),
        "ts": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "features": dict(features),
        "prediction": prediction,
        "latency_ms": latency_ms,
        "status": status,
    }


class _Core:
    """Queue and sender shared by both publishers; runs in one event loop."""

    def __init__(self, config: PublisherConfig, metrics: HookMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.queue: deque[dict[str, Any]] = deque()
        self.closing = False
        # plain ints on the request path (a Prometheus counter takes a lock per inc);
        # the sender folds them into the counters
        self.accepted = 0
        self.overflow = 0
        self._reported = (0, 0)

    def put(self, event: dict[str, Any]) -> None:
        if len(self.queue) >= self.config.max_queue:
            self.overflow += 1
            return
        self.queue.append(event)
        self.accepted += 1

    def fold_counts(self) -> None:
        accepted, overflow = self.accepted, self.overflow
        self.metrics.queued.inc(accepted - self._reported[0])
        self.metrics.dropped.labels("queue_full").inc(overflow - self._reported[1])
        self._reported = (accepted, overflow)
        self.metrics.depth.set(len(self.queue))

    async def run(self) -> None:
        from aiokafka import AIOKafkaProducer

        config = self.config
        backoff = config.retry_backoff_s
        producer: AIOKafkaProducer | None = None
        while True:
            self.fold_counts()
            if producer is None:
                try:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=config.bootstrap,
                        compression_type=config.compression,
                        linger_ms=5,
                        request_timeout_ms=5000,
                        max_request_size=8 * 1024 * 1024,
                    )
                    await producer.start()
                    backoff = config.retry_backoff_s
                except Exception as exc:
                    self.metrics.errors.inc()
                    log.warning(
                        "driftline hook cannot reach Kafka (%s); retrying", type(exc).__name__
                    )
                    with contextlib.suppress(Exception):
                        if producer is not None:
                            await producer.stop()
                    producer = None
                    if self.closing:
                        self.fold_counts()
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(config.max_backoff_s, backoff * 2)
                    continue
            if not self.queue:
                if self.closing:
                    await producer.stop()
                    self.fold_counts()
                    return
                await asyncio.sleep(config.linger_ms / 1000)
                continue
            if len(self.queue) < config.batch_size and not self.closing:
                await asyncio.sleep(config.linger_ms / 1000)
            taken = [
                self.queue.popleft() for _ in range(min(len(self.queue), config.batch_size * 64))
            ]
            self.metrics.depth.set(len(self.queue))
            by_model: dict[str, list[dict[str, Any]]] = {}
            for event in taken:
                by_model.setdefault(event["model"], []).append(event)
            try:
                futures = []
                for model, events in by_model.items():
                    for i in range(0, len(events), config.batch_size):
                        chunk = events[i : i + config.batch_size]
                        body = _encoder.encode({"schema": BATCH_SCHEMA, "events": chunk})
                        futures.append(
                            await producer.send(config.topic, value=body, key=model.encode())
                        )
                await asyncio.gather(*futures)
                self.metrics.sent.inc(len(taken))
            except Exception as exc:
                self.metrics.errors.inc()
                log.warning("driftline hook send failed (%s); will retry", type(exc).__name__)
                room = config.max_queue - len(self.queue)
                keep = taken[:room] if room > 0 else []
                self.queue.extendleft(reversed(keep))
                self.overflow += len(taken) - len(keep)
                with contextlib.suppress(Exception):
                    await producer.stop()
                producer = None
                if self.closing:
                    self.fold_counts()
                    return
                await asyncio.sleep(backoff)
                backoff = min(config.max_backoff_s, backoff * 2)


class _Publisher:
    """What both publishers share: configuration, metrics, the queue and ``record``."""

    def __init__(
        self, config: PublisherConfig | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config or PublisherConfig()
        self.metrics = HookMetrics(registry)
        self._core = _Core(self.config, self.metrics)

    def record(
        self, model: str, model_version: str, features: Mapping[str, Any], **fields: Any
    ) -> None:
        """Queues one prediction; returns at once and never raises."""
        try:
            self._core.put(make_event(model, model_version, features, **fields))
        except Exception:
            self.metrics.dropped.labels("bad_input").inc()

    @property
    def queued(self) -> int:
        return len(self._core.queue)


class SyncPublisher(_Publisher):
    """For threaded servers: the sender runs in a daemon thread with its own event loop."""

    def __init__(
        self, config: PublisherConfig | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        super().__init__(config, registry)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="driftline-hook", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._core.run())
        except Exception:  # the hook must never take the app down
            log.exception("driftline hook sender stopped")
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def close(self) -> None:
        """Flushes what is queued (up to ``close_timeout_s``) and stops the sender."""
        self._core.closing = True
        self._thread.join(self.config.close_timeout_s)


class AsyncPublisher(_Publisher):
    """For asyncio servers: the sender is a task in the server's own loop."""

    def __init__(
        self, config: PublisherConfig | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        super().__init__(config, registry)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._core.run())

    async def close(self) -> None:
        """Flushes what is queued (up to ``close_timeout_s``) and stops the sender."""
        self._core.closing = True
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self._task, self.config.close_timeout_s)
