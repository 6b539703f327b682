"""Hostile input through a real worker on the real broker: about 1% of the events are bad
in every way the contract names (and a few it does not), mixed into valid traffic as
single messages and inside batch envelopes.

The worker must stay up and keep consuming; every bad event must reach the DLQ with the
reason the contract gives it (per-reason counts equal to what was generated); every valid
event must be counted, in the metrics and in the window reports' rows. Duplicate event
ids are valid events: the contract deduplicates redelivered *messages* (by offset), not
event ids, so a prediction sent twice in two messages counts twice, and the duplicate
metric stays at 0.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import Popen
from typing import Any

import numpy as np

from stream.events import BATCH_SCHEMA, EVENT_SCHEMA
from tests.fuzzing import scaled
from tests.integration.conftest import Setup, consume_all, free_port, group_state, wait_for

from .conftest import crashes, metric, produce_raw, record_figures, scrape

WINDOW = 600_000
ENVELOPE = 100  # events per batch envelope
SINGLE_SHARE = 0.1  # valid events sent one per message; the rest go in envelopes


@dataclass(frozen=True)
class Bad:
    """One bad message or event: the reason the DLQ must give, and how to find it there."""

    reason: str
    raw: bytes | None = None  # exactly the DLQ record's raw (a message refused whole)
    marker: str | None = None  # an event id inside the DLQ record's raw


@dataclass
class Plan:
    messages: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    rows: Counter[int] = field(default_factory=Counter)  # valid events per window start
    bad: list[Bad] = field(default_factory=list)
    duplicates: int = 0  # valid events reusing an event id, or sent twice

    @property
    def valid(self) -> int:
        return sum(self.rows.values())


def good_event(ts: int, event_id: str, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "schema": EVENT_SCHEMA,
        "event_id": event_id,
        "model": "fraud",
        "model_version": "3",
        "ts": ts,
        "features": {
            "amount": float(rng.lognormal(3, 0.5)),
            "age": float(rng.normal(40, 10)),
            "country": str(rng.choice(["DE", "FR", "NL"], p=[0.5, 0.3, 0.2])),
        },
        "prediction": float(rng.uniform()),
        "latency_ms": float(rng.lognormal(2, 0.3)),
        "status": "ok",
    }


def odd_but_valid(event: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Valid events at the edges of the contract: they must be counted like any other."""
    kind = int(rng.integers(9))
    ts = event["ts"]
    if kind == 0:
        event["features"] = {**event["features"], **{f"extra{i}": 1.0 for i in range(990)}}
    elif kind == 1:
        event["features"] = {"country": None}  # the others missing
    elif kind == 2:
        event["features"]["amount"] = float(rng.choice([1e308, -1e308, 5e-324, 0.0]))
    elif kind == 3:
        event["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + (
            f".{ts % 1000:03d}Z"
        )
    elif kind == 4:
        event["ts"] = float(ts)
        event["model_version"] = 3
    elif kind == 5:
        event["features"]["country"] = str(rng.choice(["", "Österreich", "日本", "🙂" * 200]))
    elif kind == 6:
        event.update(status="error", latency_ms=0.0, prediction=None)
    elif kind == 7:
        event["unknown_field"] = {"nested": [1, 2, {"x": None}]}
    else:
        event["features"]["age"] = int(rng.integers(-(2**53), 2**53))
    return event


def dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode()


# (reason, how to spoil a valid event); the spoiled event is sent alone or in an envelope
SPOILERS: list[tuple[str, Callable[[dict[str, Any]], bytes]]] = [
    ("schema_violation", lambda e: dumps({**e, "model": 42})),
    ("schema_violation", lambda e: dumps({**e, "features": [1, 2]})),
    ("schema_violation", lambda e: dumps({**e, "features": {"amount": True}})),
    ("schema_violation", lambda e: dumps({**e, "features": {"amount": {"x": 1}}})),
    ("schema_violation", lambda e: dumps({**e, "status": "crashed"})),
    ("schema_violation", lambda e: dumps({k: v for k, v in e.items() if k != "model"})),
    ("unknown_schema", lambda e: dumps({**e, "schema": "driftline.event/v2"})),
    ("not_finite", lambda e: dumps({**e, "prediction": "@"}).replace(b'"@"', b"1e999")),
    ("not_finite", lambda e: dumps({**e, "features": {"amount": "@"}}).replace(b'"@"', b"-1e999")),
    ("bad_field", lambda e: dumps({**e, "latency_ms": -1.0})),
    ("bad_field", lambda e: dumps({**e, "latency_ms": "@"}).replace(b'"@"', b"1e400")),
    ("bad_field", lambda e: dumps({**e, "model": ""})),
    ("string_too_long", lambda e: dumps({**e, "features": {"country": "x" * 5_000}})),
    ("string_too_long", lambda e: dumps({**e, "features": {"k" * 2_000: 1.0}})),
    ("string_too_long", lambda e: dumps({**e, "model_version": "v" * 1_025})),
    ("too_many_features", lambda e: dumps({**e, "features": {f"f{i}": 1.0 for i in range(3_000)}})),
    ("bad_timestamp", lambda e: dumps({**e, "ts": "yesterday"})),
    ("bad_timestamp", lambda e: dumps({**e, "ts": "2026-11-22T10:00:00"})),  # no time zone
    ("bad_timestamp", lambda e: dumps({**e, "ts": "2026-02-30T10:00:00Z"})),
    ("timestamp_out_of_range", lambda e: dumps({**e, "ts": 631_152_000_000})),  # 1990
    ("timestamp_out_of_range", lambda e: dumps({**e, "ts": e["ts"] // 1000})),  # seconds, not ms
    ("timestamp_out_of_range", lambda e: dumps({**e, "ts": e["ts"] + 10 * 365 * 86_400_000})),
    ("timestamp_out_of_range", lambda e: dumps({**e, "ts": int(time.time() * 1000) + 7_200_000})),
    # decoded fine, refused by the engine
    ("unknown_model", lambda e: dumps({**e, "model": "ghost"})),
    ("unknown_model", lambda e: dumps({**e, "model": f"ghost-{e['event_id']}"})),  # a new name each
    (
        "feature_type_mismatch",
        lambda e: dumps({**e, "features": {**e["features"], "amount": "high"}}),
    ),
    (
        "feature_type_mismatch",
        lambda e: dumps({**e, "features": {**e["features"], "country": 3.5}}),
    ),
    ("feature_type_mismatch", lambda e: dumps({**e, "prediction": "yes"})),
]

Make = Callable[[dict[str, Any], np.random.Generator], bytes | None]

# messages refused whole: (reason, make the bytes from a valid event and a random source)
WHOLE: list[tuple[str, Make]] = [
    ("invalid_json", lambda e, rng: dumps(e)[: int(rng.integers(1, 60))]),
    ("invalid_json", lambda e, rng: b"\x00" + rng.bytes(int(rng.integers(0, 300)))),
    ("invalid_json", lambda e, rng: json.dumps({**e, "prediction": float("nan")}).encode()),
    ("invalid_json", lambda e, rng: json.dumps({**e, "prediction": float("-inf")}).encode()),
    (
        "invalid_json",
        lambda e, rng: dumps({**e, "features": {"country": "@"}}).replace(b'"@"', b'"\xff\xfe"'),
    ),
    (
        "invalid_json",
        lambda e, rng: dumps({**e, "pad": "@"}).replace(b'"@"', b"[" * 5_000 + b"]" * 5_000),
    ),
    ("invalid_json", lambda e, rng: b""),
    ("invalid_json", lambda e, rng: None),  # a tombstone: a message without a value
    ("schema_violation", lambda e, rng: b"[1, 2, 3]"),
    ("schema_violation", lambda e, rng: b'"just a string"'),
    ("schema_violation", lambda e, rng: dumps({"schema": BATCH_SCHEMA, "events": {"a": 1}})),
    ("unknown_schema", lambda e, rng: dumps({"schema": "driftline.batch/v9", "events": [e]})),
]
OVERSIZED: tuple[str, Make] = ("too_large", lambda e, rng: dumps({**e, "pad": "x" * (1_500_000)}))


def plan(n: int, windows: int, t0: int, seed: int = 9) -> Plan:
    """``n`` events over ``windows`` windows from ``t0``: ~1% bad, ~0.2% duplicates,
    ~1% odd but valid; a tenth of the valid ones alone, the rest in envelopes."""
    rng = np.random.default_rng(seed)
    out = Plan()
    n_bad = n // 100
    n_valid = n - n_bad
    bad_at = set(rng.choice(n_valid, size=n_bad, replace=False).tolist())
    oversized_left = scaled(4, 20)
    envelope: list[bytes] = []
    recent: list[tuple[bytes, int]] = []  # single messages sent lately: (bytes, ts)
    counter = 0

    def flush() -> None:
        if envelope:
            body = (
                b'{"schema":"'
                + BATCH_SCHEMA.encode()
                + b'","events":['
                + b",".join(envelope)
                + b"]}"
            )
            out.messages.append((b"fraud", body))
            envelope.clear()

    def count(ts: int) -> None:
        out.rows[ts - ts % WINDOW] += 1

    span = windows * WINDOW
    for i in range(n_valid):
        ts = t0 + (i * span) // n_valid
        event = good_event(ts, f"ok-{i}", rng)
        if i in bad_at:
            counter += 1
            marker = f"bad-{counter}"
            spoilt = {**event, "event_id": marker}
            choice = rng.random()
            if choice < 0.7:
                reason, spoil = SPOILERS[int(rng.integers(len(SPOILERS)))]
                raw = spoil(spoilt)
                if rng.random() < 0.5:
                    envelope.append(raw)  # the DLQ gets this event's bytes, re-encoded maybe
                    out.bad.append(Bad(reason, None, _marker(raw)))
                else:
                    flush()
                    out.messages.append((b"fraud", raw))
                    exact = (
                        raw if reason not in ("unknown_model", "feature_type_mismatch") else None
                    )
                    out.bad.append(Bad(reason, exact, _marker(raw)))
            else:
                if oversized_left and rng.random() < 0.05:
                    oversized_left -= 1
                    reason, make = OVERSIZED
                else:
                    reason, make = WHOLE[int(rng.integers(len(WHOLE)))]
                value = make(spoilt, rng)
                flush()
                # keyed apart from the valid traffic: another partition, most likely
                out.messages.append((f"junk-{counter}".encode(), value))
                raw = value if value is not None else b""
                out.bad.append(Bad(reason, raw, _marker(raw)))
        roll = rng.random()
        if roll < 0.002 and i > 0:  # the id of an earlier event, in a new event
            event["event_id"] = f"ok-{int(rng.integers(0, i))}"
            out.duplicates += 1
        elif roll < 0.012:
            event = odd_but_valid(event, rng)
        raw = dumps(event)
        count(ts)
        if rng.random() < SINGLE_SHARE:
            flush()
            out.messages.append((b"fraud", raw))
            recent = [*recent[-20:], (raw, ts)]
        else:
            envelope.append(raw)
            if len(envelope) >= ENVELOPE:
                flush()
        if recent and rng.random() < 0.0005:  # a message sent twice (a producer retry)
            again, again_ts = recent[int(rng.integers(len(recent)))]
            flush()
            out.messages.append((b"fraud", again))
            count(again_ts)
            out.duplicates += 1
    flush()
    return out


def test_hostile_input_loses_nothing_and_crashes_nothing(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    n = scaled(50_000, 1_000_000)
    windows = scaled(6, 12)
    now = int(time.time() * 1000)
    t0 = now - 2 * 3_600_000
    t0 -= t0 % WINDOW
    built = time.monotonic()
    traffic = plan(n, windows, t0)
    built = time.monotonic() - built
    port = free_port()
    worker = start_worker(metrics_port=port)
    bootstrap = setup.kafka.bootstrap
    wait_for(lambda: scrape(port), 60, "the worker's metrics endpoint")
    started = time.monotonic()
    produce_raw(bootstrap, setup.events, traffic.messages)
    produced = time.monotonic() - started
    group = f"{setup.prefix}-worker"
    expected_dead = Counter(b.reason for b in traffic.bad)

    def counts() -> tuple[float, float]:
        samples = scrape(port)
        invalid = sum(v for (k, _), v in samples.items() if k == "driftline_invalid_events_total")
        return metric(samples, "driftline_events_total", model="fraud"), invalid

    def progress() -> str:
        counted, invalid = counts()
        return (
            f"alive={worker.poll() is None} events={counted:.0f}/{traffic.valid} "
            f"invalid={invalid:.0f}/{len(traffic.bad)} "
            f"lag={group_state(bootstrap, group, setup.events)[1]} "
            f"crash lines={len(crashes(setup.tmp / 'w1.log'))}"
        )

    def consumed() -> bool:
        counted, invalid = counts()
        return counted >= traffic.valid and invalid >= len(traffic.bad)

    wait_for(
        consumed,
        scaled(90, 900),
        "every event counted or dead-lettered",
        every=0.5,
        status=progress,
    )
    drained = time.monotonic() - started

    def all_reports() -> dict[str, dict[str, Any]] | None:
        got = [json.loads(v) for v in consume_all(bootstrap, setup.reports)]
        unique = {r["report_id"]: r for r in got}
        return unique if len(unique) >= len(traffic.rows) else None

    reports = wait_for(all_reports, 60, f"{len(traffic.rows)} window reports", status=progress)
    dead = wait_for(
        lambda: (got := consume_all(bootstrap, setup.dlq)) and len(got) >= len(traffic.bad) and got,
        60,
        f"{len(traffic.bad)} dead letters",
        status=progress,
    )
    samples = scrape(port)
    records = [json.loads(d) for d in dead]
    raws = [base64.b64decode(r["raw"]) for r in records]
    got_dead = Counter(r["reason"] for r in records)
    rows = {r["window_start_ms"]: r["rows"] for r in reports.values()}
    crash_lines = crashes(setup.tmp / "w1.log")
    record_figures(
        "hostile_input",
        {
            "events": n,
            "valid": traffic.valid,
            "bad": len(traffic.bad),
            "duplicates": traffic.duplicates,
            "messages": len(traffic.messages),
            "worker_alive": worker.poll() is None,
            "crash_lines": len(crash_lines),
            "counted_metric": metric(samples, "driftline_events_total", model="fraud"),
            "counted_rows": sum(rows.values()),
            "dlq": len(records),
            "dlq_by_reason": dict(sorted(got_dead.items())),
            "expected_by_reason": dict(sorted(expected_dead.items())),
            "late": sum(r["late_events"] for r in reports.values()),
            "duplicate_metric": metric(samples, "driftline_duplicate_events_total", model="fraud"),
            "seconds_plan": round(built, 1),
            "seconds_produce": round(produced, 1),
            "seconds_to_drain": round(drained, 1),
        },
    )
    # the worker is up, crashed nowhere, and still consuming: the group caught up
    assert worker.poll() is None
    assert crash_lines == []
    wait_for(
        lambda: group_state(bootstrap, group, setup.events)[1] == 0, 60, "all offsets committed"
    )
    # every valid event counted, in the metrics and in the windows, none twice
    assert metric(samples, "driftline_events_total", model="fraud") == traffic.valid
    assert rows == dict(traffic.rows)
    assert all(r["late_events"] == 0 for r in reports.values())
    assert metric(samples, "driftline_duplicate_events_total", model="fraud") == 0
    # every bad one dead-lettered once, with the reason the contract gives it
    assert got_dead == expected_dead
    for reason, count in expected_dead.items():
        assert metric(samples, "driftline_invalid_events_total", reason=reason) == count, reason
    assert all(r["detail"] and r["source"]["topic"] == setup.events for r in records)
    missing = Counter(b.raw for b in traffic.bad if b.raw is not None) - Counter(raws)
    assert not missing, f"{sum(missing.values())} messages refused whole are not in the DLQ as sent"
    by_marker = {
        marker: r["reason"]
        for r, raw in zip(records, raws, strict=True)
        for marker in [_marker(raw)]
        if marker is not None
    }
    assert {b.marker: b.reason for b in traffic.bad if b.marker} == by_marker


def _marker(raw: bytes) -> str | None:
    """The ``bad-N`` event id inside a message or a dead letter's raw bytes, if any."""
    found = re.search(rb'"(bad-[0-9]+)"', raw)
    return found.group(1).decode() if found else None
