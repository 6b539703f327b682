"""How fast a worker joins outcomes to predictions, and what a pending prediction costs.

    python tests/benchmarks/bench_outcomes.py [--pending 1000000] [--outcomes 200000]

Join rate: the worker's own outcome path (Handler.handle_outcomes: decode, offsets,
RocksDB lookup, quality counts, state save, joined markers and their log records) on
batches of 5000 outcome messages, against the floor of the same process decoding the
same messages with msgspec alone, and against a join into a plain Python dict (no disk,
no state). Size: bytes of RocksDB table files per pending prediction after a flush and
compaction, and in the pending log; how fast that log replays into an empty store (a
partition taken over).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from alerts.engine import QualityRuleEngine
from alerts.rules import default_rules
from stream.config import MonitorConfig
from stream.engine import WindowEngine
from stream.metrics import WorkerMetrics
from stream.outcomes import (
    Outcome,
    Pending,
    PendingPredictions,
    QualityBook,
    encode_chunks,
    encode_outcome,
)
from stream.profiles import ModelProfile
from stream.state import MemoryPendingLog, MemoryState
from stream.worker import Handler, Outcomes

T0 = 1_795_400_000_000
WINDOW = 3_600_000


def profile() -> ModelProfile:
    rng = np.random.default_rng(0)
    p = ModelProfile.build("bench", "1", {"x": rng.normal(size=10_000)})
    p.quality = {"task": "binary", "threshold": 0.5, "accuracy": 0.9, "auc": 0.95}
    return p


def handler(store: Path, ttl_ms: int) -> Handler:
    config = MonitorConfig.model_validate(
        {
            "window": {"size": "1h", "lateness": "0s"},
            "models": [{"name": "bench", "reference": "unused", "task": "binary"}],
            "limits": {"max_future": None},
            "base_dir": Path("."),
        }
    )
    ref = profile()
    engine = WindowEngine(config.window.spec(), lambda m, v: ref)
    state = MemoryState()

    async def nothing(*_: Any) -> None:
        return None

    return Handler(
        config=config,
        engine=engine,
        metrics=WorkerMetrics(),
        send_report=nothing,
        send_dlq=nothing,
        state=state,
        outcomes=Outcomes(
            pending=PendingPredictions(store, ttl_ms),
            book=QualityBook(config.window.spec(), ttl_ms),
            rules=QualityRuleEngine(default_rules()),
            send_quality=nothing,
            log=MemoryPendingLog(),
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--outcomes", type=int, default=200_000)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    n = args.pending
    ids = [f"{i:016x}-{rng.integers(1 << 62):x}" for i in range(n)]
    ts = T0 + np.sort(rng.integers(0, 24 * WINDOW, n))
    preds = rng.random(n)
    tmp = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    try:
        h = handler(tmp / "pending", ttl_ms=7 * 24 * WINDOW)
        side = h.outcomes
        assert side is not None
        started = time.perf_counter()
        chunks: list[bytes] = []
        for lo in range(0, n, 5_000):
            rows = side.pending.put_many(
                ("bench", ids[i], Pending("1", int(ts[i]), float(preds[i])))
                for i in range(lo, min(n, lo + 5_000))
            )
            chunks.extend(encode_chunks(rows))  # what the worker logs to Kafka per batch
        put_s = time.perf_counter() - started
        size = side.pending.disk_bytes()
        print(f"pending predictions: {n:,} stored and logged at {n / put_s:,.0f}/s")
        print(f"  {size / n:.1f} bytes per pending prediction on disk (goal <= 100)")
        logged = sum(map(len, chunks))
        print(f"  {logged / n:.1f} bytes per pending prediction in the pending log")
        # a worker given the partition replays the log into an empty store
        fresh = PendingPredictions(tmp / "replayed", ttl_ms=7 * 24 * WINDOW)
        started = time.perf_counter()
        for offset, chunk in enumerate(chunks):
            fresh.apply_chunk(0, offset, chunk)
        replay_s = time.perf_counter() - started
        assert fresh.find("bench", ids[-1], None)[0] == "joined"
        fresh.close()
        print(
            f"  log replayed into an empty store: {n / replay_s:,.0f} predictions/s "
            f"({logged / replay_s / 1e6:.0f} MB/s of log; Kafka reads not included)"
        )

        m = min(args.outcomes, n)
        chosen = rng.choice(n, m, replace=False)
        labels = (rng.random(m) < preds[chosen]).astype(float)
        messages = [
            encode_outcome(Outcome(ids[j], "bench", float(y), None))
            for j, y in zip(chosen.tolist(), labels.tolist(), strict=True)
        ]
        batches = [
            [(0, lo + k, v) for k, v in enumerate(messages[lo : lo + 5_000])]
            for lo in range(0, m, 5_000)
        ]

        decoder = msgspec.json.Decoder()
        started = time.perf_counter()
        for raw in messages:
            decoder.decode(raw)
        floor_s = time.perf_counter() - started

        table = {ids[i]: (float(preds[i]), int(ts[i])) for i in chosen.tolist()}
        started = time.perf_counter()
        correct = 0
        for raw in messages:
            o = decoder.decode(raw)
            p, _ = table.pop(o["event_id"])
            correct += (p >= 0.5) == (o["label"] == 1.0)
        dict_s = time.perf_counter() - started

        started = time.perf_counter()
        for batch in batches:
            asyncio.run(h.handle_outcomes(batch))
        join_s = time.perf_counter() - started
        joined = h.metrics.outcomes.labels("bench", "joined")._value.get()
        assert joined == m, (joined, m)
        rate = m / join_s
        print(
            f"outcomes joined: {m:,} in {join_s:.2f} s = {rate:,.0f}/s per worker (goal >= 50,000)"
        )
        print(
            f"  msgspec decode alone (floor): {m / floor_s:,.0f}/s -> "
            f"join costs {join_s / floor_s:.1f}x the decode"
        )
        print(
            f"  plain dict join, no disk/state: {m / dict_s:,.0f}/s -> {join_s / dict_s:.1f}x of it"
        )
        print(f"  quality windows touched: {sum(len(b) for b in side.book.states.values())}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
