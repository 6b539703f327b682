"""Two workers share the partitions; one leaves and the other takes its models over.

Rebalances are where a consumer hands messages twice or skips one (see
stream.worker.Sequencer); every window must still count each event exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import Popen
from typing import Any

import numpy as np

from tests.integration.conftest import Setup, consume_all, produce, wait_for
from tests.integration.test_worker import WINDOW, base_ts, window_events


def one_model_per_partition(partitions: int) -> list[str]:
    """Model names whose keys land on distinct partitions (Kafka's murmur2 partitioner),
    so that each worker of two owns models with traffic whatever the assignment."""
    from aiokafka.partitioner import murmur2

    chosen: dict[int, str] = {}
    for i in range(1000):
        name = f"m{i}"
        chosen.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % partitions, name)
        if len(chosen) == partitions:
            break
    return [chosen[p] for p in range(partitions)]


def test_two_workers_share_partitions_and_one_takes_over(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    import yaml

    from tests.integration.conftest import group_assignments, group_state

    # four models over four partitions; windows close by watermark, not by idling
    config = yaml.safe_load(setup.config_path.read_text())
    ref = config["models"][0]["reference"]
    models = one_model_per_partition(4)
    config["models"] = [{"name": m, "reference": ref} for m in models]
    config["window"]["idle_close"] = "10m"
    setup.config_path.write_text(yaml.safe_dump(config))
    group = config["kafka"]["group"]
    bootstrap = setup.kafka.bootstrap

    def batch(start: int, n: int, seed: int) -> list[tuple[bytes | None, bytes]]:
        rng = np.random.default_rng(seed)
        out: list[tuple[bytes | None, bytes]] = []
        for m in models:
            for e in window_events(start, n, rng):
                e["model"] = m
                e["event_id"] = f"{m}-{e['event_id']}"
                out.append((m.encode(), json.dumps(e).encode()))
        return out

    t0 = base_ts()
    window_a = batch(t0, 1_000, 1)
    start_worker("w1")
    w2 = start_worker("w2")
    wait_for(lambda: group_state(bootstrap, group, setup.events)[0] == 2, 90, "two group members")

    def split() -> list[dict[str, set[int]]] | None:
        members = group_assignments(bootstrap, group)
        spread = [m.get(setup.events, set()) for m in members]
        return members if len(members) == 2 and all(spread) else None

    # each worker has the outcomes partitions of its events partitions (co-partitioned)
    for member in wait_for(split, 60, "both workers assigned events partitions"):
        assert (
            member[setup.events]
            == member[config["kafka"].get("outcomes_topic", "driftline.outcomes")]
        ), member
    produce(bootstrap, setup.events, window_a[::2])  # half of window A, to both workers
    wait_for(
        lambda: group_state(bootstrap, group, setup.events)[1] == 0, 90, "the first half consumed"
    )
    w2.terminate()
    assert w2.wait(timeout=60) is not None
    closers: list[tuple[bytes | None, bytes]] = []
    for m in models:  # one event per model in a third window moves the watermarks
        e = json.loads(window_a[0][1])
        e.update(model=m, event_id=f"{m}-closer", ts=t0 + 2 * WINDOW + 90_000)
        closers.append((m.encode(), json.dumps(e).encode()))
    produce(bootstrap, setup.events, window_a[1::2] + batch(t0 + WINDOW, 500, 2) + closers)

    def all_reports() -> dict[str, dict[str, Any]] | None:
        got = [json.loads(v) for v in consume_all(bootstrap, setup.reports)]
        unique = {r["report_id"]: r for r in got}  # redelivery keeps the same id
        return unique if len(unique) >= 8 else None

    def seen() -> list[tuple[str, int, int, int]]:
        got = [json.loads(v) for v in consume_all(bootstrap, setup.reports)]
        return sorted(
            (r["model"], r["window_start_ms"] - t0, r["rows"], r["late_events"]) for r in got
        )

    unique = wait_for(all_reports, 120, "8 window reports", status=seen)
    assert all(r["late_events"] == 0 for r in unique.values()), seen()
    rows = sorted((r["model"], r["window_start_ms"], r["rows"]) for r in unique.values())
    expected = sorted([(m, t0, 1_000) for m in models] + [(m, t0 + WINDOW, 500) for m in models])
    assert rows == expected
