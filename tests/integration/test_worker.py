"""The stream worker against the real local broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

import numpy as np

from stream.events import BATCH_SCHEMA, EVENT_SCHEMA

from .conftest import Setup, consume_all, free_port, produce, wait_for

WINDOW = 600_000


def base_ts() -> int:
    """A window boundary two hours back (event time, well inside the future limit)."""
    now = int(time.time() * 1000) - 2 * 3_600_000
    return now - now % WINDOW


def event(
    at: int, i: int, rng: np.random.Generator, shift: float = 0.0, **over: Any
) -> dict[str, Any]:
    e = {
        "schema": EVENT_SCHEMA,
        "event_id": f"e{at}-{i}",
        "model": "fraud",
        "model_version": "3",
        "ts": at,
        "features": {
            "amount": float(rng.lognormal(3 + shift, 0.5)),
            "age": float(rng.normal(40, 10)),
            "country": str(rng.choice(["DE", "FR", "NL"], p=[0.5, 0.3, 0.2])),
        },
        "prediction": float(rng.uniform()),
        "latency_ms": float(rng.lognormal(2, 0.3)),
        "status": "ok",
    }
    e.update(over)
    return e


def window_events(
    start: int, n: int, rng: np.random.Generator, shift: float = 0.0
) -> list[dict[str, Any]]:
    return [event(start + i * (WINDOW // n), i, rng, shift) for i in range(n)]


def reports(setup: Setup, expected: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        got = [json.loads(v) for v in consume_all(setup.kafka.bootstrap, setup.reports)]
        return got if len(got) >= expected else None

    got: list[dict[str, Any]] = wait_for(ready, 120, f"{expected} window reports")
    return sorted(got, key=lambda r: r["window_start_ms"])


def test_shifted_feature_is_flagged_and_nothing_is_lost(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    rng = np.random.default_rng(1)
    t0 = base_ts()
    steady = window_events(t0, 3_000, rng)
    shifted = window_events(t0 + WINDOW, 3_000, rng, shift=0.8)
    worker = start_worker()
    produce(
        setup.kafka.bootstrap,
        setup.events,
        [(b"fraud", json.dumps(e).encode()) for e in steady + shifted],
    )
    first, second = reports(setup, 2)
    assert worker.poll() is None
    assert [first["rows"], second["rows"]] == [3_000, 3_000]  # nothing lost or doubled
    assert first["window_start_ms"] == t0
    assert second["window_start_ms"] == t0 + WINDOW
    assert all(f["psi"] < 0.1 for f in first["features"].values())
    assert second["features"]["amount"]["psi"] > 0.2
    assert second["features"]["amount"]["ks"] > 0.15
    assert second["features"]["age"]["psi"] < 0.1
    assert second["features"]["country"]["psi"] < 0.1
    assert consume_all(setup.kafka.bootstrap, setup.dlq) == []


def test_bad_messages_go_to_the_dlq_and_good_ones_are_all_counted(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    rng = np.random.default_rng(2)
    t0 = base_ts()
    good = window_events(t0, 1_000, rng)
    bad: list[tuple[bytes | None, bytes]] = [
        (b"fraud", b"{not json"),
        (b"fraud", json.dumps(event(t0, -1, rng, model=42)).encode()),  # mistyped field
        (b"fraud", b'{"schema":"driftline.event/v1","pad":"' + b"x" * (2 << 20) + b'"}'),
        (b"other", json.dumps(event(t0, -2, rng, model="other")).encode()),
        (b"fraud", json.dumps(event(t0, -3, rng, features={"amount": "high"})).encode()),
        (b"fraud", json.dumps(event(t0, -4, rng, ts=t0 + 10 * 24 * 3_600_000 * 365)).encode()),
    ]
    envelope = {"schema": BATCH_SCHEMA, "events": [*good[:500], {"schema": EVENT_SCHEMA}]}
    messages: list[tuple[bytes | None, bytes]] = [(b"fraud", json.dumps(envelope).encode())]
    for i, e in enumerate(good[500:]):
        messages.append((b"fraud", json.dumps(e).encode()))
        if i % 80 == 0 and bad:
            messages.append(bad.pop())
    messages.extend(bad)
    worker = start_worker()
    produce(setup.kafka.bootstrap, setup.events, messages)
    (report,) = reports(setup, 1)
    assert report["rows"] == 1_000
    dead = wait_for(
        lambda: (got := consume_all(setup.kafka.bootstrap, setup.dlq)) and len(got) >= 7 and got,
        60,
        "7 dead letters",
    )
    records = [json.loads(d) for d in dead]
    assert sorted(r["reason"] for r in records) == sorted(
        [
            "invalid_json",
            "schema_violation",
            "too_large",
            "unknown_model",
            "feature_type_mismatch",
            "timestamp_out_of_range",
            "schema_violation",
        ]
    )
    assert all(r["detail"] and r["raw"] and r["source"]["topic"] == setup.events for r in records)
    assert worker.poll() is None


def test_a_drift_episode_raises_one_retrain_event_per_rule(
    setup: Setup, start_worker: Callable[..., Popen[bytes]], tmp_path: Path
) -> None:
    from .conftest import received
    from .test_webhooks import cli

    port = free_port()
    receiver = cli(
        "receiver", "--port", str(port), "--seen-file", str(tmp_path / "seen"),
        log=tmp_path / "receiver.log",
    )  # fmt: skip
    dispatcher = cli(
        "dispatcher", "--bootstrap", setup.kafka.bootstrap,
        "--url", f"http://127.0.0.1:{port}/retrain", "--topic", setup.retrain,
        "--dlq-topic", f"{setup.retrain}.dlq", "--group", f"{setup.prefix}-dispatcher",
        log=tmp_path / "dispatcher.log",
    )  # fmt: skip
    try:
        _drift_episode(setup, start_worker)
        # and the orchestrator's side: both events arrived, signed, exactly once
        wait_for(lambda: received(port) == 2, 60, "2 retrain events at the receiver")
        found = [json.loads(v)["id"] for v in consume_all(setup.kafka.bootstrap, setup.retrain)]
        assert sorted((tmp_path / "seen").read_text().split()) == sorted(found)
    finally:
        for proc in (dispatcher, receiver):
            proc.terminate()
            proc.wait(timeout=30)


def _drift_episode(setup: Setup, start_worker: Callable[..., Popen[bytes]]) -> None:
    """Four windows (steady, drifted, drifted, steady) through the worker; then the same
    events through replay must give the same reports, alerts and retrain event ids."""
    rng = np.random.default_rng(3)
    t0 = base_ts()
    shifts = [0.0, 0.8, 0.8, 0.0]  # steady, two drifted windows, steady again
    events = [
        e for i, s in enumerate(shifts) for e in window_events(t0 + i * WINDOW, 1_500, rng, s)
    ]
    start_worker()
    produce(
        setup.kafka.bootstrap, setup.events, [(b"fraud", json.dumps(e).encode()) for e in events]
    )
    assert [r["rows"] for r in reports(setup, 4)] == [1_500] * 4

    def retrain_events() -> list[dict[str, Any]] | None:
        got = [json.loads(v) for v in consume_all(setup.kafka.bootstrap, setup.retrain)]
        return got if len(got) >= 2 else None

    # reports are sent before their evaluation's events, and window C came before D
    found = wait_for(retrain_events, 60, "retrain events")
    assert sorted(e["data"]["rule"] for e in found) == ["feature_ks", "feature_psi"]
    for event in found:
        assert event["specversion"] == "1.0"
        assert event["type"] == "io.driftline.retrain.requested"
        assert event["subject"] == "fraud"
        assert event["data"]["report_id"] == f"fraud/3/{t0 + 2 * WINDOW}/{t0 + 3 * WINDOW}"
        assert [b["feature"] for b in event["data"]["breaches"]] == ["amount"]
    alerts = [json.loads(v) for v in consume_all(setup.kafka.bootstrap, setup.alerts)]
    states = sorted((a["rule"], a["feature"], a["state"]) for a in alerts)
    assert states == [
        ("feature_ks", "amount", "firing"),
        ("feature_ks", "amount", "resolved"),
        ("feature_psi", "amount", "firing"),
        ("feature_psi", "amount", "resolved"),
    ]
    # replay of the same events: the same engines, so the same results
    import polars as pl

    from alerts.rules import default_rules
    from stream.replay import frames, replay
    from stream.windows import WindowSpec

    rows = [{"ts": e["ts"], "model": e["model"], "model_version": e["model_version"],
             "event_id": e["event_id"], **e["features"], "prediction": e["prediction"],
             "latency_ms": e["latency_ms"], "status": e["status"]} for e in events]  # fmt: skip
    path = setup.tmp / "events.parquet"
    pl.DataFrame(rows).write_parquet(path)
    backtest = replay(
        frames([path]),
        WindowSpec(WINDOW, None, 60_000),
        lambda m, v: setup.profile,
        default_rules(),
    )
    streamed = reports(setup, 4)
    assert [round_floats(w) for w in backtest.windows] == [round_floats(r) for r in streamed]
    assert sorted(a["alert_id"] for a in backtest.alerts) == sorted(a["alert_id"] for a in alerts)
    assert sorted(e["id"] for e in backtest.retrain_events) == sorted(e["id"] for e in found)


def round_floats(value: Any) -> Any:
    """Float sums differ in the last bits with batching; everything else must be equal."""
    if isinstance(value, dict):
        return {k: round_floats(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.9g}")
    return value
