"""What the serving hook costs a request, and how fast one process can publish.

    python tests/benchmarks/bench_hooks.py [--calls 200000] [--events 1000000]

Latency: the same small handler is timed per call without and with ``record()`` in one
process; the difference of the percentiles is the hook's added latency. Throughput: one
process records as fast as it can while the sender publishes to a real local broker; the
rate counts events acknowledged by Kafka.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

import numpy as np

from serving_hooks.publisher import PublisherConfig, SyncPublisher
from stream.localkafka import LocalKafka

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = np.random.default_rng(0).normal(size=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def handler(x: np.ndarray) -> float:
    return float(1.0 / (1.0 + np.exp(-x @ WEIGHTS)))


def timed(calls: int, pub: SyncPublisher | None) -> np.ndarray:
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(calls, 20))
    names = [f"x{i}" for i in range(20)]
    out = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter_ns()
        y = handler(inputs[i])
        if pub is not None:
            pub.record(
                "bench", "1", dict(zip(names, inputs[i].tolist(), strict=True)), prediction=y
            )
        out[i] = time.perf_counter_ns() - started
    return out / 1000.0  # µs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--compression", default="zstd", help="zstd, gzip, lz4 or none")
    args = ap.parse_args()
    broker = LocalKafka(
        home=REPO / ".kafka", name="bench-hooks", port=free_port(), controller_port=free_port()
    )
    broker.up()
    try:
        compression = None if args.compression == "none" else args.compression
        pub = SyncPublisher(
            PublisherConfig(
                bootstrap=broker.bootstrap,
                topic="bench.hooks",
                max_queue=2_000_000,
                compression=compression,
            )
        )
        base = timed(args.calls, None)
        hooked = timed(args.calls, pub)
        p = [50, 99]
        b, h = np.percentile(base, p), np.percentile(hooked, p)
        print(f"handler alone      p50 {b[0]:6.2f} µs  p99 {b[1]:6.2f} µs")
        print(f"handler + record() p50 {h[0]:6.2f} µs  p99 {h[1]:6.2f} µs")
        print(f"added by the hook  p50 {h[0] - b[0]:6.2f} µs  p99 {h[1] - b[1]:6.2f} µs")
        sent_before = pub.metrics.sent._value.get()
        started = time.perf_counter()
        features = {f"x{i}": 0.5 for i in range(20)}
        for i in range(args.events):
            pub.record("bench", "1", features, prediction=0.5, event_id=str(i))
        while pub.queued:
            time.sleep(0.01)
        pub.close()
        elapsed = time.perf_counter() - started
        sent = pub.metrics.sent._value.get() - sent_before
        rate = sent / elapsed
        print(
            f"throughput: {sent:,.0f} events acknowledged in {elapsed:.2f} s = {rate:,.0f} events/s"
        )
    finally:
        broker.down()
        broker.wipe()


if __name__ == "__main__":
    main()
