"""Replay throughput from Parquet, next to a NumPy-only baseline in the same run.

    python tests/benchmarks/bench_replay.py [--events 10000000] [--features 20]

The baseline reads the same file with the same polars reader and bins every feature of
every 1 h window into the reference's edges with NumPy (searchsorted + bincount): the
least a replay has to do. The replay runs alone in a fresh process; its peak memory is
that process's high-water resident set size (VmHWM), not ``ru_maxrss``, which a child
inherits from the process it was forked from (here: this one, after generating the data).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import polars as pl

from alerts.rules import default_rules
from stream.profiles import ModelProfile
from stream.replay import frames, replay
from stream.windows import WindowSpec

HOUR = 3_600_000


def make(path: Path, n: int, features: int, rng: np.random.Generator) -> None:
    t0 = 1_795_341_600_000
    chunk = 1_000_000
    writer_parts = []
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        cols = {
            "ts": t0 + (np.arange(lo, lo + m, dtype=np.int64) * (24 * HOUR)) // n,
            "model": np.full(m, "fraud"),
            "model_version": np.full(m, "3"),
        }
        drift = 0.5 if lo >= n // 2 else 0.0
        for j in range(features):
            cols[f"x{j}"] = rng.normal(drift if j == 0 else 0.0, 1.0, m)
        writer_parts.append(pl.DataFrame(cols))
    pl.concat(writer_parts).write_parquet(path)


def numpy_baseline(path: Path, profile: ModelProfile, names: list[str]) -> float:
    started = time.perf_counter()
    frame = pl.read_parquet(path)
    ts = frame["ts"].to_numpy()
    windows = ts // HOUR
    bounds = np.flatnonzero(np.diff(windows)) + 1
    edges = {name: profile.features[name].edges for name in names}  # type: ignore[union-attr]
    for name in names:
        values = frame[name].to_numpy()
        for part in np.split(values, bounds):
            np.bincount(np.searchsorted(edges[name], part), minlength=len(edges[name]) + 1)
    return time.perf_counter() - started


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux: VmHWM; else ru_maxrss)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def replay_only(path: Path, features: int) -> None:
    """Runs in a fresh process, so its peak RSS is the replay's own."""
    rng = np.random.default_rng(0)
    names = [f"x{j}" for j in range(features)]
    profile = ModelProfile.build("fraud", "3", {n: rng.normal(size=100_000) for n in names})
    started = time.perf_counter()
    result = replay(frames([path]), WindowSpec(HOUR), lambda m, v: profile, default_rules())
    elapsed = time.perf_counter() - started
    peak = peak_rss()
    print(json.dumps({"seconds": elapsed, "windows": len(result.windows),
                      "retrain": len(result.retrain_events), "peak_bytes": peak}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--replay-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay_only:
        replay_only(Path(args.replay_only), args.features)
        return
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="driftline-replay-"))
    path = work / "events.parquet"
    make(path, args.events, args.features, rng)
    names = [f"x{j}" for j in range(args.features)]
    profile = ModelProfile.build("fraud", "3", {n: rng.normal(size=100_000) for n in names})
    size = path.stat().st_size
    child = subprocess.run(
        [sys.executable, __file__, "--replay-only", str(path), "--features", str(args.features)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    ours = figures["seconds"]
    base = numpy_baseline(path, profile, names)
    shutil.rmtree(work, ignore_errors=True)  # the file is 1.5 GB at 10M events
    in_memory = args.events * (args.features + 1) * 8
    print(
        f"replay of {args.events:,} events x {args.features} numeric features from Parquet "
        f"({size / 1e6:.0f} MB on disk, {in_memory / 1e6:.0f} MB as float64):\n"
        f"  driftline replay: {ours:6.2f} s  {args.events / ours:12,.0f} events/s "
        f"({figures['windows']} windows, {figures['retrain']} retrain events), "
        f"peak RSS {figures['peak_bytes'] / 1e6:,.0f} MB "
        f"({figures['peak_bytes'] / in_memory:.0%} of the data as float64)\n"
        f"  NumPy binning:    {base:6.2f} s  {args.events / base:12,.0f} events/s\n"
        f"  ratio: {ours / base:.2f}x the NumPy-only time"
    )


if __name__ == "__main__":
    main()
