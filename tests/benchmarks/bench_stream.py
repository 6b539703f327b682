"""End-to-end worker throughput through a real local Kafka broker, next to a bare aiokafka
consumer that only reads and JSON-decodes the same topic, in the same run.

    python tests/benchmarks/bench_stream.py [--events 300000] [--batch 100]

Events carry 20 numeric and 2 categorical features. Two topics are filled first, one with
a message per event and one with batch envelopes; then, for each, the bare consumer and a
``driftline worker`` subprocess (the real CLI, one process) drain it. The worker's rate is
read from its own Prometheus counter between the first and the last event it counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.events import BATCH_SCHEMA, EVENT_SCHEMA
from stream.localkafka import LocalKafka
from stream.profiles import ModelProfile

NUMERIC = [f"x{i}" for i in range(20)]
CATEGORICAL = ["country", "device"]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_events(n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    t0 = int(time.time() * 1000) - 3_600_000
    t0 -= t0 % 600_000
    values = rng.normal(size=(n, len(NUMERIC))).round(4)
    countries = rng.choice(["DE", "FR", "NL", "IT"], n)
    devices = rng.choice(["ios", "android", "web"], n)
    out = []
    for i in range(n):
        features: dict[str, object] = dict(zip(NUMERIC, values[i].tolist(), strict=True))
        features["country"] = str(countries[i])
        features["device"] = str(devices[i])
        out.append(
            {
                "schema": EVENT_SCHEMA,
                "event_id": f"b{i}",
                "model": f"m{i % 8}",
                "model_version": "1",
                "ts": t0 + (i * 600_000) // n,
                "features": features,
                "prediction": float(values[i, 0]),
                "latency_ms": 5.0,
                "status": "ok",
            }
        )
    return out


async def fill(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
        compression_type="gzip",
    )
    await producer.start()
    try:
        pending = []
        for k, v in messages:
            pending.append(await producer.send(topic, value=v, key=k))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def bare_consumer(bootstrap: str, topic: str, messages: int) -> float:
    """Events/s of a consumer that reads and json-decodes every message, nothing else."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    seen = events = 0
    started = None
    try:
        while seen < messages:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                if started is None:
                    started = time.perf_counter()
                for r in records:
                    doc = json.loads(r.value)
                    events += len(doc["events"]) if doc.get("schema") == BATCH_SCHEMA else 1
                seen += len(records)
    finally:
        await consumer.stop()
    assert started is not None
    return events / (time.perf_counter() - started)


def counter(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("driftline_events_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_worker(config: Path, expected: int, workdir: Path) -> float:
    port = free_port()
    wrap = os.environ.get("DRIFTLINE_BENCH_WRAP", "").split()  # e.g. a profiler
    with (workdir / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *wrap,
                sys.executable,
                "-m",
                "stream.cli",
                "worker",
                "--config",
                str(config),
                "--metrics-port",
                str(port),
                "--loglevel",
                "warning",
                "--datadir",
                str(workdir / "data"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = counter(port)
            now = time.perf_counter()
            if first is None and n > 0:
                first = (now, n)
            if n >= expected:
                assert first is not None
                if now - first[0] < 0.5:
                    raise RuntimeError("too few events to time: pass a larger --events")
                return (n - first[1]) / (now - first[0])
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited; see {workdir / 'worker.log'}")
            time.sleep(0.02)
        raise RuntimeError(f"worker counted {counter(port)} of {expected} events in 10 min")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def bench_decoding(rng: np.random.Generator) -> None:
    """The worker's columnar decoder (drift_core, validating while it parses, into
    columns) and the contract's msgspec decoder (validated, into event objects) next to
    the stdlib and orjson parsers, which only parse, on the same batch envelopes."""
    import orjson

    from stream.events import decode, decode_columns

    envelopes = [
        json.dumps({"schema": BATCH_SCHEMA, "events": make_events(100, rng)}).encode()
        for _ in range(10)
    ]

    def per_event(fn: object, n: int = 200) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        return (time.perf_counter() - started) / n / 1_000 * 1e6

    columns = per_event(lambda: decode_columns(envelopes))
    ours = per_event(lambda: [decode(raw) for raw in envelopes])
    stdlib = per_event(lambda: [json.loads(raw) for raw in envelopes], 50)
    fast = per_event(lambda: [orjson.loads(raw) for raw in envelopes])
    print(
        f"decoding, us per event: driftline columns (drift_core, validated) {columns:.2f}  "
        f"msgspec events (validated) {ours:.2f}  json.loads (not validated) {stdlib:.2f}  "
        f"orjson.loads (not validated) {fast:.2f}  ratio columns/json.loads {columns / stdlib:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=100, help="events per batch envelope")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    broker = LocalKafka(
        home=REPO / ".kafka", name="bench", port=free_port(), controller_port=free_port()
    )
    broker.up()
    try:
        rng = np.random.default_rng(0)
        reference = make_events(50_000, rng)
        profile = ModelProfile.build(
            "m",
            "1",
            {name: [e["features"][name] for e in reference] for name in NUMERIC + CATEGORICAL},  # type: ignore[index]
            prediction=[e["prediction"] for e in reference],
        )
        ref_path = profile.save(work / "bench.dlprofile")
        bench_decoding(rng)
        events = make_events(args.events, rng)
        singles = [(str(e["model"]).encode(), json.dumps(e).encode()) for e in events]
        envelopes = []
        for m in range(8):
            mine = [e for e in events if e["model"] == f"m{m}"]
            for i in range(0, len(mine), args.batch):
                body = json.dumps({"schema": BATCH_SCHEMA, "events": mine[i : i + args.batch]})
                envelopes.append((f"m{m}".encode(), body.encode()))
        print(
            f"events: {args.events:,}, {len(NUMERIC)} numeric + "
            f"{len(CATEGORICAL)} categorical features"
        )
        for name, messages in (
            ("single-event messages", singles),
            (f"batch envelopes of {args.batch}", envelopes),
        ):
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            config = {
                "window": {"size": "10m", "lateness": "1m", "idle_close": "1h"},
                "kafka": {
                    "bootstrap": broker.bootstrap,
                    "group": f"{prefix}-worker",
                    "events_topic": f"{prefix}.events",
                    "reports_topic": f"{prefix}.reports",
                    "dlq_topic": f"{prefix}.dlq",
                    "partitions": 4,
                    "batch_size": 20_000,
                    "batch_within": 0.2,
                },
                "models": [{"name": f"m{i}", "reference": str(ref_path)} for i in range(8)],
            }
            path = work / f"{prefix}.yaml"
            path.write_text(yaml.safe_dump(config))
            from stream.config import load_config
            from stream.worker import ensure_topics

            asyncio.run(ensure_topics(load_config(path)))
            asyncio.run(fill(broker.bootstrap, f"{prefix}.events", messages))
            bare = asyncio.run(bare_consumer(broker.bootstrap, f"{prefix}.events", len(messages)))
            ours = run_worker(path, args.events, work)
            print(
                f"{name:28} worker {ours:10,.0f} events/s   "
                f"bare aiokafka+json {bare:10,.0f} events/s   ratio {ours / bare:5.0%}"
            )
    finally:
        broker.down()
        broker.wipe()


if __name__ == "__main__":
    main()
