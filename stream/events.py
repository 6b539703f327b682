"""The event contract (``driftline.event/v1`` and the ``driftline.batch/v1`` envelope).

Decoding is strict and per event: a batch envelope with one bad event yields the good
events and one invalid record for the bad one, with the reason and that event's raw
bytes. Nothing here raises on bad input; everything bad becomes an :class:`Invalid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

import drift_core as dc

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


_MAX_FLOAT = 1.7976931348623157e308


class _Codecs:
    """msgspec decoders for one set of limits: the limits on sizes, lengths and finite
    numbers are checked by msgspec itself, in C, while it parses."""

    def __init__(self, limits: Limits) -> None:
        text = Annotated[str, msgspec.Meta(max_length=limits.max_string_bytes)]
        ident = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.max_string_bytes)]
        number = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
        value = number | text | None
        features = Annotated[dict[text, value], msgspec.Meta(max_length=limits.max_features)]
        self.event_type = msgspec.defstruct(
            "WireEvent",
            [
                ("event_id", ident),
                ("model", ident),
                ("ts", str | int | float),
                ("features", features),
                ("model_version", text | int, ""),
                ("prediction", value, None),
                ("latency_ms", Annotated[float, msgspec.Meta(ge=0, le=_MAX_FLOAT)] | None, None),
                ("status", Literal["ok", "error"], "ok"),
            ],
            tag_field="schema",
            tag=EVENT_SCHEMA,
            frozen=True,
            gc=False,
        )
        self.envelope_type = msgspec.defstruct(
            "WireBatch",
            [
                (
                    "events",
                    Annotated[
                        list[msgspec.Raw], msgspec.Meta(max_length=limits.max_events_per_batch)
                    ],
                )
            ],
            tag_field="schema",
            tag=BATCH_SCHEMA,
        )
        # fast path: a whole envelope of valid events in one pass
        events_of: Any = Annotated[
            list[self.event_type],  # type: ignore[name-defined]
            msgspec.Meta(max_length=limits.max_events_per_batch),
        ]
        self.typed_envelope = msgspec.defstruct(
            "WireTypedBatch", [("events", events_of)], tag_field="schema", tag=BATCH_SCHEMA
        )
        self.typed = msgspec.json.Decoder(self.event_type | self.typed_envelope)
        self.message = msgspec.json.Decoder(self.event_type | self.envelope_type)
        self.event = msgspec.json.Decoder(self.event_type)


_codecs: dict[Limits, _Codecs] = {}
_last: tuple[Limits, _Codecs] | None = None


def _codecs_for(limits: Limits) -> _Codecs:
    global _last
    if _last is not None and _last[0] is limits:  # the common case, without hashing
        return _last[1]
    codecs = _codecs.get(limits)
    if codecs is None:
        codecs = _codecs[limits] = _Codecs(limits)
    _last = (limits, codecs)
    return codecs


# Besides its own errors, msgspec raises UnicodeDecodeError for invalid UTF-8 inside a
# string and RecursionError for nesting deeper than the interpreter's recursion limit.
_DECODE_ERRORS = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)


def _reason(exc: Exception) -> str:
    """A stable reason code for a decoding error (one of ``_DECODE_ERRORS``)."""
    if not isinstance(exc, msgspec.ValidationError) and isinstance(
        exc, msgspec.DecodeError | UnicodeDecodeError | RecursionError
    ):
        return "invalid_json"
    text = str(exc)
    if "$.schema" in text or "Object missing required field `schema`" in text:
        return "unknown_schema" if "Invalid value" in text else "schema_violation"
    if "of length <=" in text:
        if "at `$.features`" in text:
            return "too_many_features"
        if "at `$.events`" in text:
            return "too_large"
        return "string_too_long"
    if "of length >=" in text:
        return "bad_field"
    # a literal beyond the float range (1e999) is msgspec's "Number out of range"
    if "Expected `float` >=" in text or "Expected `float` <=" in text or "out of range" in text:
        return "not_finite" if "latency_ms" not in text else "bad_field"
    return "schema_violation"


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


def _event_time(raw_ts: str | int | float, limits: Limits, now_ms: int | None) -> int | Invalid:
    """Event time in epoch ms, or why it is not acceptable (raw bytes left empty)."""
    try:
        ts = parse_ts(raw_ts)
    except (ValueError, OverflowError) as exc:
        return Invalid("bad_timestamp", str(exc), b"")
    if ts < limits.min_ts_ms:
        return Invalid("timestamp_out_of_range", f"ts {ts} is before {limits.min_ts_ms}", b"")
    ahead = limits.max_future_ms
    if now_ms is not None and ahead is not None and ts > now_ms + ahead:
        return Invalid("timestamp_out_of_range", f"ts {ts} is more than {ahead} ms ahead", b"")
    return ts


def _to_event(wire: Any, limits: Limits, now_ms: int | None) -> Event | Invalid:
    ts = _event_time(wire.ts, limits, now_ms)
    if isinstance(ts, Invalid):
        return ts
    return Event(
        event_id=wire.event_id,
        model=wire.model,
        model_version=str(wire.model_version),
        ts=ts,
        features=wire.features,
        prediction=wire.prediction,
        latency_ms=wire.latency_ms,
        status=wire.status,
    )


def _add(out: Decoded, wire: Any, raw: bytes, limits: Limits, now_ms: int | None) -> None:
    checked = _to_event(wire, limits, now_ms)
    if isinstance(checked, Event):
        out.events.append(checked)
    else:
        out.invalid.append(Invalid(checked.reason, checked.detail, raw))


def decode(raw: bytes, limits: Limits = Limits(), now_ms: int | None = None) -> Decoded:
    """Decodes one Kafka message value: a single event or a batch envelope."""
    out = Decoded()
    if len(raw) > limits.max_message_bytes:
        out.invalid.append(
            Invalid("too_large", f"{len(raw)} bytes > {limits.max_message_bytes}", raw)
        )
        return out
    codecs = _codecs_for(limits)
    try:
        typed = codecs.typed.decode(raw)
    except _DECODE_ERRORS:
        pass  # find out below what is wrong, and keep the good events of a batch
    else:
        if isinstance(typed, codecs.event_type):
            _add(out, typed, raw, limits, now_ms)
            return out
        for wire in typed.events:
            checked = _to_event(wire, limits, now_ms)
            if not isinstance(checked, Event):
                # rare: decode the events one by one below, for this one's own bytes
                out.events.clear()
                break
            out.events.append(checked)
        else:
            return out
    try:
        message = codecs.message.decode(raw)
    except _DECODE_ERRORS as exc:
        out.invalid.append(Invalid(_reason(exc), str(exc), raw))
        return out
    if isinstance(message, codecs.event_type):
        _add(out, message, raw, limits, now_ms)
        return out
    for item in message.events:
        _decode_item(out, bytes(item), codecs, limits, now_ms)
    return out


def _decode_item(
    out: Decoded, item: bytes, codecs: _Codecs, limits: Limits, now_ms: int | None
) -> None:
    """One event of a batch envelope, on its own."""
    try:
        wire = codecs.event.decode(item)
    except _DECODE_ERRORS as exc:
        out.invalid.append(Invalid(_reason(exc), str(exc), item))
        return
    _add(out, wire, item, limits, now_ms)


class EventBytes:
    """The bytes of the events of a batch's messages, each message's spans found when
    first asked for (only dead letters need them)."""

    def __init__(self, values: Sequence[bytes], decoder: dc.EventDecoder) -> None:
        self.values = values
        self._decoder = decoder
        self._spans: dict[int, list[tuple[int, int]]] = {}

    def span(self, message: int, item: int) -> tuple[int, int]:
        spans = self._spans.get(message)
        if spans is None:
            spans = self._spans[message] = self._decoder.spans(self.values[message])
        return spans[item]

    def __call__(self, message: int, item: int) -> bytes:
        start, end = self.span(message, item)
        return self.values[message][start:end]


@dataclass
class Columns:
    """Messages decoded into columns (the worker's path): the accepted events of each
    (model, version) as a ``drift_core.EventGroup`` with a mask of its rows still
    accepted (None: all), the invalid events and messages by message index, and the
    events only the exact decoder accepted (rare: e.g. a repeated feature name)."""

    event_bytes: EventBytes
    groups: list[tuple[dc.EventGroup, np.ndarray | None]] = field(default_factory=list)
    invalid: list[tuple[int, Invalid]] = field(default_factory=list)
    events: list[tuple[int, Event]] = field(default_factory=list)


_column_decoders: dict[Limits, dc.EventDecoder] = {}


def _column_decoder(limits: Limits) -> dc.EventDecoder:
    decoder = _column_decoders.get(limits)
    if decoder is None:
        decoder = _column_decoders[limits] = dc.EventDecoder(
            EVENT_SCHEMA,
            BATCH_SCHEMA,
            max_message_bytes=limits.max_message_bytes,
            max_events=limits.max_events_per_batch,
            max_features=limits.max_features,
            max_string_chars=limits.max_string_bytes,
            min_ts_ms=limits.min_ts_ms,
            max_future_ms=limits.max_future_ms,
        )
    return decoder


def decode_columns(
    values: Sequence[bytes], limits: Limits = Limits(), now_ms: int | None = None
) -> Columns:
    """Decodes Kafka message values into columns with drift_core's decoder, which accepts
    only what :func:`decode` accepts; what it leaves (invalid or unusual input) is decoded
    here by :func:`decode`, so reasons and dead letters are the same on both paths."""
    decoder = _column_decoder(limits)
    groups, rejected = decoder.decode(values, now_ms)
    out = Columns(EventBytes(values, decoder))
    for group in groups:
        keep = None
        if group.ts_text:  # RFC 3339 text: parsed here, as decode does
            ts = group.ts
            for row, text in group.ts_text:
                parsed = _event_time(text, limits, now_ms)
                if isinstance(parsed, Invalid):
                    if keep is None:
                        keep = np.ones(group.rows, dtype=bool)
                    keep[row] = False
                    message = int(group.message[row])
                    start, end = out.event_bytes.span(message, int(group.item[row]))
                    rejected.append((message, start, end))
                else:
                    ts[row] = parsed
        out.groups.append((group, keep))
    codecs = _codecs_for(limits)
    for index, start, end in sorted(rejected):
        raw = values[index]
        decoded = Decoded()
        if start < 0:
            decoded = decode(raw, limits, now_ms)
        else:
            _decode_item(decoded, raw[start:end], codecs, limits, now_ms)
        out.invalid.extend((index, bad) for bad in decoded.invalid)
        out.events.extend((index, event) for event in decoded.events)
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
