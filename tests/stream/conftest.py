"""Factories for stream tests: events and profiles with keyword defaults."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from stream.events import Event
from stream.profiles import ModelProfile

T0 = 1_795_341_600_000  # 2026-11-22T10:00:00Z, on an hour boundary
_ids = itertools.count()


@pytest.fixture
def make_event() -> Callable[..., Event]:
    def make(
        ts: int = T0,
        model: str = "fraud",
        model_version: str = "3",
        amount: float | None = 10.0,
        country: str | None = "DE",
        prediction: float | None = 0.5,
        latency_ms: float | None = 10.0,
        status: str = "ok",
        **extra: float | str | None,
    ) -> Event:
        return Event(
            event_id=f"e{next(_ids)}",
            model=model,
            model_version=model_version,
            ts=ts,
            features={"amount": amount, "country": country, **extra},
            prediction=prediction,
            latency_ms=latency_ms,
            status=status,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def make_profile() -> Callable[..., ModelProfile]:
    def make(
        model: str = "fraud", model_version: str = "3", n: int = 5_000, seed: int = 0
    ) -> ModelProfile:
        rng = np.random.default_rng(seed)
        return ModelProfile.build(
            model,
            model_version,
            {
                "amount": rng.lognormal(3, 0.5, n),
                "country": rng.choice(["DE", "FR", "NL"], n, p=[0.5, 0.3, 0.2]).tolist(),
            },
            prediction=rng.uniform(size=n),
        )

    return make
