"""Fixtures for serving_hooks unit tests: publishers that are never started, so what a
hook records stays in their queue, where the tests read it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from serving_hooks.publisher import AsyncPublisher, PublisherConfig, SyncPublisher
from stream.events import Event, decode


@pytest.fixture
def make_publisher() -> Callable[..., AsyncPublisher]:
    """An unstarted AsyncPublisher: ``record`` queues, nothing is sent."""

    def make(**config: Any) -> AsyncPublisher:
        return AsyncPublisher(PublisherConfig(**config))

    return make


def queued(pub: AsyncPublisher | SyncPublisher) -> list[dict[str, Any]]:
    """What the publisher holds, as the sender would take it."""
    return list(pub._core.queue)


def as_wire(pub: AsyncPublisher | SyncPublisher) -> list[Event]:
    """The queued events through the sender's encoder and the worker's decoder: what the
    stream would see. Fails if any event does not validate."""
    body, _ = pub._core.encode(queued(pub))
    decoded = decode(body, now_ms=None)
    assert decoded.invalid == [], decoded.invalid
    return decoded.events


def dropped(pub: AsyncPublisher | SyncPublisher, reason: str = "bad_input") -> float:
    pub._core.fold_counts()
    value: float = pub.metrics.dropped.labels(reason)._value.get()
    return value
