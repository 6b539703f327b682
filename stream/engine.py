"""The window engine: events in, WindowReports out. Plain code, no Kafka, no Faust.

One engine serves both drivers — the Faust worker and the replay CLI — so a backtest over
the same events gives the same reports. State is kept per model: its watermark (latest
event time minus the allowed lateness) and its open windows, each holding one drift_core
sketch per feature plus the prediction's, a latency quantile sketch and an error count.
Events are grouped per (model version, window) and each feature's values go to its sketch
as one column, so there is no per-value Python work beyond gathering the columns.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

import drift_core as dc
from stream.events import Event, Invalid, encode_event
from stream.profiles import ModelProfile, Reference
from stream.windows import WindowSpec

REPORT_SCHEMA = "driftline.report/v1"
LATENCY_QUANTILES = (0.5, 0.95, 0.99)
Sketch = dc.NumericSketch | dc.CategoricalSketch
Resolver = Callable[[str, str], ModelProfile | None]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _new_sketch(ref: Reference) -> Sketch:
    if isinstance(ref, dc.NumericReference):
        return dc.NumericSketch(ref)
    return dc.CategoricalSketch(ref)


def _sketch_from_bytes(data: bytes, ref: Reference) -> Sketch:
    if isinstance(ref, dc.NumericReference):
        return dc.NumericSketch.from_bytes(data, ref)
    return dc.CategoricalSketch.from_bytes(data, ref)


@dataclass
class OpenWindow:
    """Sketches of one (model, version, window)."""

    profile: ModelProfile
    model: str
    version: str
    start: int
    end: int
    rows: int = 0
    errors: int = 0
    unknown_feature_values: int = 0
    features: dict[str, Sketch] = field(default_factory=dict)
    prediction: Sketch | None = None
    latency: dc.QuantileSketch = field(default_factory=dc.QuantileSketch)

    def __post_init__(self) -> None:
        if not self.features:
            self.features = {k: _new_sketch(r) for k, r in self.profile.features.items()}
        if self.prediction is None and self.profile.prediction is not None:
            self.prediction = _new_sketch(self.profile.prediction)

    def add(self, items: Sequence[tuple[int, Event]]) -> list[tuple[int, str]]:
        """Adds (position, event) items, one column per feature. Events with a value of
        the wrong kind for the profile are left out and returned as (position, why)."""
        columns = self._columns([e for _, e in items])
        rejected: list[tuple[int, str]] = []
        if columns is None:  # a mistyped value somewhere: find the events, drop them
            kept = []
            for position, event in items:
                why = _type_mismatch(event, self.profile)
                if why is None:
                    kept.append(event)
                else:
                    rejected.append((position, why))
            columns = self._columns(kept)
            assert columns is not None, "events that pass the type check build columns"
        features, prediction, events, unknown = columns
        for name, column in features.items():
            self.features[name].update(column)
        if self.prediction is not None and prediction is not None:
            self.prediction.update(prediction)
        self.rows += len(events)
        self.unknown_feature_values += unknown
        self.latency.update(np.array([e.latency_ms for e in events], dtype=np.float64))
        self.errors += sum(1 for e in events if e.status == "error")
        return rejected

    def add_columns(
        self,
        rows: int,
        features: dict[str, Any],
        prediction: Any,
        latency: np.ndarray,
        errors: int,
        unknown: int,
    ) -> None:
        """Adds already-typed columns of ``rows`` events (the columnar path of replay)."""
        for name, sketch in self.features.items():
            column = features.get(name)
            if column is None:  # a feature absent from the input: all missing
                column = (
                    np.full(rows, np.nan) if isinstance(sketch, dc.NumericSketch) else [None] * rows
                )
            sketch.update(column)
        if self.prediction is not None:
            self.prediction.update(
                prediction
                if prediction is not None
                else (
                    np.full(rows, np.nan)
                    if isinstance(self.prediction, dc.NumericSketch)
                    else [None] * rows
                )
            )
        self.rows += rows
        self.errors += errors
        self.unknown_feature_values += unknown
        self.latency.update(latency)

    def _columns(
        self, events: Sequence[Event]
    ) -> tuple[dict[str, Any], Any, Sequence[Event], int] | None:
        """Every feature's column (float64 arrays for numeric features, lists of str for
        categorical ones) and the number of values of features the profile does not
        have, or None if a value has the wrong kind. Each event costs one dict merge and
        two C-level item lookups, whatever the number of features."""
        layout = _layout(self.profile)
        unknown = 0
        try:
            out: dict[str, Any] = {}
            if events:
                rows = [{**layout.defaults, **e.features} for e in events]
                unknown = sum(map(len, rows)) - len(rows) * len(layout.defaults)
                if layout.numeric:
                    matrix = np.array([layout.numeric_of(r) for r in rows], dtype=np.float64)
                    if matrix.ndim == 1:
                        matrix = matrix.reshape(-1, 1)
                    for j, name in enumerate(layout.numeric):
                        out[name] = matrix[:, j]
                if layout.categorical:
                    columns = zip(*(layout.categorical_of(r) for r in rows), strict=True)
                    for name, column in zip(layout.categorical, columns, strict=True):
                        out[name] = _column(self.features[name], list(column))
            else:
                out = {name: [] for name in self.features}
            prediction = None
            if self.prediction is not None:
                prediction = _column(self.prediction, [e.prediction for e in events])
        except (ValueError, TypeError):
            return None
        return out, prediction, events, unknown

    def report(self, late_events: int) -> dict[str, Any]:
        """The WindowReport of this window (a JSON-ready dict)."""
        profile = self.profile
        names = list(self.features)
        pairs = [(profile.features[k], self.features[k]) for k in names]
        figures = dc.compare_many(pairs)  # type: ignore[arg-type]
        prediction = None
        if self.prediction is not None and profile.prediction is not None:
            prediction = dc.compare(profile.prediction, self.prediction)
        quantiles = self.latency.quantiles(list(LATENCY_QUANTILES))
        return {
            "schema": REPORT_SCHEMA,
            "report_id": f"{self.model}/{self.version}/{self.start}/{self.end}",
            "model": self.model,
            "model_version": self.version,
            "reference": profile.identity,
            **(profile.origin or {}),
            "window_start": iso(self.start),
            "window_end": iso(self.end),
            "window_start_ms": self.start,
            "window_end_ms": self.end,
            "rows": self.rows,
            "late_events": late_events,
            "unknown_feature_values": self.unknown_feature_values,
            "features": {k: _clean(f) for k, f in zip(names, figures, strict=True)},
            "model_metrics": {
                "prediction": _clean(prediction) if prediction is not None else None,
                "latency_ms": {
                    "count": self.latency.count,
                    **{
                        f"p{round(q * 100)}": _num(v)
                        for q, v in zip(LATENCY_QUANTILES, quantiles, strict=True)
                    },
                },
                "errors": self.errors,
                "error_rate": self.errors / self.rows if self.rows else None,
            },
        }


@dataclass(frozen=True)
class _Layout:
    """How to pull a profile's features out of events in bulk."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    defaults: dict[str, None]
    numeric_of: Callable[[dict[str, Any]], Any]
    categorical_of: Callable[[dict[str, Any]], Any]


_layouts: dict[int, tuple[ModelProfile, _Layout]] = {}


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    if len(names) == 1:  # itemgetter of one key returns the value, not a 1-tuple
        (only,) = names
        return lambda row: (row[only],)
    return operator.itemgetter(*names)


def _layout(profile: ModelProfile) -> _Layout:
    cached = _layouts.get(id(profile))
    if cached is not None and cached[0] is profile:
        return cached[1]
    numeric = tuple(k for k, r in profile.features.items() if isinstance(r, dc.NumericReference))
    categorical = tuple(k for k in profile.features if k not in numeric)
    layout = _Layout(
        numeric,
        categorical,
        dict.fromkeys(profile.features),
        _getter(numeric),
        _getter(categorical),
    )
    _layouts[id(profile)] = (profile, layout)
    return layout


def _column(sketch: Sketch, values: list[Any]) -> Any:
    """A column ready for ``sketch.update``; ValueError / TypeError on a wrong kind."""
    if isinstance(sketch, dc.NumericSketch):
        return np.array(values, dtype=np.float64)  # str -> ValueError, None -> NaN
    for v in values:
        if v is not None and type(v) is not str:
            raise TypeError("categorical values are strings")
    return values


def _num(v: float) -> float | None:
    return None if isinstance(v, float) and math.isnan(v) else v


def _clean(figures: Any) -> dict[str, Any]:
    """NaN becomes null so the report is valid JSON."""
    return {k: _num(v) if isinstance(v, float) else v for k, v in dict(figures).items()}


class _WindowState(msgspec.Struct):
    version: str
    start: int
    rows: int
    errors: int
    unknown: int
    features: dict[str, bytes]
    prediction: bytes | None
    latency: bytes


class ModelState(msgspec.Struct):
    """What survives a restart for one model (saved on the worker's state topic)."""

    max_ts: int | None = None
    late_since_report: int = 0
    windows: list[_WindowState] = []
    offsets: dict[str, int] = {}


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(ModelState)


@dataclass
class Outcome:
    """What one call to the engine produced."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    #: (position in the input batch, why)
    rejected: list[tuple[int, Invalid]] = field(default_factory=list)
    late: int = 0
    late_by_model: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    #: positions of input messages a driver must not acknowledge: they come again
    held: list[int] = field(default_factory=list)


@dataclass
class _Model:
    max_ts: int | None = None
    late_since_report: int = 0
    windows: dict[tuple[str, int], OpenWindow] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    #: wall-clock time of the latest event (drivers that pass ``now_ms``)
    last_seen_ms: int | None = None


class WindowEngine:
    """Assigns events to event-time windows, keeps their sketches, reports closed windows."""

    def __init__(self, spec: WindowSpec, resolve: Resolver) -> None:
        self.spec = spec
        self._resolve = resolve
        self._profiles: dict[tuple[str, str], ModelProfile | None] = {}
        self._models: dict[str, _Model] = defaultdict(_Model)

    # ------------------------------------------------------------------ input

    def has_profile(self, model: str, version: str) -> bool:
        """Whether the version's reference is already at hand (no lookup needed)."""
        return (model, version) in self._profiles

    def profile(self, model: str, version: str) -> ModelProfile | None:
        key = (model, version)
        found = self._profiles.get(key)
        if found is None:
            # misses are not kept: the resolver decides when to look again (a reference
            # registered after the version's first events is picked up)
            found = self._resolve(model, version)
            if found is not None:
                self._profiles[key] = found
        return found

    def process(self, events: Iterable[Event], now_ms: int | None = None) -> Outcome:
        """Adds a batch of events; returns reports of the windows that closed.

        ``now_ms`` is the wall-clock arrival time, used only by :meth:`advance`."""
        out = Outcome()
        groups: dict[tuple[str, str, int], list[tuple[int, Event]]] = defaultdict(list)
        batch_events: list[Event] = []
        touched: set[str] = set()
        spec = self.spec
        for position, event in enumerate(events):
            batch_events.append(event)
            profile = self.profile(event.model, event.model_version)
            if profile is None:
                out.rejected.append(
                    (
                        position,
                        Invalid(
                            "unknown_model",
                            f"no reference for model {event.model[:80]!r} "
                            f"version {event.model_version[:40]!r}",
                            encode_event(event),
                        ),
                    )
                )
                continue
            state = self._models[event.model]
            if state.max_ts is None or event.ts > state.max_ts:
                state.max_ts = event.ts
            watermark = spec.watermark(state.max_ts)
            placed = False
            for start in spec.starts(event.ts):
                if not spec.is_closed(start, watermark):
                    groups[(event.model, event.model_version, start)].append((position, event))
                    placed = True
            if now_ms is not None:
                state.last_seen_ms = now_ms
            if placed:
                out.accepted += 1
                touched.add(event.model)
            else:
                out.late += 1
                out.late_by_model[event.model] = out.late_by_model.get(event.model, 0) + 1
                state.late_since_report += 1
        mistyped: dict[int, str] = {}
        for (model, version, start), batch in groups.items():
            state = self._models[model]
            window = state.windows.get((version, start))
            if window is None:
                profile = self.profile(model, version)
                assert profile is not None
                window = OpenWindow(profile, model, version, start, spec.end(start))
                state.windows[(version, start)] = window
            mistyped.update(window.add(batch))
        for position, why in sorted(mistyped.items()):
            bad = Invalid("feature_type_mismatch", why, encode_event(batch_events[position]))
            out.rejected.append((position, bad))
            out.accepted -= 1
        out.rejected.sort(key=lambda r: r[0])
        for model in touched:
            out.reports.extend(self._close(model))
        return out

    def process_columns(
        self,
        model: str,
        version: str,
        ts: np.ndarray,
        features: dict[str, Any],
        prediction: Any = None,
        latency_ms: np.ndarray | None = None,
        errors: np.ndarray | None = None,
        unknown_per_row: int = 0,
        unknown_rows: np.ndarray | None = None,
        running: np.ndarray | None = None,
        close: bool = True,
        now_ms: int | None = None,
    ) -> Outcome:
        """The columnar twin of :meth:`process` for events of one model version, in
        arrival order: the same windows, watermark and lateness, without building events.
        Numeric features are float64 arrays (NaN = missing), categorical ones lists of str
        or None; ``errors`` is a boolean array of rows whose status is "error".
        ``unknown_rows`` counts each row's values of features the profile does not have
        (else ``unknown_per_row`` for every row). When other versions of the model
        arrived in between, ``running`` holds, per row, the latest event time of the
        model up to and including that row, and ``close=False`` leaves closing to
        :meth:`close` once every version is in. ``now_ms`` is the wall-clock arrival
        time, as for :meth:`process`."""
        out = Outcome()
        n = len(ts)
        if n == 0:
            return out
        profile = self.profile(model, version)
        if profile is None:
            raise KeyError(f"no reference for model {model!r} version {version!r}")
        spec = self.spec
        state = self._models[model]
        ts = np.asarray(ts, dtype=np.int64)
        if running is None:
            before = np.iinfo(np.int64).min if state.max_ts is None else state.max_ts
            running = np.maximum.accumulate(np.maximum(ts, before))
            state.max_ts = int(running[-1])
        else:  # the caller's, which includes the model's latest time before the batch
            running = np.asarray(running, dtype=np.int64)
            latest = int(running[-1])
            state.max_ts = latest if state.max_ts is None else max(state.max_ts, latest)
        watermark = running - spec.lateness_ms
        if now_ms is not None:
            state.last_seen_ms = now_ms
        step = spec.step_ms
        last = ts - ts % step
        per_event = (spec.size_ms - 1) // step + 1
        placed = np.zeros(n, dtype=bool)
        groups: dict[int, np.ndarray] = {}
        for k in range(per_event):
            start = last - k * step
            inside = start + spec.size_ms > ts
            open_ = start + spec.size_ms > watermark
            take = inside & open_
            placed |= take
            if not take.any():
                continue
            for s in np.unique(start[take]):
                rows = np.flatnonzero(take & (start == s))
                groups[int(s)] = rows if int(s) not in groups else np.union1d(groups[int(s)], rows)
        late = int(n - placed.sum())
        out.late = late
        if late:
            out.late_by_model[model] = late
            state.late_since_report += late
        out.accepted = n - late
        latency = (
            np.asarray(latency_ms, dtype=np.float64)
            if latency_ms is not None
            else np.full(n, np.nan)
        )
        err = np.asarray(errors, dtype=bool) if errors is not None else np.zeros(n, dtype=bool)
        for start in sorted(groups):
            rows = groups[start]
            contiguous = bool(rows[-1] - rows[0] + 1 == len(rows))
            pick: slice | np.ndarray = (
                slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
            )

            def sub(column: Any, pick: Any = pick, rows: np.ndarray = rows) -> Any:
                if column is None or isinstance(column, np.ndarray):
                    return None if column is None else column[pick]
                return column[pick] if isinstance(pick, slice) else [column[i] for i in rows]

            window = state.windows.get((version, start))
            if window is None:
                window = OpenWindow(profile, model, version, start, spec.end(start))
                state.windows[(version, start)] = window
            window.add_columns(
                len(rows),
                {name: sub(col) for name, col in features.items() if name in window.features},
                sub(prediction),
                latency[pick],
                int(err[pick].sum()),
                unknown_per_row * len(rows)
                if unknown_rows is None
                else int(unknown_rows[pick].sum()),
            )
        if close:
            out.reports.extend(self._close(model))
        return out

    def close(self, model: str) -> list[dict[str, Any]]:
        """Reports of the model's windows its watermark has passed (see ``close=False``
        of :meth:`process_columns`)."""
        return self._close(model)

    def advance(self, now_ms: int, idle_ms: int) -> Outcome:
        """Closes every open window of models that sent nothing for ``idle_ms`` of wall
        time (their watermark would otherwise never move). Stream drivers only."""
        out = Outcome()
        for state in self._models.values():
            seen = state.last_seen_ms
            if state.windows and seen is not None and now_ms - seen >= idle_ms:
                out.reports.extend(self._close_all(state))
        return out

    def flush(self) -> Outcome:
        """Closes every open window (end of a replay, or shutdown)."""
        out = Outcome()
        for state in self._models.values():
            out.reports.extend(self._close_all(state))
        return out

    @staticmethod
    def _close_all(state: _Model) -> list[dict[str, Any]]:
        reports = []
        for key in sorted(state.windows, key=lambda k: (k[1], k[0])):
            reports.append(state.windows.pop(key).report(state.late_since_report))
            state.late_since_report = 0
        return reports

    def _close(self, model: str) -> list[dict[str, Any]]:
        state = self._models[model]
        if state.max_ts is None:
            return []
        watermark = self.spec.watermark(state.max_ts)
        closing = sorted(
            (k for k, w in state.windows.items() if w.end <= watermark),
            key=lambda k: (k[1], k[0]),
        )
        reports = []
        for key in closing:
            reports.append(state.windows.pop(key).report(state.late_since_report))
            state.late_since_report = 0
        return reports

    # ------------------------------------------------------------------ state

    def models(self) -> list[str]:
        return list(self._models)

    def open_windows(self, model: str) -> list[tuple[str, int]]:
        return sorted(self._models[model].windows) if model in self._models else []

    def newest_ts(self, model: str) -> int | None:
        """The latest event time seen for the model."""
        state = self._models.get(model)
        return None if state is None else state.max_ts

    def watermark(self, model: str) -> int | None:
        state = self._models.get(model)
        if state is None or state.max_ts is None:
            return None
        return self.spec.watermark(state.max_ts)

    def offsets(self, model: str) -> dict[str, int]:
        """Per-partition offsets the driver recorded with this model's state."""
        return self._models[model].offsets

    def snapshot(self, model: str) -> bytes:
        """The model's state as bytes (msgpack of sketch bytes; never pickle)."""
        state = self._models[model]
        windows = [
            _WindowState(
                version=version,
                start=start,
                rows=w.rows,
                errors=w.errors,
                unknown=w.unknown_feature_values,
                features={k: s.to_bytes() for k, s in w.features.items()},
                prediction=w.prediction.to_bytes() if w.prediction is not None else None,
                latency=w.latency.to_bytes(),
            )
            for (version, start), w in sorted(state.windows.items())
        ]
        return _state_encoder.encode(
            ModelState(state.max_ts, state.late_since_report, windows, dict(state.offsets))
        )

    def restore(self, model: str, data: bytes) -> None:
        """Replaces the model's state with a snapshot (after a restart or rebalance)."""
        saved = _state_decoder.decode(data)
        state = _Model(saved.max_ts, saved.late_since_report, {}, dict(saved.offsets))
        for w in saved.windows:
            profile = self.profile(model, w.version)
            if profile is None:
                continue  # the reference went away; nothing to compare with
            state.windows[(w.version, w.start)] = OpenWindow(
                profile,
                model,
                w.version,
                w.start,
                self.spec.end(w.start),
                rows=w.rows,
                errors=w.errors,
                unknown_feature_values=w.unknown,
                features={
                    k: _sketch_from_bytes(b, profile.features[k]) for k, b in w.features.items()
                },
                prediction=(
                    _sketch_from_bytes(w.prediction, profile.prediction)
                    if w.prediction is not None and profile.prediction is not None
                    else None
                ),
                latency=dc.QuantileSketch.from_bytes(w.latency),
            )
        self._models[model] = state

    def forget(self, model: str) -> None:
        """Drops a model's state (its partition moved to another worker)."""
        self._models.pop(model, None)


def _type_mismatch(event: Event, profile: ModelProfile) -> str | None:
    """A feature value of the wrong kind for the profile, described; None if all fit."""
    for name, value in event.features.items():
        ref = profile.features.get(name)
        if ref is None or value is None:
            continue
        if isinstance(ref, dc.NumericReference):
            if isinstance(value, str):
                return f"feature {name[:60]!r} is numeric in the reference, got a string"
        elif not isinstance(value, str):
            return f"feature {name[:60]!r} is categorical in the reference, got a number"
    pred = profile.prediction
    if pred is not None and event.prediction is not None:
        if isinstance(pred, dc.NumericReference) and isinstance(event.prediction, str):
            return "prediction is numeric in the reference, got a string"
        if isinstance(pred, dc.CategoricalReference) and not isinstance(event.prediction, str):
            return "prediction is categorical in the reference, got a number"
    return None
