"""The webhook dispatcher: consumes ``driftline.retrain`` and POSTs every event, signed,
to every configured URL.

Per message, in partition order: POST to each URL until a 2xx, retrying with exponential
backoff and full jitter up to ``max_attempts``; an event that still fails goes to
``driftline.retrain.dlq`` with the reason. The consumer's offset is committed only after
every URL answered 2xx or the DLQ write succeeded, so a restart never loses an event (a
redelivery carries the same CloudEvent id: receivers drop duplicates).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import signal
from dataclasses import dataclass, field

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from prometheus_client import CollectorRegistry, Counter

from alerts.signing import signed_headers
from stream.kafka_security import KafkaSecurity

log = logging.getLogger("driftline.dispatcher")


@dataclass
class DispatcherSettings:
    bootstrap: str
    urls: list[str]
    secret: bytes = field(repr=False)
    topic: str = "driftline.retrain"
    dlq_topic: str = "driftline.retrain.dlq"
    group: str = "driftline-dispatcher"
    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    timeout_s: float = 10.0
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __repr__(self) -> str:  # never print the secret
        return (
            f"DispatcherSettings(bootstrap={self.bootstrap!r}, urls={self.urls!r}, "
            f"topic={self.topic!r}, security={self.security!r})"
        )


class DispatcherMetrics:
    """Delivery counters (served by ``driftline dispatcher --metrics-port``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "driftline_dispatcher_events",
            "Retrain events done with: delivered to every URL, or dead-lettered",
            ["outcome"],
            registry=r,
        )
        self.failed_posts = Counter(
            "driftline_dispatcher_failed_posts", "POST attempts that got no 2xx", registry=r
        )
        for outcome in ("delivered", "dead_lettered"):
            self.events.labels(outcome)  # both series exist from the start, at 0


class _StoppingError(Exception):
    """Raised inside a retry wait when the dispatcher is asked to stop."""


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)]."""
    return rng.uniform(0, min(cap, base * (2**attempt)))


class Dispatcher:
    def __init__(
        self,
        settings: DispatcherSettings,
        rng: random.Random | None = None,
        metrics: DispatcherMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.metrics = metrics or DispatcherMetrics()
        self.delivered = 0
        self.dead = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        client = s.security.aiokafka_kwargs()
        consumer = AIOKafkaConsumer(
            s.topic,
            bootstrap_servers=s.bootstrap,
            group_id=s.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=100,
            **client,
        )
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all", **client)
        await consumer.start()
        await producer.start()
        timeout = aiohttp.ClientTimeout(total=s.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                while not self._stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500)
                    try:
                        for tp, records in batch.items():
                            for record in records:
                                body, key = record.value or b"", record.key
                                await self._deliver(http, producer, body, key)
                                # commit this message only now: delivered, or dead-lettered
                                await consumer.commit({tp: record.offset + 1})
                    except CommitFailedError:
                        # the group went on without this member (a broker restart can
                        # expire it): the consumer rejoins and reads again from the last
                        # commit, so this event comes again (receivers drop it by id) and
                        # the rest of the batch is left for then
                        log.warning("offset commit refused after a rebalance; reading again")
        except _StoppingError:
            pass  # the message in flight stays uncommitted: redelivered on restart
        finally:
            await producer.stop()
            await consumer.stop()

    async def _deliver(
        self,
        http: aiohttp.ClientSession,
        producer: AIOKafkaProducer,
        body: bytes,
        key: bytes | None,
    ) -> None:
        s = self.settings
        try:
            event_id = str(json.loads(body)["id"])
        except (ValueError, KeyError, TypeError):
            await self._dead_letter(producer, body, key, "not a CloudEvent with an id", None)
            return
        for url in s.urls:
            error = await self._post_with_retries(http, url, body, event_id)
            if error is not None:
                await self._dead_letter(producer, body, key, error, url)
                return
        self.delivered += 1
        self.metrics.events.labels("delivered").inc()

    async def _post_with_retries(
        self, http: aiohttp.ClientSession, url: str, body: bytes, event_id: str
    ) -> str | None:
        s = self.settings
        error = "no attempt made"
        for attempt in range(s.max_attempts):
            # signed afresh each attempt: the timestamp must be recent for the receiver
            headers = signed_headers(s.secret, body, event_id)
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        return None
                    error = f"HTTP {response.status}"
                    self.metrics.failed_posts.inc()
                    if response.status in (400, 401, 403, 404, 410, 422):
                        return error  # retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                self.metrics.failed_posts.inc()
            delay = backoff(attempt, s.base_delay_s, s.max_delay_s, self.rng)
            log.warning("POST %s for %s failed (%s); retry in %.1f s", url, event_id, error, delay)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except TimeoutError:
                continue
            raise _StoppingError
        return f"gave up after {s.max_attempts} attempts: {error}"

    async def _dead_letter(
        self,
        producer: AIOKafkaProducer,
        body: bytes,
        key: bytes | None,
        reason: str,
        url: str | None,
    ) -> None:
        record = json.dumps(
            {
                "schema": "driftline.retrain.dlq/v1",
                "reason": reason,
                "url": url,
                "event": body.decode(errors="replace"),
            }
        ).encode()
        for attempt in itertools.count():
            try:
                await producer.send_and_wait(self.settings.dlq_topic, value=record, key=key)
                break
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                    raise
                # Kafka is unreachable (a broker restart): the event stays uncommitted
                # until its dead letter is written, so keep trying until told to stop
                s = self.settings
                delay = backoff(min(attempt, 30), s.base_delay_s, s.max_delay_s, self.rng)
                log.warning(
                    "dead letter not written (%s); retry in %.1f s", type(exc).__name__, delay
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                except TimeoutError:
                    continue
                raise _StoppingError from None
        self.dead += 1
        self.metrics.events.labels("dead_lettered").inc()
        log.error("retrain event dead-lettered: %s", reason)


async def dispatch_forever(
    settings: DispatcherSettings, metrics: DispatcherMetrics | None = None
) -> None:
    """Runs until SIGTERM or SIGINT; the event in flight stays uncommitted."""
    dispatcher = Dispatcher(settings, metrics=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    await dispatcher.run()
