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
from stream.worker import Handler

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


def make_handler(profile: ModelProfile, state: dict[str, bytes], sink: Sink) -> Handler:
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
        load_state=state.get,
        save_state=state.__setitem__,
    )


def test_redelivered_messages_after_a_restart_are_not_counted_twice(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    profile = make_profile()
    messages = [(1, i, encode_event(make_event(ts=T0 + i * 1000))) for i in range(300)]
    closer = [(1, 300, encode_event(make_event(ts=T0 + 10 * MIN)))]
    state: dict[str, bytes] = {}
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


def test_bad_messages_and_events_become_dead_letters(
    make_profile: Callable[..., ModelProfile], make_event: Callable[..., Event]
) -> None:
    sink = Sink()
    handler = make_handler(make_profile(), {}, sink)
    good = [(0, i, encode_event(make_event(ts=T0 + i))) for i in range(10)]
    bad = [
        (0, 10, b"{oops"),
        (0, 11, encode_event(make_event(model="ghost"))),
        (0, 12, encode_event(make_event(amount="lots"))),
    ]
    outcome = asyncio.run(handler.handle(good[:5] + bad + good[5:]))
    assert outcome.accepted == 10
    assert [d["reason"] for d in sink.dlq] == [
        "invalid_json",
        "unknown_model",
        "feature_type_mismatch",
    ]
    assert [d["source"]["offset"] for d in sink.dlq] == [10, 11, 12]
    assert handler.metrics.invalid.labels("unknown_model")._value.get() == 1
    # the quiet model's window is closed by the timer once idle_close has passed
    closed = asyncio.run(handler.tick(now_ms=10**13))
    assert [r["rows"] for r in closed.reports] == [10]
    assert sink.reports[0]["rows"] == 10
