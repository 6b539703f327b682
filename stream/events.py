"""The event contract (``driftline.event/v1`` and the ``driftline.batch/v1`` envelope).

Decoding is strict and per event: a batch envelope with one bad event yields the good
events and one invalid record for the bad one, with the reason and that event's raw
bytes. Nothing here raises on bad input; everything bad becomes an :class:`Invalid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec

EVENT_SCHEMA = "driftline.event/v1"
BATCH_SCHEMA = "driftline.batch/v1"

FeatureValue = float | str | None


class Event(msgspec.Struct, frozen=True, gc=False):
    """One prediction. ``ts`` is event time in epoch milliseconds once decoded."""

    event_id: str
    model: str
    model_version: str
    ts: int
    features: dict[str, FeatureValue]
    prediction: float | str | None = None
    latency_ms: float | None = None
    status: Literal["ok", "error"] = "ok"


class _WireEvent(msgspec.Struct, frozen=True, gc=False):
    schema: Literal["driftline.event/v1"]
    event_id: str
    model: str
    ts: str | int | float
    features: dict[str, FeatureValue]
    model_version: str | int = ""
    prediction: float | str | None = None
    latency_ms: float | None = None
    status: Literal["ok", "error"] = "ok"


class _Envelope(msgspec.Struct, frozen=True):
    schema: str
    events: list[msgspec.Raw] = []


class _Schema(msgspec.Struct):
    schema: str = ""


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message or event that did not validate: why, and its raw bytes."""

    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may hold (protect the worker from hostile input)."""

    max_message_bytes: int = 1 << 20
    max_events_per_batch: int = 100_000
    max_features: int = 1_000
    max_string_bytes: int = 1_024
    min_ts_ms: int = 946_684_800_000  # 2000-01-01
    max_future_ms: int | None = 3_600_000  # relative to now_ms, None = no check (replay)


@dataclass
class Decoded:
    events: list[Event] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)


_event_decoder = msgspec.json.Decoder(_WireEvent)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_schema_decoder = msgspec.json.Decoder(_Schema)


def parse_ts(ts: str | int | float) -> int:
    """Event time to epoch ms: RFC 3339 text or epoch milliseconds."""
    if isinstance(ts, str):
        text = ts[:-1] + "+00:00" if ts.endswith(("Z", "z")) else ts
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise ValueError("RFC 3339 timestamps need a time zone (e.g. a trailing Z)")
        return int(parsed.timestamp() * 1000)
    if isinstance(ts, float) and not math.isfinite(ts):
        raise ValueError("timestamp is not finite")
    return int(ts)


def _check(wire: _WireEvent, limits: Limits, now_ms: int | None) -> Event | tuple[str, str]:
    if len(wire.features) > limits.max_features:
        return "too_many_features", f"{len(wire.features)} features > {limits.max_features}"
    long = limits.max_string_bytes
    for name, value in wire.features.items():
        if len(name) > long or (isinstance(value, str) and len(value) > long):
            return "string_too_long", f"feature {name[:40]!r}: more than {long} characters"
        if isinstance(value, float) and not math.isfinite(value):
            return "not_finite", f"feature {name[:40]!r} is {value}"
    for what, text in (("event_id", wire.event_id), ("model", wire.model)):
        if not text or len(text) > long:
            return "bad_field", f"{what} must be 1 to {long} characters"
    if isinstance(wire.prediction, float) and not math.isfinite(wire.prediction):
        return "not_finite", "prediction is not finite"
    if wire.latency_ms is not None and not (
        math.isfinite(wire.latency_ms) and wire.latency_ms >= 0
    ):
        return "bad_field", "latency_ms must be a finite number >= 0"
    try:
        ts = parse_ts(wire.ts)
    except (ValueError, OverflowError) as exc:
        return "bad_timestamp", str(exc)
    if ts < limits.min_ts_ms:
        return "timestamp_out_of_range", f"ts {ts} is before {limits.min_ts_ms}"
    ahead = limits.max_future_ms
    if now_ms is not None and ahead is not None and ts > now_ms + ahead:
        return "timestamp_out_of_range", f"ts {ts} is more than {ahead} ms ahead of now"
    version = str(wire.model_version)
    if len(version) > long:
        return "bad_field", "model_version too long"
    return Event(
        event_id=wire.event_id,
        model=wire.model,
        model_version=version,
        ts=ts,
        features=wire.features,
        prediction=wire.prediction,
        latency_ms=wire.latency_ms,
        status=wire.status,
    )


def _one(raw: bytes, limits: Limits, now_ms: int | None, out: Decoded) -> None:
    try:
        wire = _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        out.invalid.append(Invalid("schema_violation", str(exc), bytes(raw)))
        return
    except msgspec.DecodeError as exc:
        out.invalid.append(Invalid("invalid_json", str(exc), bytes(raw)))
        return
    checked = _check(wire, limits, now_ms)
    if isinstance(checked, Event):
        out.events.append(checked)
    else:
        out.invalid.append(Invalid(checked[0], checked[1], bytes(raw)))


def decode(raw: bytes, limits: Limits = Limits(), now_ms: int | None = None) -> Decoded:
    """Decodes one Kafka message value: a single event or a batch envelope."""
    out = Decoded()
    if len(raw) > limits.max_message_bytes:
        out.invalid.append(
            Invalid("too_large", f"{len(raw)} bytes > {limits.max_message_bytes}", raw)
        )
        return out
    try:
        schema = _schema_decoder.decode(raw).schema
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        reason = "invalid_json" if isinstance(exc, msgspec.DecodeError) else "schema_violation"
        if isinstance(exc, msgspec.ValidationError) and "Expected `object`" in str(exc):
            reason = "schema_violation"
        out.invalid.append(Invalid(reason, str(exc), raw))
        return out
    if schema == EVENT_SCHEMA:
        _one(raw, limits, now_ms, out)
    elif schema == BATCH_SCHEMA:
        try:
            envelope = _envelope_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            out.invalid.append(Invalid("schema_violation", str(exc), raw))
            return out
        if len(envelope.events) > limits.max_events_per_batch:
            out.invalid.append(
                Invalid(
                    "too_large",
                    f"{len(envelope.events)} events > {limits.max_events_per_batch}",
                    raw,
                )
            )
            return out
        for item in envelope.events:
            _one(bytes(item), limits, now_ms, out)
    else:
        detail = f"unknown schema {schema[:80]!r}; expected {EVENT_SCHEMA!r} or {BATCH_SCHEMA!r}"
        out.invalid.append(Invalid("unknown_schema", detail, raw))
    return out


def encode_event(event: Event) -> bytes:
    """The wire form of one event (RFC 3339 is not needed: epoch ms is part of the contract)."""
    return msgspec.json.encode(
        {
            "schema": EVENT_SCHEMA,
            "event_id": event.event_id,
            "model": event.model,
            "model_version": event.model_version,
            "ts": event.ts,
            "features": event.features,
            "prediction": event.prediction,
            "latency_ms": event.latency_ms,
            "status": event.status,
        }
    )


def encode_batch(events: list[Event]) -> bytes:
    """A ``driftline.batch/v1`` envelope."""
    body = b",".join(encode_event(e) for e in events)
    return b'{"schema":"' + BATCH_SCHEMA.encode() + b'","events":[' + body + b"]}"


DLQ_SCHEMA = "driftline.dlq/v1"


def dlq_record(invalid: Invalid, source: str, partition: int, offset: int) -> bytes:
    """The DLQ message: reason, detail, where it came from and the raw bytes (base64)."""
    return msgspec.json.encode(
        {
            "schema": DLQ_SCHEMA,
            "reason": invalid.reason,
            "detail": invalid.detail[:2000],
            "source": {"topic": source, "partition": partition, "offset": offset},
            "raw": invalid.raw,  # msgspec encodes bytes as base64
        }
    )
