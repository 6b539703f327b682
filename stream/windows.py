"""Event-time window arithmetic: plain functions with explicit timestamps."""

from __future__ import annotations

from dataclasses import dataclass

from stream.errors import StreamError


class WindowSpecError(StreamError):
    """Window size, hop or lateness that cannot work."""


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Tumbling windows of ``size_ms`` (or hopping ones every ``hop_ms``), aligned to the
    epoch; a window closes once the watermark (latest event time seen minus
    ``lateness_ms``) reaches its end."""

    size_ms: int
    hop_ms: int | None = None
    lateness_ms: int = 0

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise WindowSpecError(f"window size must be positive, got {self.size_ms} ms")
        if self.hop_ms is not None and not 0 < self.hop_ms <= self.size_ms:
            raise WindowSpecError(
                f"hop must be positive and at most the window size ({self.size_ms} ms), "
                f"got {self.hop_ms} ms"
            )
        if self.lateness_ms < 0:
            raise WindowSpecError(f"lateness must be >= 0, got {self.lateness_ms} ms")

    @property
    def step_ms(self) -> int:
        return self.hop_ms or self.size_ms

    def starts(self, ts_ms: int) -> range:
        """Starts of every window holding ``ts_ms`` (one when tumbling), ascending."""
        step = self.step_ms
        last = ts_ms - ts_ms % step
        first = last - ((self.size_ms - 1) // step) * step
        # drop windows that end at or before ts (possible when size is not a multiple of hop)
        while first + self.size_ms <= ts_ms:
            first += step
        return range(first, last + 1, step)

    def end(self, start_ms: int) -> int:
        return start_ms + self.size_ms

    def watermark(self, max_ts_ms: int) -> int:
        return max_ts_ms - self.lateness_ms

    def is_closed(self, start_ms: int, watermark_ms: int) -> bool:
        return self.end(start_ms) <= watermark_ms
