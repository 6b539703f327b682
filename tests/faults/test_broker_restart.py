"""The broker stopped mid-stream (SIGTERM: controlled shutdown; SIGKILL: none) and
restarted, with a worker, the webhook dispatcher and its receiver, and a serving hook all
running: each of them must recover by itself (no process is restarted) and nothing may be
lost. Every window report counts every event, every retrain event raised reaches the
receiver exactly once with a valid signature, and the hook's queue drains without a drop.

The broker stops while the hook's sender is in the middle of a burst of envelopes (some
acknowledged, some in flight), while the dispatcher is in the middle of a delivery (the
receiver's command holds it until the broker is down, so the offset commit has to wait
for the restart, when a SIGKILLed broker has forgotten the dispatcher's group member),
and while the worker consumes; it stays down longer than the consumers' session timeout.

The broker is this module's own (free ports, its own instance name): the fault suite's
shared one must not be stopped.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from subprocess import Popen
from typing import Any, cast

import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    UnknownTopicOrPartitionError,
)

from alerts.dispatcher import Dispatcher, DispatcherSettings, _StoppingError
from alerts.engine import evaluate_all
from alerts.rules import default_rules
from serving_hooks.publisher import PublisherConfig, SyncPublisher
from stream.events import decode
from stream.localkafka import LocalKafka
from tests.fuzzing import FULL, scaled
from tests.integration.conftest import (
    Setup,
    consume_all,
    free_port,
    group_state,
    local_broker,
    received,
    wait_for,
)

from .conftest import Processes, crashes, group_offsets, metric, record_figures, scrape

WINDOW = 600_000  # the setup's 10 minute windows
SECRET = "broker-restart-secret-0123456789"
#: drift pattern per window: two drifted windows in a row raise retrain events (one per
#: retrain rule that fires: PSI and KS)
SHIFTS = (0.0, 0.8, 0.8)
#: events per envelope the hook sends
HOOK_BATCH = 500
#: how long the broker stays down at least (the fault's length, not a synchronisation)
OUTAGE_S = scaled(15, 60)


#: the receiver's command: lets retrain events of windows before argv[2] (epoch ms) go
#: through at once and holds later ones until the file ``open`` appears in argv[1]
HOLD = """
import json, pathlib, sys, time
gate, held_from = pathlib.Path(sys.argv[1]), int(sys.argv[2])
event = json.load(sys.stdin)
if int(event["data"]["report_id"].split("/")[2]) >= held_from:
    (gate / "holding").touch()
    while not (gate / "open").exists():
        time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def kafka() -> Iterator[LocalKafka]:
    """This module's own broker (overrides the suite's for ``setup``): it is stopped and
    killed here, which the broker other tests share must never be."""
    yield from local_broker("pytest-restart")


class Chunk:
    """Rows for one ``record_many`` call: one window's slice of events."""

    def __init__(
        self, ids: list[str], ts: list[int], columns: dict[str, list[Any]], predictions: list[float]
    ) -> None:
        self.ids = ids
        self.ts = ts
        self.columns = columns
        self.predictions = predictions

    def record(self, hook: SyncPublisher) -> int:
        return hook.record_many(
            "fraud",
            "3",
            self.columns,
            self.predictions,
            latency_ms=7.0,
            event_ids=self.ids,
            ts_ms=self.ts,
        )


def window_chunks(t0: int, window: int, per_window: int, chunk: int) -> list[Chunk]:
    """One window's events, in event-time order, cut into chunks."""
    rng = np.random.default_rng(window)
    shift = SHIFTS[window % len(SHIFTS)]
    start = t0 + window * WINDOW
    amount = rng.lognormal(3 + shift, 0.5, per_window).tolist()
    age = rng.normal(40, 10, per_window).tolist()
    country = rng.choice(["DE", "FR", "NL"], per_window, p=[0.5, 0.3, 0.2]).tolist()
    predictions = rng.uniform(size=per_window).tolist()
    out = []
    for a in range(0, per_window, chunk):
        b = min(a + chunk, per_window)
        out.append(
            Chunk(
                [f"w{window}-{i}" for i in range(a, b)],
                [start + i * (WINDOW // per_window) for i in range(a, b)],
                {"amount": amount[a:b], "age": age[a:b], "country": country[a:b]},
                predictions[a:b],
            )
        )
    return out


def count_acks(monkeypatch: pytest.MonkeyPatch, topic: str) -> list[int]:
    """Counts the messages to ``topic`` that the broker acknowledges to producers of this
    process (the hook's): observation only, by a callback on each send's future."""
    acked = [0]
    send = AIOKafkaProducer.send

    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            acked[0] += 1

    async def counting_send(self: AIOKafkaProducer, to: str, *args: Any, **kwargs: Any) -> Any:
        future = await send(self, to, *args, **kwargs)
        if to == topic:
            future.add_done_callback(done)
        return future

    monkeypatch.setattr(AIOKafkaProducer, "send", counting_send)
    return acked


def configure(setup: Setup) -> None:
    """Windows close by watermark only: an idle close during the outage would close a
    window early and count its later events as late."""
    config = yaml.safe_load(setup.config_path.read_text())
    config["window"]["idle_close"] = "1h"
    config["kafka"]["batch_size"] = 500  # more batches, more state writes in flight
    config["kafka"]["outcomes_topic"] = f"{setup.prefix}.outcomes"
    config["kafka"]["quality_topic"] = f"{setup.prefix}.quality"
    setup.config_path.write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_broker_restart_mid_stream_loses_nothing(
    kill: bool,
    kafka: LocalKafka,
    setup: Setup,
    start_worker: Callable[..., Popen[bytes]],
    processes: Processes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka.up()  # a no-op, unless an earlier test failed with the broker down
    bootstrap = kafka.bootstrap
    configure(setup)
    windows = scaled(12, 30)
    per_window = scaled(3_000, 20_000)
    chunk = 100
    now = int(time.time() * 1000)
    t0 = now - 3 * 3_600_000 - WINDOW * windows
    t0 -= t0 % WINDOW
    plan = [window_chunks(t0, w, per_window, chunk) for w in range(windows)]
    closer = Chunk(
        ["closer"],
        [t0 + (windows + 1) * WINDOW + 90_000],
        {"amount": [20.0], "age": [40.0], "country": ["DE"]},
        [0.5],
    )
    # Drift episodes end in windows 2, 5, 8, ...; each raises its retrain events once the
    # next window is a lateness (1 min) in. Before the outage: up to a quarter into window
    # 6 (the first episode's events are delivered, the second's are at the receiver, held
    # by its command); in one burst, the hook's sender in the middle of sending it when
    # the broker stops: up to the end of window 8; while the broker is down: window 9;
    # after the restart: the rest and an event that closes the last window.
    per = len(plan[0])
    flat = [c for w in plan for c in w]
    cuts = [6 * per + per // 4, 9 * per, 10 * per]
    before, burst, during, after = (
        flat[: cuts[0]],
        flat[cuts[0] : cuts[1]],
        flat[cuts[1] : cuts[2]],
        [*flat[cuts[2] :], closer],
    )
    n_events = windows * per_window + 1

    # the components: receiver, dispatcher, worker, hook
    port = free_port()
    seen = setup.tmp / "seen"
    env = {"DRIFTLINE_WEBHOOK_SECRET": SECRET}
    gate = setup.tmp / "gate"
    gate.mkdir()
    (gate / "hold.py").write_text(HOLD)
    receiver = processes.cli(
        "receiver", "--port", str(port), "--seen-file", str(seen), "--command",
        sys.executable, str(gate / "hold.py"), str(gate), str(t0 + 3 * WINDOW),
        log=setup.tmp / "receiver.log", env=env,
    )  # fmt: skip
    dispatcher_group = f"{setup.prefix}-dispatcher"
    dispatcher_port = free_port()
    dispatcher = processes.cli(
        "dispatcher", "--bootstrap", bootstrap, "--url", f"http://127.0.0.1:{port}/retrain",
        "--topic", setup.retrain, "--dlq-topic", f"{setup.retrain}.dlq",
        "--group", dispatcher_group, "--base-delay", "0.2", "--max-delay", "1",
        "--max-attempts", "1000", "--metrics-port", str(dispatcher_port),
        log=setup.tmp / "dispatcher.log", env=env,
    )  # fmt: skip
    worker_port = free_port()
    worker = start_worker(metrics_port=worker_port)
    worker_group = f"{setup.prefix}-worker"
    hook = SyncPublisher(
        PublisherConfig(
            bootstrap=bootstrap,
            topic=setup.events,
            max_queue=1_000_000,  # the whole run fits: nothing may be dropped
            batch_size=HOOK_BATCH,
            retry_backoff_s=0.2,
            max_backoff_s=1.0,
        )
    )
    procs = {"worker": worker, "dispatcher": dispatcher, "receiver": receiver}
    acked = count_acks(monkeypatch, setup.events)

    def counted() -> float:
        return metric(scrape(worker_port), "driftline_events_total", model="fraud")

    def status() -> dict[str, Any]:
        return {
            "counted": counted(),
            "hook_queue": hook.queued,
            "hook_sent": hook.metrics.sent._value.get(),
            "received": received(port),
            "exited": {k: p.returncode for k, p in procs.items() if p.poll() is not None},
            "worker_offsets": group_offsets(bootstrap, worker_group, setup.events),
        }

    try:
        wait_for(lambda: received(port) == 0, 60, "the receiver")
        wait_for(lambda: scrape(worker_port), 60, "the worker's metrics endpoint")
        recorded = sum(c.record(hook) for c in before)
        wait_for(lambda: counted() == recorded, 120, "the first part counted", status=status)
        # the second episode's first event is at the receiver: the dispatcher is mid-delivery
        wait_for(lambda: (gate / "holding").exists(), 60, "a delivery held", status=status)
        first_episode = received(port)  # delivered before, in partition order
        assert first_episode >= 1

        # a burst of envelopes: the broker stops while the hook's sender sends them, once
        # the first two are acknowledged
        errors_before = hook.metrics.errors._value.get()
        acked_before = acked[0]
        in_burst = sum(c.record(hook) for c in burst)
        recorded += in_burst
        wait_for(lambda: acked[0] >= acked_before + 2, 30, "the burst under way", every=0.0005)
        stopped = time.monotonic()
        kafka.down(kill=kill)
        stop_s = time.monotonic() - stopped
        burst_acked = acked[0] - acked_before
        # the held deliveries complete while Kafka is down: their offsets are committed
        # only once it is back (after a SIGKILL, to a group that has forgotten the member)
        (gate / "open").touch()
        wait_for(
            lambda: received(port) >= first_episode + 1,
            60,
            "deliveries during the outage",
            status=status,
        )
        delivered_in_outage = received(port) - first_episode
        recorded_in_outage = sum(c.record(hook) for c in during)
        recorded += recorded_in_outage
        # the outage lasts longer than the consumers' session timeouts (10 s), and the
        # hook notices it: send attempts fail while its queue holds the events
        wait_for(
            lambda: (
                time.monotonic() - stopped >= OUTAGE_S
                and hook.metrics.errors._value.get() >= errors_before + 2
            ),
            OUTAGE_S + 60,
            "the hook to see the outage",
        )
        queued_in_outage = hook.queued
        restarted = time.monotonic()
        kafka.up()
        outage_s = time.monotonic() - stopped
        up_s = time.monotonic() - restarted
        recorded += sum(c.record(hook) for c in after)
        assert recorded == n_events

        # everything recovers by itself
        wait_for(lambda: hook.queued == 0, 120, "the hook's queue to drain", status=status)
        hook_drained_s = time.monotonic() - restarted
        wait_for(lambda: counted() >= n_events, 180, "every event counted", status=status)
        worker_caught_up_s = time.monotonic() - restarted

        def all_reports() -> list[dict[str, Any]] | None:
            got = [json.loads(v) for v in consume_all(bootstrap, setup.reports)]
            return got if len({r["report_id"] for r in got}) >= windows else None

        reports: list[dict[str, Any]] = wait_for(
            all_reports, 120, f"{windows} window reports", status=status
        )
        expected = {e["id"] for e in evaluate_all(default_rules(), reports).retrain}
        wait_for(
            lambda: received(port) >= len(expected),
            120,
            "every retrain event delivered",
            status=status,
        )
        delivered_s = time.monotonic() - restarted
        wait_for(
            lambda: group_state(bootstrap, worker_group, setup.events)[1] == 0,
            60,
            "the worker's offsets committed",
            status=status,
        )
        wait_for(
            lambda: group_state(bootstrap, dispatcher_group, setup.retrain)[1] == 0,
            60,
            "the dispatcher's offsets committed",
            status=status,
        )
        reports = [json.loads(v) for v in consume_all(bootstrap, setup.reports)]  # late repeats
        retrain = [json.loads(v) for v in consume_all(bootstrap, setup.retrain)]
        samples = scrape(worker_port)
        dispatched = scrape(dispatcher_port)
        seen_ids = seen.read_text().split()
        unique = {r["report_id"]: r for r in reports}
        rows = {(r["window_start_ms"] - t0) // WINDOW: r["rows"] for r in unique.values()}
        # what the hook put on the topic: every event, and any it had to send again
        published = Counter(
            e.event_id for raw in consume_all(bootstrap, setup.events) for e in decode(raw).events
        )
        resent: Counter[int] = Counter()  # events sent twice or more, per window
        for event_id, n in published.items():
            if n > 1 and event_id.startswith("w"):
                resent[int(event_id[1:].split("-")[0])] += n - 1
        worker_log = setup.tmp / "w1.log"
        record_figures(
            f"broker_restart_{'sigkill' if kill else 'sigterm'}",
            {
                "events": n_events,
                "windows": windows,
                "broker_stop_s": round(stop_s, 1),
                "broker_up_s": round(up_s, 1),
                "outage_s": round(outage_s, 1),
                "recorded_during_outage": recorded_in_outage,
                "burst_envelopes": -(-in_burst // HOOK_BATCH),
                "burst_envelopes_acked_before_the_stop": burst_acked,
                "retrain_delivered_during_outage": delivered_in_outage,
                "hook_queue_in_outage": queued_in_outage,
                "hook_send_errors": hook.metrics.errors._value.get(),
                "hook_drained_after_s": round(hook_drained_s, 1),
                "worker_caught_up_after_s": round(worker_caught_up_s, 1),
                "retrain_delivered_after_s": round(delivered_s, 1),
                "reports": len(reports),
                "reports_unique": len(unique),
                "rows_total": sum(rows.values()),
                "hook_events_sent_twice": sum(resent.values()),
                "retrain_expected": len(expected),
                "retrain_published": len(retrain),
                "retrain_received": len(seen_ids),
                "dispatcher_delivered": metric(
                    dispatched, "driftline_dispatcher_events_total", outcome="delivered"
                ),
                "dispatcher_failed_posts": metric(
                    dispatched, "driftline_dispatcher_failed_posts_total"
                ),
                "dispatcher_commits_refused": (setup.tmp / "dispatcher.log")
                .read_text()
                .count("offset commit refused"),
                "worker_redelivered": metric(samples, "driftline_redelivered_messages_total"),
                "worker_duplicates_skipped": metric(
                    samples, "driftline_duplicate_events_total", model="fraud"
                ),
                "worker_log_error_lines": len(crashes(worker_log)),
                "full": FULL,
            },
        )
        # no component was restarted: each is the process started above, and none of them
        # logged a crash on the way
        assert {k: p.poll() for k, p in procs.items()} == dict.fromkeys(procs)
        for name in ("w1", "dispatcher", "receiver"):
            assert crashes(setup.tmp / f"{name}.log") == [], name
        # the hook: everything recorded was sent, nothing dropped
        assert recorded_in_outage > 0
        assert queued_in_outage > 0
        assert hook.queued == 0
        assert hook.metrics.dropped.labels("queue_full")._value.get() == 0
        assert hook.metrics.dropped.labels("bad_input")._value.get() == 0
        assert hook.metrics.sent._value.get() == n_events
        assert len(published) == n_events
        # The hook sends again only what the broker did not acknowledge; an envelope the
        # broker wrote but stopped before acknowledging goes twice (at least once), and
        # its events count twice: at most one (the hook's produce requests carry one
        # envelope here: one model, one partition)
        assert sum(resent.values()) <= HOOK_BATCH, resent
        # the worker: every window once, every message once (the closer's window is open)
        assert len(unique) == windows
        assert rows == {w: per_window + resent[w] for w in range(windows)}, rows
        for report in reports:  # a report published again is the same report
            assert report == unique[report["report_id"]], report["report_id"]
        assert all(r["late_events"] == 0 for r in unique.values())
        counted_events = metric(samples, "driftline_events_total", model="fraud")
        assert counted_events == n_events + sum(resent.values())
        assert consume_all(bootstrap, setup.dlq) == []
        # retrain events: the expected ones, each at the receiver exactly once, signed
        assert len(expected) >= 4
        assert {e["id"] for e in retrain} == expected
        assert sorted(seen_ids) == sorted(expected)
        assert received(port) == len(expected)
        assert "rejected" not in (setup.tmp / "receiver.log").read_text()
        assert consume_all(bootstrap, f"{setup.retrain}.dlq") == []
    finally:
        hook.close()
        kafka.up()  # the next test gets a running broker


class _Producer:
    """Stands in for the dispatcher's producer: fails with the given errors, then writes."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((topic, value, key))


def test_a_dead_letter_waits_for_kafka_to_come_back() -> None:
    """A dead letter due while Kafka is down (a receiver that refuses an event during a
    broker restart) is written once Kafka answers again; the dispatcher used to exit
    with the producer's error after its 40 s metadata wait. Errors no retry can fix
    still end it, and a stop during the wait leaves the event uncommitted."""
    settings = DispatcherSettings(
        bootstrap="127.0.0.1:1", urls=[], secret=b"x", base_delay_s=0.001, max_delay_s=0.01
    )
    dispatcher = Dispatcher(settings, rng=random.Random(1))
    down = _Producer(KafkaTimeoutError(), UnknownTopicOrPartitionError(), KafkaConnectionError())
    asyncio.run(dispatcher._dead_letter(cast(Any, down), b"{}", b"fraud", "HTTP 401", "u"))
    assert [(topic, key) for topic, _, key in down.sent] == [(settings.dlq_topic, b"fraud")]
    assert dispatcher.dead == 1
    too_big = _Producer(MessageSizeTooLargeError())
    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(dispatcher._dead_letter(cast(Any, too_big), b"{}", None, "HTTP 401", "u"))
    dispatcher.stop()
    with pytest.raises(_StoppingError):
        asyncio.run(
            dispatcher._dead_letter(cast(Any, _Producer(KafkaTimeoutError())), b"{}", None, "", "")
        )
    assert dispatcher.dead == 1
