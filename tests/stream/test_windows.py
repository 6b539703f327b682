"""Window assignment, watermark, lateness and hop with explicit timestamps."""

from __future__ import annotations

import pytest

from stream.windows import WindowSpec, WindowSpecError

MIN = 60_000


def test_tumbling_assignment() -> None:
    spec = WindowSpec(size_ms=10 * MIN)
    assert list(spec.starts(0)) == [0]
    assert list(spec.starts(10 * MIN - 1)) == [0]
    assert list(spec.starts(10 * MIN)) == [10 * MIN]
    assert list(spec.starts(25 * MIN + 7)) == [20 * MIN]
    assert spec.end(20 * MIN) == 30 * MIN


def test_hopping_assignment() -> None:
    spec = WindowSpec(size_ms=10 * MIN, hop_ms=5 * MIN)
    assert list(spec.starts(12 * MIN)) == [5 * MIN, 10 * MIN]
    assert list(spec.starts(10 * MIN)) == [5 * MIN, 10 * MIN]
    assert list(spec.starts(9 * MIN)) == [0, 5 * MIN]
    # a hop that does not divide the size
    odd = WindowSpec(size_ms=10 * MIN, hop_ms=3 * MIN)
    for ts in range(0, 40 * MIN, 17_000):
        starts = list(odd.starts(ts))
        assert starts, ts
        assert all(s <= ts < s + 10 * MIN for s in starts)
        assert all(s % (3 * MIN) == 0 for s in starts)
        # and no window holding ts is missing
        assert len(starts) == sum(
            1 for s in range(-12 * MIN, ts + 1, 3 * MIN) if s <= ts < s + 10 * MIN
        )


def test_watermark_and_lateness() -> None:
    spec = WindowSpec(size_ms=10 * MIN, lateness_ms=2 * MIN)
    assert spec.watermark(11 * MIN) == 9 * MIN
    assert not spec.is_closed(0, spec.watermark(11 * MIN))
    assert spec.is_closed(0, spec.watermark(12 * MIN))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_ms": 0}, "size must be positive"),
        ({"size_ms": 10, "hop_ms": 20}, "hop must be positive and at most"),
        ({"size_ms": 10, "lateness_ms": -1}, "lateness must be >= 0"),
    ],
)
def test_bad_specs(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(WindowSpecError, match=message):
        WindowSpec(**kwargs)
