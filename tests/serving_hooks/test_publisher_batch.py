"""The publisher's batch path (``record_many``) and its encoder's fallbacks, without a
broker."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from serving_hooks.publisher import AsyncPublisher

from .conftest import as_wire, dropped, queued


def test_record_many_queues_one_event_per_row(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    n = pub.record_many(
        "fraud",
        "3",
        {"amount": [1.0, 2.0, None], "country": ["DE", "FR", "NL"]},
        [0.1, 0.2, 0.3],
        latency_ms=4.5,
    )
    assert n == 3
    events = as_wire(pub)
    assert [e.features for e in events] == [
        {"amount": 1.0, "country": "DE"},
        {"amount": 2.0, "country": "FR"},
        {"amount": None, "country": "NL"},
    ]
    assert [e.prediction for e in events] == [0.1, 0.2, 0.3]
    assert {(e.model, e.model_version, e.latency_ms, e.status) for e in events} == {
        ("fraud", "3", 4.5, "ok")
    }
    assert len({e.event_id for e in events}) == 3
    assert all(len(e.event_id) == 32 for e in events)
    assert len({e.ts for e in events}) == 1
    # the same keys as record() makes
    pub.record("fraud", "3", {"amount": 1.0})
    shapes = {tuple(sorted(e)) for e in queued(pub)}
    assert len(shapes) == 1


def test_record_many_with_ids_times_and_without_predictions(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    pub.record_many(
        "fraud",
        "3",
        {"amount": [1.0, 2.0]},
        status="error",
        event_ids=["a", "b"],
        ts_ms=[1_795_341_600_000, 1_795_341_600_500],
    )
    events = as_wire(pub)
    assert [(e.event_id, e.ts, e.prediction, e.status) for e in events] == [
        ("a", 1_795_341_600_000, None, "error"),
        ("b", 1_795_341_600_500, None, "error"),
    ]


def test_record_many_never_raises_on_bad_input(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    assert pub.record_many("fraud", "3", {"a": [1.0, 2.0], "b": [1.0]}) == 0
    assert pub.record_many("fraud", "3", {"a": [1.0]}, [0.1, 0.2]) == 0
    assert pub.record_many("fraud", "3", {"a": [1.0]}, event_ids=["x", "y"]) == 0
    assert pub.record_many("fraud", "3", {"a": 5}) == 0  # type: ignore[dict-item]
    assert pub.queued == 0
    assert dropped(pub) == 2 + 2 + 1 + 1  # the rows each call meant to record


def test_record_many_respects_max_queue(make_publisher: Callable[..., AsyncPublisher]) -> None:
    pub = make_publisher(max_queue=5)
    pub.record("fraud", "3", {"a": 0.0})
    assert pub.record_many("fraud", "3", {"a": [float(i) for i in range(10)]}) == 4
    assert pub.queued == 5
    assert dropped(pub, "queue_full") == 6
    assert [e["features"]["a"] for e in queued(pub)] == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_encoder_turns_numpy_scalars_into_numbers(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    pub.record(
        "fraud",
        "3",
        {"amount": np.float64(2.5), "n": np.int32(4), "flag": np.bool_(True), "c": np.str_("DE")},
        prediction=np.float32(0.75),
        latency_ms=np.float64(1.5),
    )
    (event,) = as_wire(pub)
    assert event.features == {"amount": 2.5, "n": 4.0, "flag": 1.0, "c": "DE"}
    assert event.prediction == 0.75
    assert event.latency_ms == 1.5


def test_encoder_drops_what_it_cannot_encode_and_keeps_the_rest(
    make_publisher: Callable[..., AsyncPublisher], caplog: pytest.LogCaptureFixture
) -> None:
    pub = make_publisher()
    pub.record("fraud", "3", {"a": 1.0}, event_id="before")
    pub.record("fraud", "3", {"a": np.array([1.0, 2.0])}, event_id="bad")
    pub.record("fraud", "3", {"a": 2.0}, event_id="after")
    body, kept = pub._core.encode(queued(pub))
    assert [e["event_id"] for e in kept] == ["before", "after"]
    assert dropped(pub) == 1
    assert "dropped 1 events it cannot encode" in caplog.text
    from stream.events import decode

    assert [e.event_id for e in decode(body, now_ms=None).events] == ["before", "after"]
