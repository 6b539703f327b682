"""The worker's handler without Kafka: dead letters, reports, saved state and redelivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.config import MonitorConfig
from stream.engine import WindowEngine
from stream.events import Event, encode_event
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
