"""The worker's handler without Kafka: dead letters, reports, saved state and redelivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.config import MonitorConfig
from stream.engine import WindowEngine, iso
from stream.events import Event, decode, decode_columns, encode_event
from stream.metrics import WorkerMetrics
from stream.profiles import ModelProfile
from stream.state import MemoryState
from stream.worker import Handler, Sequencer

from .conftest import T0

MIN = 60_000


class Sink:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.dlq: list[dict[str, Any]] = []

    async def report(self, key: bytes, value: bytes) -> None:
        self.reports.append(json.loads(value))

    async def dead(self, value: bytes) -> None:
        self.dlq.append(json.loads(value))


def make_handler(profile: ModelProfile, state: MemoryState, sink: Sink) -> Handler:
    config = MonitorConfig.model_validate(
        {
            "window": {"size": "10m", "lateness": "0s", "idle_close": "1m"},
            "models": [{"name": "fraud", "reference": "unused"}],
            "limits": {"max_future": None},
            "base_dir": Path("."),
        }
    )
    engine = WindowEngine(config.window.spec(), lambda m, v: profile if m == "fraud" else None)
    return Handler(
        config=config,
        engine=engine,
        metrics=WorkerMetrics(),
        send_report=sink.report,
        send_dlq=sink.dead,
        state=state,
    )


def test_redelivered_messages_after_a_restart_are_not_counted_twice(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    profile = make_profile()
    messages = [(1, i, encode_event(make_event(ts=T0 + i * 1000))) for i in range(300)]
    closer = [(1, 300, encode_event(make_event(ts=T0 + 10 * MIN)))]
    state = MemoryState()
    sink = Sink()
    first = make_handler(profile, state, sink)
    asyncio.run(first.handle(messages[:200]))
    assert "fraud" in state  # saved after the batch
    # the worker dies; its successor restores the state and is handed messages again
    # from an older committed offset
    second = make_handler(profile, state, sink)
    asyncio.run(second.handle(messages[100:] + closer))
    (report,) = sink.reports
    assert report["rows"] == 300
    assert second.metrics.duplicates.labels("fraud")._value.get() == 100
    assert sink.dlq == []


def test_a_partition_given_back_is_read_again_from_the_saved_state(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    # worker A counts part of a window, loses the partition to B, which counts more and
    # saves; when A is given the partition again it must start from B's state, not from
    # what it had in memory
    profile = make_profile()
    messages = [(2, i, encode_event(make_event(ts=T0 + i * 1000))) for i in range(300)]
    closer = [(2, 300, encode_event(make_event(ts=T0 + 10 * MIN)))]
    state = MemoryState()
    sink = Sink()
    a = make_handler(profile, state, sink)
    b = make_handler(profile, state, sink)
    asyncio.run(a.handle(messages[:100]))
    asyncio.run(a.revoke({2}))
    asyncio.run(b.handle(messages[100:200]))
    asyncio.run(b.revoke({2}))
    # A remembers it read up to 99 and re-reads from 100 (Sequencer); the state it
    # reads back already counts 100..199, which are skipped
    asyncio.run(a.handle(messages[100:] + closer))
    (report,) = sink.reports
    assert report["rows"] == 300
    assert a.metrics.duplicates.labels("fraud")._value.get() == 100
    # a partition it never gave away is not read again: its newest state is its own
    asyncio.run(a.handle([(3, 0, encode_event(make_event(ts=T0 + 11 * MIN)))]))
    assert sorted(state.partitions) == [2]  # the model lives on partition 2 only


def test_bad_messages_and_events_become_dead_letters(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    sink = Sink()
    handler = make_handler(make_profile(), MemoryState(), sink)
    good = [encode_event(make_event(ts=T0 + i)) for i in range(10)]
    bad = [
        b"{oops",
        encode_event(make_event(model="ghost")),
        encode_event(make_event(amount="lots")),
    ]
    values = good[:5] + bad + good[5:]
    outcome = asyncio.run(handler.handle([(0, i, v) for i, v in enumerate(values)]))
    assert outcome.accepted == 10
    assert [d["reason"] for d in sink.dlq] == [
        "invalid_json",
        "unknown_model",
        "feature_type_mismatch",
    ]
    assert [d["source"]["offset"] for d in sink.dlq] == [5, 6, 7]
    assert handler.metrics.invalid.labels("unknown_model")._value.get() == 1
    # the quiet model's window is closed by the timer once idle_close has passed
    closed = asyncio.run(handler.tick(now_ms=10**13))
    assert [r["rows"] for r in closed.reports] == [10]
    assert sink.reports[0]["rows"] == 10


def test_events_only_the_exact_decoder_accepts_are_counted_too(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    """drift_core's column decoder leaves what it is not sure of (here a repeated feature
    name, which the contract's decoder takes as its last value) to the exact decoder:
    such events are counted, redelivered copies skipped, like every other."""
    sink, state = Sink(), MemoryState()
    handler = make_handler(make_profile(), state, sink)
    good = [encode_event(make_event(ts=T0 + i)) for i in range(10)]
    odd = encode_event(make_event(ts=T0 + 20, amount=1.0)).replace(
        b'"features":{', b'"features":{"amount":"first",'
    )
    assert decode_columns([odd]).groups == []
    assert len(decode(odd).events) == 1
    messages = [(0, i, v) for i, v in enumerate([*good[:5], odd, *good[5:]])]
    outcome = asyncio.run(handler.handle(messages))
    assert outcome.accepted == 11
    assert handler.metrics.events.labels("fraud")._value.get() == 11
    restarted = make_handler(make_profile(), state, sink)
    asyncio.run(restarted.handle(messages[3:]))  # redelivered after a restart: skipped
    assert restarted.metrics.duplicates.labels("fraud")._value.get() == 8
    assert restarted.metrics.events.labels("fraud")._value.get() == 0
    assert sink.dlq == []
    closed = asyncio.run(handler.tick(now_ms=10**13))
    assert [r["rows"] for r in closed.reports] == [11]
    assert closed.reports[0]["features"]["amount"]["n"] == 11


def test_messages_handed_twice_in_one_batch_are_applied_once(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    # after a rebalance a consumer can hand a range again, in the same batch, before the
    # state of the first copy is saved
    messages = [(1, i, encode_event(make_event(ts=T0 + i * 1000))) for i in range(100)]
    closer = (1, 100, encode_event(make_event(ts=T0 + 10 * MIN)))
    sink = Sink()
    handler = make_handler(make_profile(), MemoryState(), sink)
    asyncio.run(handler.handle(messages[:51] + messages + [closer]))
    (report,) = sink.reports
    assert report["rows"] == 100
    assert handler.metrics.redelivered._value.get() == 51


def test_a_message_the_consumer_skipped_is_read_again_before_later_ones(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    messages = [(1, i, encode_event(make_event(ts=T0 + i * 1000))) for i in range(200)]
    closer = (1, 200, encode_event(make_event(ts=T0 + 10 * MIN)))
    sink = Sink()
    handler = make_handler(make_profile(), MemoryState(), sink)
    sought: list[tuple[int, int]] = []

    async def seek(partition: int, offset: int) -> None:
        sought.append((partition, offset))

    handler.seek = seek
    asyncio.run(handler.handle(messages[:100]))
    # message 150 is lost on its way to the stream; 151.. arrive
    outcome = asyncio.run(handler.handle(messages[100:150] + messages[151:]))
    # sought back to the hole (again after the held messages: a fetcher can undo a seek
    # made while it hands out a batch)
    assert set(sought) == {(1, 150)}
    assert outcome.held == list(range(50, 99))  # not acked: they come again
    assert sink.reports == []
    # the seek delivers 150 onwards; late copies of the old fetch are skipped
    asyncio.run(handler.handle(messages[150:] + messages[160:170] + [closer]))
    (report,) = sink.reports
    assert report["rows"] == 200
    assert handler.metrics.gaps._value.get() == 1
    assert handler.metrics.duplicates.labels("fraud")._value.get() == 0


def test_a_hole_in_the_log_itself_is_passed_after_the_patience() -> None:
    seq = Sequencer(patience_s=5.0)
    assert seq.check(0, 10, now=0.0) == Sequencer.TAKE
    assert seq.check(0, 12, now=1.0) == Sequencer.SEEK  # 11 missing: seek back once
    assert seq.check(0, 13, now=2.0) == Sequencer.HOLD
    assert seq.check(0, 12, now=3.0) == Sequencer.HOLD  # the seek re-delivers from 12
    assert seq.check(0, 12, now=6.5) == Sequencer.TAKE  # 11 is not coming (a marker)
    assert seq.check(0, 13, now=6.6) == Sequencer.TAKE
    assert seq.check(0, 12, now=6.7) == Sequencer.AGAIN
    # another partition has its own sequence; a rebalance that takes it away forgets it
    assert seq.check(1, 500, now=7.0) == Sequencer.TAKE
    seq.keep_only({0})
    assert seq.next_offset(1) is None
    assert seq.check(1, 900, now=8.0) == Sequencer.TAKE


@pytest.mark.parametrize("hop", [None, "5m"])
def test_the_columnar_path_reports_what_the_event_path_does(
    make_profile: Callable[..., ModelProfile], hop: str | None
) -> None:
    """The handler decodes messages into columns; the engine's event path, fed the same
    messages decoded one event at a time in the same batches, must give equal reports:
    versions of a model interleaved (one watermark), late and out-of-order events, text
    timestamps, missing values, features the reference lacks (present, null or absent),
    errors, a value of the wrong kind, single events and envelopes."""
    profiles = {
        ("fraud", "3"): make_profile(),
        ("fraud", "4"): make_profile(model_version="4", seed=1),
        ("churn", "1"): make_profile(model="churn", model_version="1", seed=2),
    }
    config = MonitorConfig.model_validate(
        {
            "window": {"size": "10m", "hop": hop, "lateness": "1m", "idle_close": "1h"},
            "models": [{"name": "fraud", "reference": "x"}, {"name": "churn", "reference": "x"}],
            "limits": {"max_future": None},
            "base_dir": Path("."),
        }
    )
    resolve = lambda m, v: profiles.get((m, v))  # noqa: E731
    sink = Sink()
    handler = Handler(
        config=config,
        engine=WindowEngine(config.window.spec(), resolve),
        metrics=WorkerMetrics(),
        send_report=sink.report,
        send_dlq=sink.dead,
        state=MemoryState(),
    )
    reference = WindowEngine(config.window.spec(), resolve)
    rng = np.random.default_rng(7)
    docs = []
    for i in range(3_000):
        ts = T0 + i * 800 + int(rng.integers(-400_000, 30_000))  # out of order, some late
        features: dict[str, Any] = {
            "amount": None if rng.random() < 0.05 else float(rng.lognormal(3, 0.5)),
            "country": str(rng.choice(["DE", "FR", "NL", "IT"])),
        }
        if rng.random() < 0.3:
            features["extra"] = None if rng.random() < 0.3 else 1.0
        if i == 1_234:  # the wrong kind, on time: dead-lettered on both paths
            features["amount"] = "lots"
            ts = T0 + i * 800 + 30_000
        docs.append(
            {
                "schema": "driftline.event/v1",
                "event_id": f"c{i}",
                "model": "fraud" if rng.random() < 0.7 else "churn",
                "model_version": str(rng.choice(["3", "4"])),
                "ts": ts if rng.random() < 0.9 else iso(ts).replace("+00:00", "Z"),
                "features": features,
                "prediction": float(rng.uniform()),
                "latency_ms": None if rng.random() < 0.1 else float(rng.lognormal(2, 0.3)),
                "status": "error" if rng.random() < 0.02 else "ok",
            }
        )
    for doc in docs:
        if doc["model"] == "churn":
            doc["model_version"] = "1"
    values: list[bytes] = []
    at = 0
    while at < len(docs):
        n = int(rng.choice([1, 1, 7, 40]))
        chunk = docs[at : at + n]
        at += n
        if n == 1:
            values.append(json.dumps(chunk[0]).encode())
        else:
            values.append(json.dumps({"schema": "driftline.batch/v1", "events": chunk}).encode())
    expected: list[dict[str, Any]] = []
    for start in range(0, len(values), 60):
        batch = values[start : start + 60]
        asyncio.run(handler.handle([(0, start + i, v) for i, v in enumerate(batch)]))
        events = [e for v in batch for e in decode(v).events]
        expected.extend(reference.process(events).reports)
    expected.extend(reference.flush().reports)
    sink.reports.extend(json.loads(json.dumps(r)) for r in handler.engine.flush().reports)
    assert len(expected) >= 8
    # the order among models is not defined (each model's own is)
    expected = sorted(json.loads(json.dumps(expected)), key=lambda r: r["report_id"])
    reports = sorted(sink.reports, key=lambda r: r["report_id"])
    assert [r["report_id"] for r in reports] == [r["report_id"] for r in expected]
    for got, want in zip(reports, expected, strict=True):
        assert {k: (got[k], want[k]) for k in want if got[k] != want[k]} == {}, got["report_id"]
    assert sum(r["unknown_feature_values"] for r in expected) > 0
    assert sum(r["late_events"] for r in expected) > 0
    assert [d["reason"] for d in sink.dlq] == ["feature_type_mismatch"]
