"""A worker killed with SIGKILL mid-window (and mid-batch, as far as timing allows) and
restarted must publish the same window reports and retrain events as a worker that ran
through: its state (open windows' sketches, watermark, rule episodes, offsets) lives on the
compacted state topic and the restarted worker skips messages that state already
counts. A report or retrain event published again after a restart carries the same id
and the same figures.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from functools import partial
from subprocess import Popen
from typing import Any

import numpy as np
import yaml

from alerts.engine import evaluate_all
from alerts.rules import default_rules
from stream.events import BATCH_SCHEMA
from tests.fuzzing import FULL, scaled
from tests.integration.conftest import Setup, consume_all, free_port, group_state, wait_for
from tests.integration.test_worker import WINDOW, round_floats, window_events

from .conftest import crashes, group_offsets, metric, record_figures, scrape

Messages = list[tuple[bytes | None, bytes | None]]


def configure(setup: Setup, tag: str) -> dict[str, str]:
    """Points the test's worker configuration at topics and a group of their own; windows
    close by watermark only (no wall-clock idling), in small batches."""
    config = yaml.safe_load(setup.config_path.read_text())
    kafka = config["kafka"]
    names = {name: f"{setup.prefix}-{tag}.{name}" for name in ("events", "reports", "retrain")}
    for name in ("events", "reports", "dlq", "alerts", "retrain"):
        kafka[f"{name}_topic"] = names.get(name, f"{setup.prefix}-{tag}.{name}")
    kafka["group"] = names["group"] = f"{setup.prefix}-{tag}-worker"
    kafka["batch_size"] = 200
    config["window"]["idle_close"] = "1h"
    setup.config_path.write_text(yaml.safe_dump(config))
    return names


def traffic(t0: int, windows: int, per_window: int) -> tuple[Messages, int]:
    """Windows of steady and drifted traffic (two drifted windows in every four raise
    retrain events), a third as single messages and the rest in envelopes of 50, then
    one event in a later window that closes them all. Returns messages and events."""
    rng = np.random.default_rng(5)
    shifts = [0.0, 0.8, 0.8, 0.0]
    events = [
        e
        for w in range(windows)
        for e in window_events(t0 + w * WINDOW, per_window, rng, shifts[w % 4])
    ]
    closer = {**events[-1], "event_id": "closer", "ts": t0 + (windows + 1) * WINDOW + 90_000}
    messages: Messages = []
    envelope: list[bytes] = []
    for e in [*events, closer]:
        raw = json.dumps(e).encode()
        if rng.random() < 1 / 3 or e is closer:
            if envelope:
                messages.append((b"fraud", _envelope(envelope)))
                envelope = []
            messages.append((b"fraud", raw))
        else:
            envelope.append(raw)
            if len(envelope) == 50:
                messages.append((b"fraud", _envelope(envelope)))
                envelope = []
    return messages, len(events) + 1


def _envelope(items: list[bytes]) -> bytes:
    return b'{"schema":"' + BATCH_SCHEMA.encode() + b'","events":[' + b",".join(items) + b"]}"


def produce(setup: Setup, topic: str, messages: Messages) -> None:
    from .conftest import produce_raw

    produce_raw(setup.kafka.bootstrap, topic, messages)


def collect(
    setup: Setup, names: dict[str, str], windows: int, retrain: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every report and retrain event published (duplicates included), once all windows
    are reported and ``retrain`` distinct retrain events are out."""
    bootstrap = setup.kafka.bootstrap

    def done() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        reports = [json.loads(v) for v in consume_all(bootstrap, names["reports"])]
        events = [json.loads(v) for v in consume_all(bootstrap, names["retrain"])]
        if len({r["report_id"] for r in reports}) < windows:
            return None
        if len({e["id"] for e in events}) < retrain:
            return None
        return reports, events

    found: tuple[list[dict[str, Any]], list[dict[str, Any]]] = wait_for(
        done, 120, f"{windows} reports and {retrain} retrain events"
    )
    return found


def test_sigkill_mid_window_then_restart_gives_the_uninterrupted_results(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    windows = scaled(4, 8)
    per_window = scaled(3_000, 40_000)
    kills = scaled(1, 3)
    now = int(time.time() * 1000)
    t0 = now - 3 * 3_600_000
    t0 -= t0 % WINDOW
    messages, n_events = traffic(t0, windows, per_window)
    bootstrap = setup.kafka.bootstrap

    # the reference: one worker, never interrupted
    ref = configure(setup, "ref")
    worker = start_worker("ref")
    produce(setup, ref["events"], messages)
    probe, _ = collect(setup, ref, windows, 0)
    expected_retrain = {e["id"] for e in evaluate_all(default_rules(), probe).retrain}
    assert expected_retrain, "the traffic should raise retrain events"
    ref_reports, ref_retrain = collect(setup, ref, windows, len(expected_retrain))
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)

    # the same traffic, in parts; after each part but the first, SIGKILL while the
    # worker is counting it, and a new process
    run = configure(setup, "killed")
    cuts = [int(len(messages) * f) for f in np.linspace(0.2, 0.85, kills + 1)]
    parts = [messages[a:b] for a, b in zip([0, *cuts], [*cuts, len(messages)], strict=True)]
    port = free_port()
    worker = start_worker("killed-0", metrics_port=port)
    produce(setup, run["events"], parts[0])
    wait_for(
        lambda: group_state(bootstrap, run["group"], run["events"])[1] == 0,
        90,
        "the first part consumed and committed",
    )
    killed_at: list[dict[str, float]] = []
    for k, part in enumerate(parts[1:-1], start=1):
        before = counted_by(port)
        produce(setup, run["events"], part)
        wait_for(partial(counting, port, before), 60, f"part {k} being counted", every=0.02)
        counted = metric(scrape(port), "driftline_events_total", model="fraud")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        lag = group_state(bootstrap, run["group"], run["events"])[1]
        killed_at.append({"part": k, "counted_by_killed_process": counted, "uncommitted": lag})
        port = free_port()
        worker = start_worker(f"killed-{k}", metrics_port=port)
    produce(setup, run["events"], parts[-1])
    reports, retrain = collect(setup, run, windows, len(expected_retrain))
    wait_for(
        lambda: group_state(bootstrap, run["group"], run["events"])[1] == 0,
        60,
        "every message committed",
        status=lambda: group_offsets(bootstrap, run["group"], run["events"]),
    )
    samples = scrape(port)
    reports, retrain = collect(setup, run, windows, len(expected_retrain))  # late duplicates too

    unique = {r["report_id"]: round_floats(r) for r in reports}
    ref_unique = {r["report_id"]: round_floats(r) for r in ref_reports}
    record_figures(
        "kill_restart",
        {
            "events": n_events,
            "messages": len(messages),
            "windows": windows,
            "kills": killed_at,
            "reports": len(reports),
            "reports_unique": len(unique),
            "retrain": len(retrain),
            "retrain_unique": len({e["id"] for e in retrain}),
            "retrain_expected": len(expected_retrain),
            "skipped_as_already_counted": metric(
                samples, "driftline_duplicate_events_total", model="fraud"
            ),
            "crash_lines": sum(len(crashes(setup.tmp / f"killed-{k}.log")) for k in range(kills)),
            "full": FULL,
        },
    )
    # the reference run is complete and self-consistent
    assert len(ref_unique) == windows == len(ref_reports)
    assert (
        sum(r["rows"] for r in ref_unique.values()) == n_events - 1
    )  # the closer's window is open
    assert {e["id"] for e in ref_retrain} == expected_retrain
    # the interrupted run: the same windows, figures, rows and ids; repeats are identical
    assert unique.keys() == ref_unique.keys()
    for report in reports:
        assert round_floats(report) == ref_unique[report["report_id"]], report["report_id"]
    assert {e["id"] for e in retrain} == expected_retrain  # none lost, none new
    by_id = {e["id"]: e for e in ref_retrain}
    for event in retrain:
        assert _same_event(event, by_id[event["id"]]), event["id"]
    assert all(r["late_events"] == 0 for r in reports)


def counted_by(port: int) -> float:
    return metric(scrape(port), "driftline_events_total", model="fraud")


def counting(port: int, before: float) -> bool:
    return counted_by(port) > before


def _same_event(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Retrain events of the same id say the same thing (their ``time`` is the window's
    end, so they are equal through and through)."""
    return bool(round_floats(a) == round_floats(b))
