"""A sustained run at a fixed rate: a real producer sends batch envelopes (the benchmark's
events: 8 models, 20 numeric and 2 categorical features, 100 events per envelope) to one
worker (default configuration: batches of up to 5000 messages, outcomes joined with
pending predictions in RocksDB) while its resident memory (VmRSS) and its consumer
group's lag are sampled every second. After warm-up the memory must be flat and the lag
bounded, and every event must be counted.

Event time runs ``SPEED`` times faster than the wall clock, so that windows (1 min) open
and close every few seconds for every model, as they would over hours of real traffic:
what could pile up (closed windows, state writes, reports, rule state) does. (The
worker's ``driftline_processing_lag_seconds`` compares event time with the wall clock, so
it means nothing here: the lag is the group's, in messages not committed yet.)

Sizes: ``DRIFTLINE_LOAD_RATE`` events/s (default 20,000: a third of the worker's
benchmark rate, since the producer and the broker share the machine's two cores with it)
for 150 s (a 75-s window after warm-up: a 30-s one measured RSS's sawtooth, up to
68 MB/min, not its trend), or ``DRIFTLINE_LOAD_SECONDS``; ``DRIFTLINE_FAULTS_SCALE=full``
runs 10 min. The
figures are printed as a table and written to ``load.json`` (with every sample) in the
test's directory, and appended to ``$DRIFTLINE_FAULTS_FIGURES`` when set.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import numpy as np
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from stream.events import BATCH_SCHEMA, EVENT_SCHEMA
from stream.profiles import ModelProfile
from tests.fuzzing import FULL, scaled
from tests.integration.conftest import Setup, free_port, group_state, wait_for

from .conftest import crashes, metric, scrape

RATE = int(os.environ.get("DRIFTLINE_LOAD_RATE", "20000"))  # events/s
DURATION_S = int(os.environ.get("DRIFTLINE_LOAD_SECONDS", scaled(150, 600)))
# the worker's RSS takes 50-60 s at 20k events/s to reach its plateau (the largest batches
# and buffers it has needed so far, RocksDB's write buffer): memory is judged after that
WARMUP_S = max(60.0, DURATION_S / 2)
SPEED = 12  # event time per wall time: a 1 min window closes every 5 s
ENVELOPE = 100  # events per message
TICK_S = 0.05  # the producer sends what is due every tick
MODELS = [f"m{i}" for i in range(8)]
NUMERIC = [f"x{i}" for i in range(20)]
CATEGORICAL = {"country": ["DE", "FR", "NL", "IT"], "device": ["ios", "android", "web"]}

# The bounds, for a 2-core machine shared with the broker, the producer and other work.
# A leak of 100 bytes per event would add 120 MB/min at 20k events/s.
MAX_SLOPE_MB_PER_MIN = 10.0 if FULL else 30.0  # least-squares RSS slope after warm-up
MAX_GROWTH = 0.15  # max RSS after warm-up over the max during warm-up
LAG_FROM_S = 15.0  # the lag is judged from here on
MAX_LAG_S = 10.0  # lag, in seconds of traffic, at any sample from LAG_FROM_S
MAX_END_LAG_S = 5.0  # mean lag over the last 10 samples, in seconds of traffic
DRAIN_S = 60.0  # everything consumed and committed this long after the producer stops
MIN_RATE_SHARE = 0.95  # of RATE actually produced


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_mb: float
    lag_events: int  # messages of the events topic the group has not committed, x ENVELOPE
    produced: int  # events acknowledged by the broker so far
    counted: float  # the worker's driftline_events_total


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def events_counted(port: int) -> float:
    samples = scrape(port)
    return sum(metric(samples, "driftline_events_total", model=m) for m in MODELS)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    t = np.array([p[0] for p in points])
    v = np.array([p[1] for p in points])
    return float(np.polyfit(t, v, 1)[0] * 60)


class Traffic:
    """Batch envelopes made on the fly from pre-encoded feature rows (a few µs each)."""

    def __init__(self, t0: int) -> None:
        rng = np.random.default_rng(0)
        self.t0 = t0
        self.seq = 0
        self.rows = [self._row(rng) for _ in range(4096)]

    @staticmethod
    def _row(rng: np.random.Generator) -> bytes:
        features: dict[str, Any] = dict(
            zip(NUMERIC, rng.normal(size=len(NUMERIC)).round(4).tolist(), strict=True)
        )
        for name, values in CATEGORICAL.items():
            features[name] = str(rng.choice(values))
        body = {"features": features, "prediction": round(float(rng.uniform()), 4)}
        return json.dumps(body, separators=(",", ":")).encode()[1:-1]

    def envelope(self, model: str, elapsed_s: float) -> bytes:
        """``ENVELOPE`` events of ``model`` at event time t0 + elapsed * SPEED."""
        ts = self.t0 + int(elapsed_s * SPEED * 1000)
        events = []
        for _ in range(ENVELOPE):
            self.seq += 1
            events.append(
                b'{"schema":"%s","event_id":"l%d","model":"%s","model_version":"1","ts":%d,'
                b'"latency_ms":5.0,"status":"ok",%s}'
                % (
                    EVENT_SCHEMA.encode(),
                    self.seq,
                    model.encode(),
                    ts,
                    self.rows[self.seq % len(self.rows)],
                )
            )
        return b'{"schema":"%s","events":[%s]}' % (BATCH_SCHEMA.encode(), b",".join(events))


def configure(setup: Setup) -> None:
    """The benchmark's eight models on 1 min windows; topics of the test's own."""
    rng = np.random.default_rng(1)
    n = 50_000
    columns: dict[str, Any] = {name: rng.normal(size=n) for name in NUMERIC}
    for name, values in CATEGORICAL.items():
        columns[name] = rng.choice(values, n).tolist()
    profile = ModelProfile.build("m", "1", columns, prediction=rng.uniform(size=n))
    ref = profile.save(setup.tmp / "load.dlprofile")
    config = yaml.safe_load(setup.config_path.read_text())
    config["window"] = {"size": "1m", "lateness": "5s", "idle_close": "1h"}
    for name in ("batch_size", "batch_within"):  # the defaults (5000 messages, 0.5 s)
        del config["kafka"][name]
    if os.environ.get("DRIFTLINE_LOAD_OUTCOMES", "on") == "off":  # to tell what grows
        config["outcomes"] = {"enabled": False}
    config["kafka"]["outcomes_topic"] = f"{setup.prefix}.outcomes"
    config["kafka"]["quality_topic"] = f"{setup.prefix}.quality"
    config["models"] = [{"name": m, "reference": str(ref)} for m in MODELS]
    setup.config_path.write_text(yaml.safe_dump(config))


async def run_load(setup: Setup, pid: int, metrics_port: int) -> tuple[list[Sample], int]:
    """Produces at RATE for DURATION_S and samples the worker every second; returns the
    samples and the events produced."""
    bootstrap = setup.kafka.bootstrap
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, max_request_size=8 << 20
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    offsets = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await admin.start()
    await offsets.start()
    group = f"{setup.prefix}-worker"
    topics = await admin.describe_topics([setup.events])
    tps = [TopicPartition(setup.events, p["partition"]) for t in topics for p in t["partitions"]]
    assert tps, "the worker creates the events topic before it starts"
    now = int(time.time() * 1000)
    t0 = now - 4 * 3_600_000 - DURATION_S * SPEED * 1000  # event time stays in the past
    traffic = Traffic(t0 - t0 % 60_000)
    produced = [0]
    samples: list[Sample] = []

    async def lag() -> int:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await offsets.end_offsets(tps)
        behind = 0
        for tp, end in ends.items():
            done = committed.get(tp)
            behind += end - (done.offset if done is not None and done.offset >= 0 else 0)
        return behind * ENVELOPE

    async def produce(started: float) -> None:
        due = 0  # envelopes due so far
        model = 0
        while (elapsed := time.monotonic() - started) < DURATION_S:
            target = int(min(elapsed + TICK_S, DURATION_S) * RATE / ENVELOPE)
            futures = []
            while due < target:
                key = MODELS[model % len(MODELS)]
                model += 1
                body = traffic.envelope(key, elapsed)
                futures.append(await producer.send(setup.events, value=body, key=key.encode()))
                due += 1
            await asyncio.gather(*futures)
            produced[0] += len(futures) * ENVELOPE
            # the next tick on the schedule (not a synchronisation: the producer's pace)
            await asyncio.sleep(max(0.0, started + (due * ENVELOPE) / RATE - time.monotonic()))

    async def sample(started: float) -> None:
        k = 0
        while (t := time.monotonic() - started) <= DURATION_S:
            counted = await asyncio.to_thread(events_counted, metrics_port)
            samples.append(Sample(round(t, 2), rss_mb(pid), await lag(), produced[0], counted))
            k += 1
            await asyncio.sleep(max(0.0, started + k - time.monotonic()))

    try:
        started = time.monotonic()
        await asyncio.gather(produce(started), sample(started))
    finally:
        await producer.stop()
        await offsets.stop()
        await admin.close()
    return samples, produced[0]


def test_sustained_load_memory_flat_lag_bounded(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    configure(setup)
    port = free_port()
    worker = start_worker(metrics_port=port)
    group = f"{setup.prefix}-worker"
    bootstrap = setup.kafka.bootstrap
    wait_for(lambda: scrape(port), 60, "the worker's metrics endpoint")
    wait_for(lambda: group_state(bootstrap, group, setup.events)[0] == 1, 60, "the worker joined")
    rss_idle = rss_mb(worker.pid)
    cpu_before = cpu_s(worker.pid)
    load_before = os.getloadavg()
    samples, produced = asyncio.run(run_load(setup, worker.pid, port))
    cpu_load = cpu_s(worker.pid) - cpu_before
    load_after = os.getloadavg()
    stopped = time.monotonic()

    def drained() -> bool:
        return group_state(bootstrap, group, setup.events)[1] == 0

    wait_for(drained, DRAIN_S, "the worker to consume and commit everything")
    drain_s = time.monotonic() - stopped
    counted = events_counted(port)
    final = scrape(port)
    closed = sum(metric(final, "driftline_windows_closed_total", model=m) for m in MODELS)

    judged = [s for s in samples if s.t >= LAG_FROM_S]
    first = [s for s in samples if s.t < WARMUP_S]
    second = [s for s in samples if s.t >= WARMUP_S]
    last = samples[-10:]
    figures: dict[str, Any] = {
        "rate_target": RATE,
        "rate_produced": round(produced / DURATION_S),
        "duration_s": DURATION_S,
        "events": produced,
        "events_counted": counted,
        "windows_closed": closed,
        "rss_idle_mb": round(rss_idle, 1),
        "rss_warm_mb": round(second[0].rss_mb, 1),
        "rss_end_mb": round(samples[-1].rss_mb, 1),
        "warmup_s": WARMUP_S,
        "rss_max_warmup_mb": round(max(s.rss_mb for s in first), 1),
        "rss_max_after_warmup_mb": round(max(s.rss_mb for s in second), 1),
        "rss_slope_after_warmup_mb_per_min": round(
            slope_per_min([(s.t, s.rss_mb) for s in second]), 2
        ),
        "lag_max_events": max(s.lag_events for s in judged),
        "lag_end_events": round(sum(s.lag_events for s in last) / len(last)),
        "lag_slope_after_warmup_events_per_min": round(
            slope_per_min([(s.t, s.lag_events) for s in second])
        ),
        "drain_s": round(drain_s, 1),
        "worker_cpu_per_s": round(cpu_load / DURATION_S, 2),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "full": FULL,
    }
    (setup.tmp / "load.json").write_text(
        json.dumps({"figures": figures, "samples": [asdict(s) for s in samples]}, indent=1)
    )
    print_table(figures)
    line = json.dumps({"test": "load", **figures}, sort_keys=True)
    print(line)
    if target := os.environ.get("DRIFTLINE_FAULTS_FIGURES"):
        with Path(target).open("a") as out:
            out.write(line + "\n")

    assert worker.poll() is None
    assert crashes(setup.tmp / "w1.log") == []
    assert produced >= MIN_RATE_SHARE * RATE * DURATION_S, "the producer fell behind its rate"
    assert counted == produced  # every event counted once
    assert closed >= len(MODELS) * (DURATION_S * SPEED // 60 - 2)  # windows did close
    # memory: flat after warm-up
    assert figures["rss_slope_after_warmup_mb_per_min"] < MAX_SLOPE_MB_PER_MIN
    assert figures["rss_max_after_warmup_mb"] <= (1 + MAX_GROWTH) * figures["rss_max_warmup_mb"]
    # lag: bounded while the load runs (and gone within DRAIN_S after it, waited above)
    assert figures["lag_max_events"] <= MAX_LAG_S * RATE
    assert figures["lag_end_events"] <= MAX_END_LAG_S * RATE


def print_table(f: dict[str, Any]) -> None:
    rows = [
        ("rate (events/s), target / produced", f"{f['rate_target']:,} / {f['rate_produced']:,}"),
        ("duration (s), events", f"{f['duration_s']} s, {f['events']:,}"),
        ("events counted by the worker", f"{f['events_counted']:,.0f}"),
        ("windows closed", f"{f['windows_closed']:,.0f}"),
        (f"RSS idle / after {f['warmup_s']:.0f} s warm-up / end (MB)",
         f"{f['rss_idle_mb']} / {f['rss_warm_mb']} / {f['rss_end_mb']}"),
        ("RSS max, warm-up / after (MB)",
         f"{f['rss_max_warmup_mb']} / {f['rss_max_after_warmup_mb']}"),
        ("RSS slope after warm-up (MB/min)", f"{f['rss_slope_after_warmup_mb_per_min']}"),
        (f"lag max from {LAG_FROM_S:.0f} s / mean of the last 10 s (events)",
         f"{f['lag_max_events']:,} / {f['lag_end_events']:,}"),
        ("lag slope after warm-up (events/min)",
         f"{f['lag_slope_after_warmup_events_per_min']:,}"),
        ("drained after the producer stopped (s)", f"{f['drain_s']}"),
        ("worker CPU (s per s)", f"{f['worker_cpu_per_s']}"),
        ("load average 1 min, before / after", f"{f['loadavg_1m_before_after']}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
