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
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from stream.kafka_security import KafkaSecurity, KafkaSecurityError

log = logging.getLogger("driftline.hooks")
EVENT_SCHEMA = "driftline.event/v1"
BATCH_SCHEMA = "driftline.batch/v1"
OUTCOME_SCHEMA = "driftline.outcome/v1"


@dataclass(frozen=True)
class PublisherConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "driftline.events"
    outcomes_topic: str = "driftline.outcomes"
    max_queue: int = 100_000
    batch_size: int = 500
    linger_ms: float = 50.0
    #: zstd: 1.3-1.6x the events/s of gzip from one process (less to send and store)
    compression: str | None = "zstd"
    retry_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    close_timeout_s: float = 10.0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


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


def _to_builtin(obj: Any) -> Any:
    """msgspec's fallback for values it cannot encode, NumPy scalars above all: their Python
    value (booleans as 0/1: the contract has no booleans), anything else its text. Without
    it one ``np.float64`` in a feature made the sender retry the same batch forever."""
    item = getattr(obj, "item", None)
    if item is not None:
        value = item()
        return int(value) if isinstance(value, bool) else value
    return str(obj)


_encoder = msgspec.json.Encoder(enc_hook=_to_builtin)


class _Ids:
    """Event ids: 64 random bits drawn once per process, then a counter (one urandom
    call per id would cost a syscall on every request). Unique across processes and
    restarts with overwhelming probability; forked children draw their own prefix."""

    def __init__(self) -> None:
        self._pid = -1
        self._next: Any = None
        self._prefix = ""

    def __call__(self) -> str:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._prefix = os.urandom(8).hex()
            self._next = itertools.count().__next__
        return f"{self._prefix}{self._next():016x}"


new_event_id = _Ids()


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
        "event_id": event_id or new_event_id(),
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

    def put_many(self, events: list[dict[str, Any]]) -> int:
        room = self.config.max_queue - len(self.queue)
        if room < len(events):
            self.overflow += len(events) - max(room, 0)
            events = events[: max(room, 0)]
        self.queue.extend(events)
        self.accepted += len(events)
        return len(events)

    def encode(self, events: list[dict[str, Any]]) -> tuple[bytes, list[dict[str, Any]]]:
        """One envelope of ``events``, and the events it holds: an event that cannot be
        encoded at all is dropped and counted here, never sent nor retried."""
        try:
            return _encoder.encode({"schema": BATCH_SCHEMA, "events": events}), events
        except Exception:
            parts: list[bytes] = []
            good: list[dict[str, Any]] = []
            for event in events:
                try:
                    parts.append(_encoder.encode(event))
                    good.append(event)
                except Exception:
                    pass
            self.metrics.dropped.labels("bad_input").inc(len(events) - len(good))
            log.warning(
                "driftline hook dropped %d events it cannot encode", len(events) - len(good)
            )
            head = b'{"schema":"' + BATCH_SCHEMA.encode() + b'","events":['
            return head + b",".join(parts) + b"]}", good

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
                        **config.security.aiokafka_kwargs(),
                    )
                    await producer.start()
                    backoff = config.retry_backoff_s
                except Exception as exc:
                    self.metrics.errors.inc()
                    # a settings problem says what it is (never with the password)
                    why = str(exc) if isinstance(exc, KafkaSecurityError) else type(exc).__name__
                    log.warning("driftline hook cannot reach Kafka (%s); retrying", why)
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
            envelopes: list[tuple[bytes, bytes]] = []
            kept: list[dict[str, Any]] = []
            outcomes: list[tuple[bytes, bytes]] = []
            # the events of each message, in the order the messages are sent
            groups: list[list[dict[str, Any]]] = []
            outcome_groups: list[list[dict[str, Any]]] = []
            for event in taken:
                if event.get("schema") == OUTCOME_SCHEMA:  # one message each, model key
                    try:
                        outcomes.append((event["model"].encode(), _encoder.encode(event)))
                        kept.append(event)
                        outcome_groups.append([event])
                    except Exception:
                        self.metrics.dropped.labels("bad_input").inc()
                    continue
                by_model.setdefault(event["model"], []).append(event)
            for model, events in by_model.items():
                for i in range(0, len(events), config.batch_size):
                    body, good = self.encode(events[i : i + config.batch_size])
                    if good:
                        envelopes.append((model.encode(), body))
                        kept.extend(good)
                        groups.append(good)
            taken = kept
            groups += outcome_groups
            futures: list[asyncio.Future[Any]] = []
            try:
                for key, body in envelopes:
                    futures.append(await producer.send(config.topic, value=body, key=key))
                for key, body in outcomes:
                    futures.append(await producer.send(config.outcomes_topic, value=body, key=key))
                await asyncio.gather(*futures)
                self.metrics.sent.inc(len(taken))
            except Exception as exc:
                self.metrics.errors.inc()
                log.warning("driftline hook send failed (%s); will retry", type(exc).__name__)
                # only what Kafka did not acknowledge goes back to the queue: an envelope
                # sent again after its ack would have its events counted twice
                acks = await asyncio.gather(*futures, return_exceptions=True)
                taken = [
                    event
                    for i, group in enumerate(groups)
                    if i >= len(acks) or isinstance(acks[i], BaseException)
                    for event in group
                ]
                self.metrics.sent.inc(len(kept) - len(taken))
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

    def record_many(
        self,
        model: str,
        model_version: str,
        columns: Mapping[str, Sequence[Any]],
        predictions: Sequence[Any] | None = None,
        *,
        latency_ms: float | None = None,
        status: str = "ok",
        event_ids: Sequence[str] | None = None,
        ts_ms: int | Sequence[int] | None = None,
    ) -> int:
        """Queues one event per row of ``columns`` (feature name -> equal-length values),
        with ``predictions[i]`` for row i, one latency and status for all: about a third of
        what ``record`` costs per row (one clock read and one random draw for the ids of
        the whole batch). Returns how many events were queued; never raises."""
        n = 0
        try:
            names = list(columns)
            values = [columns[name] for name in names]
            n = len(predictions) if predictions is not None else len(values[0]) if values else 0
            if any(len(v) != n for v in values) or (event_ids is not None and len(event_ids) != n):
                raise ValueError("columns, predictions and event_ids differ in length")
            if event_ids is None:
                hexes = os.urandom(16 * n).hex()
                event_ids = [hexes[i : i + 32] for i in range(0, 32 * n, 32)]
            if ts_ms is None or isinstance(ts_ms, int):
                stamps: Any = itertools.repeat(ts_ms or int(time.time() * 1000), n)
            elif len(ts_ms) != n:
                raise ValueError("ts_ms differs in length from the rows")
            else:
                stamps = ts_ms
            rows: Any = zip(*values, strict=False) if values else itertools.repeat((), n)
            preds: Any = predictions if predictions is not None else itertools.repeat(None, n)
            version = str(model_version)
            events = [
                {
                    "schema": EVENT_SCHEMA,
                    "event_id": event_id,
                    "model": model,
                    "model_version": version,
                    "ts": ts,
                    "features": dict(zip(names, row, strict=False)),
                    "prediction": prediction,
                    "latency_ms": latency_ms,
                    "status": status,
                }
                for event_id, ts, row, prediction in zip(
                    event_ids, stamps, rows, preds, strict=False
                )
            ]
            return self._core.put_many(events)
        except Exception:
            self.metrics.dropped.labels("bad_input").inc(max(n, 1))
            return 0

    def record_outcome(
        self, model: str, event_id: str, label: float | bool | str, ts_ms: int | None = None
    ) -> None:
        """Queues the ground truth of an earlier prediction (``driftline.outcome/v1`` on
        the outcomes topic, keyed by model like the events); never raises."""
        try:
            if not isinstance(label, str):  # numbers and booleans go as numbers
                label = float(label)
            outcome: dict[str, Any] = {
                "schema": OUTCOME_SCHEMA,
                "event_id": str(event_id),
                "model": str(model),
                "label": label,
                "ts": int(time.time() * 1000) if ts_ms is None else int(ts_ms),
            }
            self._core.put(outcome)
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
            if self.config.security.tls:
                # a closed TLS connection releases its socket after a close_notify round
                # trip, which needs the loop still running
                self._loop.run_until_complete(asyncio.sleep(0.1))
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
