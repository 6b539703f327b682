"""replay --to-kafka against the real broker: every event, in event-time order per model,
as single messages or envelopes, paced when asked."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from stream.events import decode
from stream.replay import publish

from .conftest import Setup, consume_all


def test_published_events_arrive_in_order_and_complete(setup: Setup, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    n = 3_000
    t0 = int(time.time() * 1000) - 3_600_000
    frame = pl.DataFrame(
        {
            "ts": t0 + rng.permutation(n) * 20,  # 60 s of event time, shuffled on disk
            "model": rng.choice(["fraud", "churn"], n).tolist(),
            "model_version": ["1"] * n,
            "amount": rng.normal(size=n),
        }
    )
    frame.write_parquet(tmp_path / "ev.parquet")
    bootstrap = setup.kafka.bootstrap
    singles, envelopes = f"{setup.prefix}.singles", f"{setup.prefix}.envelopes"
    assert asyncio.run(publish([tmp_path / "ev.parquet"], bootstrap, singles)) == n
    started = time.monotonic()
    assert asyncio.run(publish([tmp_path / "ev.parquet"], bootstrap, envelopes, 120.0, 50)) == n
    assert time.monotonic() - started >= 0.45  # 60 s of event time at 120x

    for topic in (singles, envelopes):
        decoded = [e for raw in consume_all(bootstrap, topic) for e in decode(raw).events]
        assert len(decoded) == n
        for model in ("fraud", "churn"):
            times = [e.ts for e in decoded if e.model == model]
            assert times == sorted(times)  # one partition per model keeps event-time order
    raw = consume_all(bootstrap, envelopes)
    assert max(len(json.loads(r)["events"]) for r in raw) == 50
