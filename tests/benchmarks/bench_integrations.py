"""What the serving integrations add to a request and to a model call.

    python tests/benchmarks/bench_integrations.py [--requests 20000] [--reps 200] [--no-broker]

FastAPI: one process calls two ASGI apps directly (no sockets), the same endpoint without
and with ``@monitor``, in alternating blocks; the difference of the percentiles is what
the decorator adds to a request. The endpoint function alone is timed the same way. With
the broker (default), a third run has the publisher started against a real local broker,
so its sender shares the event loop with the requests as it does in a server.

MLflow: a scikit-learn pipeline logged to a temporary MLflow SQLite store and loaded
back as a pyfunc model; ``predict`` of the bare pyfunc model against ``MonitoredModel``
on 1, 100 and 1000 rows (medians). Then the two ways of queueing 1000 rows: a
``record()`` per row against one ``record_many()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving_hooks.publisher import AsyncPublisher, PublisherConfig

REPO = Path(__file__).resolve().parents[2]
NAMES = [f"x{i}" for i in range(20)]
WEIGHTS = np.random.default_rng(0).normal(size=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def line(label: str, samples: list[float], base: list[float] | None = None) -> None:
    p50, p99 = pct(samples)
    text = f"  {label:<34} p50 {p50:8.2f} µs  p99 {p99:8.2f} µs"
    if base is not None:
        b50, b99 = pct(base)
        text += f"   added p50 {p50 - b50:+7.2f} µs  p99 {p99 - b99:+7.2f} µs  ({p50 / b50:.3f}x)"
    print(text)


# --- FastAPI ------------------------------------------------------------------------------


def build_apps(
    pub: AsyncPublisher,
) -> tuple[Any, Any, Callable[..., Any], Callable[..., Any], Any]:
    from fastapi import FastAPI
    from pydantic import create_model

    from serving_hooks.fastapi import monitor

    fields: dict[str, Any] = {n: (float, ...) for n in NAMES}
    Transaction = create_model("Transaction", country=(str, ...), **fields)  # noqa: N806

    async def score(tx: Any) -> dict[str, float]:
        x = np.fromiter((getattr(tx, n) for n in NAMES), float, 20)
        return {"score": float(1.0 / (1.0 + np.exp(-x @ WEIGHTS)))}

    score.__annotations__ = {"tx": Transaction, "return": dict[str, float]}
    hooked = monitor(pub, model="bench", model_version="1", prediction="score")(score)
    base_app, hooked_app = FastAPI(), FastAPI()
    base_app.post("/score")(score)
    hooked_app.post("/score")(hooked)
    return base_app, hooked_app, score, hooked, Transaction


def request_caller(app: Any, body: bytes) -> Callable[[], Awaitable[int]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/score",
        "raw_path": b"/score",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    message = {"type": "http.request", "body": body, "more_body": False}

    async def call() -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return message

        async def send(event: dict[str, Any]) -> None:
            nonlocal status
            if event["type"] == "http.response.start":
                status = event["status"]

        await app(dict(scope), receive, send)
        return status

    return call


async def time_requests(call: Callable[[], Awaitable[int]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter_ns()
        status = await call()
        out.append((time.perf_counter_ns() - started) / 1000)
        assert status == 200, status
        await asyncio.sleep(0)  # a server yields between requests: the sender may run
    return out


async def time_calls(fn: Callable[..., Awaitable[Any]], tx: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter_ns()
        await fn(tx=tx)
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


async def bench_fastapi(requests: int, bootstrap: str | None) -> None:
    rng = np.random.default_rng(1)
    payload = {n: float(v) for n, v in zip(NAMES, rng.normal(size=20), strict=True)}
    body = json.dumps({**payload, "country": "DE"}).encode()
    pub = AsyncPublisher(PublisherConfig(max_queue=10_000_000))
    base_app, hooked_app, score, hooked, transaction = build_apps(pub)
    base_call, hooked_call = request_caller(base_app, body), request_caller(hooked_app, body)
    await time_requests(base_call, 2_000)  # warm up both
    await time_requests(hooked_call, 2_000)
    base: list[float] = []
    with_hook: list[float] = []
    rounds = 10
    for _ in range(rounds):
        base += await time_requests(base_call, requests // rounds)
        with_hook += await time_requests(hooked_call, requests // rounds)
        pub._core.queue.clear()
    tx = transaction.model_validate_json(body)
    fn_base: list[float] = []
    fn_hooked: list[float] = []
    for _ in range(rounds):
        fn_base += await time_calls(score, tx, requests // rounds)
        fn_hooked += await time_calls(hooked, tx, requests // rounds)
        pub._core.queue.clear()
    print(
        f"FastAPI, POST /score with 20 numeric + 1 categorical features, {requests:,} requests each"
    )
    line("request, no hook", base)
    line("request, @monitor (sender idle)", with_hook, base)
    line("endpoint function alone", fn_base)
    line("endpoint function, @monitor", fn_hooked, fn_base)
    if bootstrap is None:
        return
    live = AsyncPublisher(PublisherConfig(bootstrap=bootstrap, topic="bench.integrations"))
    await live.start()
    _, live_app, *_ = build_apps(live)
    live_call = request_caller(live_app, body)
    await time_requests(live_call, 2_000)
    live_samples: list[float] = []
    base2: list[float] = []
    for _ in range(rounds):
        base2 += await time_requests(base_call, requests // rounds)
        live_samples += await time_requests(live_call, requests // rounds)
    started = time.perf_counter()
    await live.close()
    sent = live.metrics.sent._value.get()
    print(
        f"  (sender live: {sent:,.0f} events acknowledged by the broker, "
        f"close flushed the rest in {time.perf_counter() - started:.2f} s)"
    )
    line("request, no hook (again)", base2)
    line("request, @monitor, sender live", live_samples, base2)


# --- MLflow -------------------------------------------------------------------------------


def bench_mlflow(reps: int) -> None:
    import logging

    import pandas as pd  # type: ignore[import-untyped]

    from serving_hooks.example_app import make_rows, positive_class, sqlite_uri, train_and_register
    from serving_hooks.mlflow import MonitoredModel, load_monitored

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    pub = AsyncPublisher(PublisherConfig(max_queue=100_000_000))
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        registered = train_and_register(sqlite_uri(state / "mlflow.db"), state, n_train=5_000)
        model = load_monitored(registered.uri, pub, prediction=positive_class)
        bare = model.inner
        print(
            f"\nMLflow pyfunc ({registered.uri}: scikit-learn pipeline, 4 numeric + 1 categorical)"
        )
        for rows in (1, 100, 1000):
            frame = pd.DataFrame(make_rows(rows, seed=rows))
            for _ in range(20):
                bare.predict(frame)
                model.predict(frame)
            base, wrapped = [], []
            for _ in range(reps):
                started = time.perf_counter_ns()
                bare.predict(frame)
                base.append((time.perf_counter_ns() - started) / 1000)
                started = time.perf_counter_ns()
                model.predict(frame)
                wrapped.append((time.perf_counter_ns() - started) / 1000)
                pub._core.queue.clear()
            b, w = float(np.median(base)), float(np.median(wrapped))
            print(
                f"  {rows:>5} rows: bare predict {b / 1000:7.3f} ms, "
                f"MonitoredModel {w / 1000:7.3f} ms  added {w - b:8.1f} µs "
                f"= {(w - b) / rows:6.2f} µs/row  ({w / b:.3f}x)"
            )
        frame = pd.DataFrame(make_rows(1000, seed=5))
        columns = {k: frame[k].tolist() for k in frame.columns}
        predictions = np.random.default_rng(2).random(1000).tolist()
        names = list(columns)

        def per_row() -> None:
            for row, p in zip(zip(*columns.values(), strict=True), predictions, strict=True):
                pub.record("fraud", "1", dict(zip(names, row, strict=True)), prediction=p,
                           latency_ms=1.0)  # fmt: skip

        def many() -> None:
            pub.record_many("fraud", "1", columns, predictions, latency_ms=1.0)

        extract = MonitoredModel(bare, pub, model="fraud", version="1")
        for label, fn in (
            ("record() per row", per_row),
            ("record_many()", many),
            (
                "MonitoredModel's recording",
                lambda: extract._record(frame, predictions, "ok", 1.0, None, None),
            ),
        ):
            samples = []
            for _ in range(max(reps // 4, 10)):
                started = time.perf_counter_ns()
                fn()
                samples.append((time.perf_counter_ns() - started) / 1000)
                pub._core.queue.clear()
            med = float(np.median(samples))
            print(
                f"  queueing 1000 rows, {label:<27} {med / 1000:6.3f} ms = {med / 1000:5.2f} µs/row"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--no-broker", action="store_true", help="skip the run with a live sender")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    broker = None
    if not args.no_broker:
        from stream.localkafka import LocalKafka

        broker = LocalKafka(
            home=REPO / ".kafka",
            name="bench-integrations",
            port=free_port(),
            controller_port=free_port(),
        )
        broker.up()
    try:
        asyncio.run(bench_fastapi(args.requests, broker.bootstrap if broker else None))
        bench_mlflow(args.reps)
    finally:
        if broker is not None:
            broker.down()
            broker.wipe()


if __name__ == "__main__":
    main()
