"""The event contract: decoding, limits and the reasons given for bad messages."""

from __future__ import annotations

import json

import msgspec
import pytest

from stream.events import (
    Event,
    Limits,
    decode,
    dlq_record,
    encode_batch,
    encode_event,
    parse_ts,
)

GOOD = {
    "schema": "driftline.event/v1",
    "event_id": "req-1",
    "model": "fraud",
    "model_version": "3",
    "ts": "2026-11-22T10:00:00.123Z",
    "features": {"amount": 12.5, "country": "DE", "age": None},
    "prediction": 0.87,
    "latency_ms": 12.3,
    "status": "ok",
}


def raw(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_decodes_the_design_example() -> None:
    out = decode(raw())
    assert out.invalid == []
    (e,) = out.events
    assert e == Event(
        event_id="req-1",
        model="fraud",
        model_version="3",
        ts=1_795_341_600_123,
        features={"amount": 12.5, "country": "DE", "age": None},
        prediction=0.87,
        latency_ms=12.3,
        status="ok",
    )


def test_epoch_ms_and_integer_versions() -> None:
    (e,) = decode(raw(ts=1_795_341_600_123, model_version=3)).events
    assert (e.ts, e.model_version) == (1_795_341_600_123, "3")
    assert parse_ts("2026-11-22T11:00:00.123+01:00") == 1_795_341_600_123


def test_batch_keeps_good_events_around_a_bad_one() -> None:
    bad = {**GOOD, "model": 7}
    envelope = {"schema": "driftline.batch/v1", "events": [GOOD, bad, GOOD]}
    out = decode(json.dumps(envelope).encode())
    assert len(out.events) == 2
    (invalid,) = out.invalid
    assert invalid.reason == "schema_violation"
    assert "$.model" in invalid.detail
    assert json.loads(invalid.raw)["model"] == 7


def test_round_trip_of_encoders() -> None:
    (e,) = decode(raw()).events
    assert decode(encode_event(e)).events == [e]
    assert decode(encode_batch([e, e])).events == [e, e]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "schema_violation"),
        (b'"a string"', "schema_violation"),
        (raw(schema="driftline.event/v9"), "unknown_schema"),
        (raw(features={"amount": True}), "schema_violation"),
        (raw(features={"amount": [1, 2]}), "schema_violation"),
        (raw(ts="yesterday"), "bad_timestamp"),
        (raw(ts="2026-11-22T10:00:00"), "bad_timestamp"),
        (raw(ts=5), "timestamp_out_of_range"),
        (raw(status="maybe"), "schema_violation"),
        (raw(latency_ms=-1), "bad_field"),
        (raw(event_id=""), "bad_field"),
        (raw(features={f"f{i}": 1.0 for i in range(1_001)}), "too_many_features"),
        (raw(features={"country": "x" * 5_000}), "string_too_long"),
        (b'{"schema": "driftline.event/v1", "features": {"a": NaN}}', "invalid_json"),
        (b"x" * (2 << 20), "too_large"),
    ],
)
def test_bad_messages_get_a_reason(message: bytes, reason: str) -> None:
    out = decode(message)
    assert out.events == []
    (invalid,) = out.invalid
    assert invalid.reason == reason, invalid
    assert invalid.raw == message
    assert invalid.detail


def test_future_timestamps_are_refused_relative_to_now() -> None:
    now = 1_795_341_600_000
    limits = Limits(max_future_ms=60_000)
    assert decode(raw(ts=now + 59_000), limits, now).events
    (invalid,) = decode(raw(ts=now + 61_000), limits, now).invalid
    assert invalid.reason == "timestamp_out_of_range"
    assert decode(raw(ts=now + 61_000), Limits(max_future_ms=None), now).events


def test_dlq_record_carries_reason_source_and_raw_bytes() -> None:
    (invalid,) = decode(b"\xff\xfe garbage").invalid
    record = msgspec.json.decode(dlq_record(invalid, "driftline.events", 2, 41))
    assert record["reason"] == "invalid_json"
    assert record["source"] == {"topic": "driftline.events", "partition": 2, "offset": 41}
    assert (
        msgspec.json.decode(msgspec.json.encode(record["raw"]), type=bytes) == b"\xff\xfe garbage"
    )
