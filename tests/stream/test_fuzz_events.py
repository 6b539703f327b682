"""Fuzzing the event decoders: whatever the bytes, ``decode`` returns events that honour
the contract and Invalid records with a documented reason; it never raises and never
hangs (each example has a deadline, each test a watchdog). The worker's columnar decoder
(``decode_columns``, drift_core's parser) gives exactly the same events and records."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from stream.events import (
    BATCH_SCHEMA,
    EVENT_SCHEMA,
    Columns,
    Event,
    Limits,
    decode,
    decode_columns,
    dlq_record,
    encode_event,
)
from tests.fuzzing import fuzz_settings, watchdog_fixture

if TYPE_CHECKING:
    from drift_core._drift_core import EventColumn

NOW = 1_795_341_600_000  # 2026-11-22T10:00:00Z
#: every reason ``decode`` may give (the README's list, less the engine's two)
REASONS = {
    "invalid_json",
    "schema_violation",
    "unknown_schema",
    "too_large",
    "too_many_features",
    "string_too_long",
    "not_finite",
    "bad_field",
    "bad_timestamp",
    "timestamp_out_of_range",
}
DEFAULT = Limits()
#: small limits, so that short inputs reach every limit
TIGHT = Limits(
    max_message_bytes=2_048,
    max_events_per_batch=4,
    max_features=6,
    max_string_bytes=16,
    max_future_ms=60_000,
)
limits_st = st.sampled_from([DEFAULT, TIGHT])


def from_columns(columns: Columns) -> list[Event]:
    """The events of decode_columns' output, rebuilt one by one."""
    out = []
    for group, keep in columns.groups:
        for row in range(group.rows):
            if keep is not None and not keep[row]:
                continue

            def value(column: EventColumn, row: int = row) -> float | str | None:
                numbers, strings, *_ = column
                if strings is not None and strings[row] is not None:
                    return str(strings[row])
                return None if math.isnan(numbers[row]) else float(numbers[row])

            features = {
                name: value(column)
                for name, column in group.features.items()
                if row not in set(column[5].tolist())
            }
            latency = float(group.latency[row])
            out.append(
                Event(
                    event_id=group.event_id[row],
                    model=group.model,
                    model_version=group.version,
                    ts=int(group.ts[row]),
                    features=features,
                    prediction=value(group.prediction),
                    latency_ms=None if math.isnan(latency) else latency,
                    status="error" if group.error[row] else "ok",
                )
            )
    return out + [event for _, event in columns.events]


def canonical(event: Event) -> bytes:
    return msgspec.json.encode(event, order="sorted")


def check(raw: bytes, limits: Limits, expect: int | None = None) -> None:
    """Decodes ``raw`` and checks every record against the contract; ``expect`` is the
    number of events an envelope holds (each must come out as an event or a record).
    The worker's columnar decoder must give the same events and the same records."""
    out = decode(raw, limits, NOW)
    columns = decode_columns([raw], limits, NOW)
    assert sorted(map(canonical, from_columns(columns))) == sorted(map(canonical, out.events))
    assert sorted((b.reason, b.detail, b.raw) for _, b in columns.invalid) == sorted(
        (b.reason, b.detail, b.raw) for b in out.invalid
    )
    if expect is not None:
        assert len(out.events) + len(out.invalid) == expect
    elif not (out.events or out.invalid):  # only an empty envelope gives no record
        assert msgspec.json.decode(raw) == {"schema": BATCH_SCHEMA, "events": []}
    for bad in out.invalid:
        assert bad.reason in REASONS, bad
        assert isinstance(bad.detail, str)
        assert bad.detail
        assert isinstance(bad.raw, bytes)
        record = msgspec.json.decode(dlq_record(bad, "driftline.events", 0, 7))
        assert record["reason"] == bad.reason
    ahead = limits.max_future_ms
    for event in out.events:
        assert limits.min_ts_ms <= event.ts
        assert ahead is None or event.ts <= NOW + ahead
        for text in (event.event_id, event.model):
            assert isinstance(text, str)
            assert 1 <= len(text) <= limits.max_string_bytes
        assert isinstance(event.model_version, str)
        assert len(event.features) <= limits.max_features
        for name, value in event.features.items():
            assert len(name) <= limits.max_string_bytes
            assert_value(value, limits)
        assert_value(event.prediction, limits)
        assert event.latency_ms is None or 0 <= event.latency_ms < math.inf
        assert event.status in ("ok", "error")
        # a decoded event survives its own wire form unchanged
        again = decode(encode_event(event), limits, NOW)
        assert (again.events, again.invalid) == ([event], [])


def assert_value(value: object, limits: Limits) -> None:
    if isinstance(value, str):
        assert len(value) <= limits.max_string_bytes
    else:
        assert value is None or (type(value) is float and math.isfinite(value)), value


# ------------------------------------------------------------------ strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
feature_values = (
    st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.text(max_size=20)
    | st.sampled_from(["", "x" * 17, "é" * 9, "\x00", "\ud7ff"])
)
timestamps = (
    st.integers(min_value=NOW - 10**12, max_value=NOW + 10**9)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.123+01:00",
            "2026-11-22T10:00:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+00:00",
            "yesterday",
            "",
            "2026-02-30T00:00:00Z",
        ]
    )
    | st.text(max_size=30)
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """An event dict: mostly valid, with some fields given arbitrary JSON or removed."""
    event: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "event_id": draw(st.text(min_size=1, max_size=20)),
        "model": draw(st.sampled_from(["fraud", "churn", "m" * 17])),
        "model_version": draw(st.sampled_from(["3", 3, ""])),
        "ts": draw(timestamps),
        "features": draw(st.dictionaries(st.text(max_size=18), feature_values, max_size=8)),
        "prediction": draw(feature_values),
        "latency_ms": draw(st.none() | st.floats(min_value=-1, max_value=1e6)),
        "status": draw(st.sampled_from(["ok", "error", "maybe"])),
    }
    for key in draw(st.sets(st.sampled_from(sorted(event)), max_size=3)):
        if draw(st.booleans()):
            del event[key]
        else:
            event[key] = draw(json_values)
    if draw(st.booleans()):
        event[draw(st.text(max_size=6))] = draw(json_values)  # an unknown field
    return event


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """Structured damage to a valid encoding: bit flips, truncation, insertion, deletion,
    a number replaced by one out of range or not JSON, deep nesting, invalid UTF-8."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "number", "nest", "utf8"]))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "number":
            token = draw(
                st.sampled_from([b"1e999", b"-1e999", b"NaN", b"Infinity", b"-0.0", b"1e-999"])
            )
            data[at:at] = token
        elif kind == "nest":
            depth = draw(st.sampled_from([64, 1_000, 5_000]))
            data[at:at] = b"[" * depth + b"]" * depth
        else:
            data[at:at] = draw(
                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
            )
    return bytes(data)


# ------------------------------------------------------------------ properties

_watchdog = watchdog_fixture(600)


@fuzz_settings(1_000, 50_000)
@given(raw=st.binary(max_size=4_096), limits=limits_st)
@example(raw=b"", limits=DEFAULT)
@example(raw=b"\xff\xfe", limits=DEFAULT)
@example(raw=b"[" * 100_000, limits=DEFAULT)
@example(raw=b'{"schema":"driftline.event/v1","pad":' + b"[" * 5_000, limits=DEFAULT)
@example(raw=b'{"schema":"driftline.event/v1","event_id":"\xff"}', limits=DEFAULT)
def test_arbitrary_bytes(raw: bytes, limits: Limits) -> None:
    check(raw, limits)


@fuzz_settings(1_000, 50_000)
@given(value=json_values, limits=limits_st)
def test_arbitrary_json(value: Any, limits: Limits) -> None:
    check(encode(value), limits)


@fuzz_settings(1_000, 50_000)
@given(event=events(), limits=limits_st)
@example(
    event={
        "schema": EVENT_SCHEMA,
        "event_id": "a",
        "model": "m",
        "ts": NOW,
        "features": {"c": "\udcff"},
    },
    limits=DEFAULT,
)
def test_events_with_wrong_or_missing_fields(event: dict[str, Any], limits: Limits) -> None:
    check(encode(event), limits)


@fuzz_settings(500, 20_000)
@given(items=st.lists(events() | json_values, max_size=6), limits=limits_st)
def test_envelopes_account_for_every_event(items: list[Any], limits: Limits) -> None:
    raw = encode({"schema": BATCH_SCHEMA, "events": items})
    fits = len(raw) <= limits.max_message_bytes and len(items) <= limits.max_events_per_batch
    check(raw, limits, expect=len(items) if fits else None)


@fuzz_settings(1_000, 50_000)
@given(data=st.data(), limits=limits_st, batch=st.booleans())
def test_damaged_encodings(data: st.DataObject, limits: Limits, batch: bool) -> None:
    good = {
        "schema": EVENT_SCHEMA,
        "event_id": "req-1",
        "model": "fraud",
        "model_version": "3",
        "ts": NOW - 60_000,
        "features": {"amount": 12.5, "country": "DE", "age": None},
        "prediction": 0.87,
        "latency_ms": 12.3,
        "status": "ok",
    }
    raw = encode({"schema": BATCH_SCHEMA, "events": [good, good]} if batch else good)
    check(data.draw(mutated(raw)), limits)
