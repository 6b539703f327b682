"""The serving integrations against the real local broker: the FastAPI decorator and
lifespan, the MLflow pyfunc wrapper around a real scikit-learn model in a real MLflow
SQLite store, and the example serving app run as its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import serving_hooks
from serving_hooks.example_app import FEATURES, traffic_rows
from serving_hooks.fastapi import current_event_id, monitor, publisher_lifespan
from serving_hooks.mlflow import load_monitored
from serving_hooks.publisher import AsyncPublisher, PublisherConfig, SyncPublisher
from stream.events import Event, decode
from stream.profiles import ModelProfile

from .conftest import Setup, consume_all, free_port, wait_for

pytestmark = [
    # raised inside MLflow 3.17 (its SQLite store's SQLAlchemy options; its own type hints,
    # when mlflow.pyfunc is first imported), not by our code
    pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

PACKAGE_ROOT = Path(serving_hooks.__file__).resolve().parents[1]


def events_on(bootstrap: str, topic: str) -> list[Event]:
    """Every event on ``topic``, through the worker's decoder: nothing may be invalid."""
    events: list[Event] = []
    for raw in consume_all(bootstrap, topic):
        decoded = decode(raw)
        assert decoded.invalid == [], decoded.invalid
        events.extend(decoded.events)
    return events


class Tx(BaseModel):
    amount: float
    country: str
    transaction_id: str


class Score(BaseModel):
    score: float
    event_id: str | None


def scoring_app(pub: AsyncPublisher) -> FastAPI:
    app = FastAPI(lifespan=publisher_lifespan(pub))
    hook = monitor(
        pub,
        model="fraud",
        model_version="7",
        prediction="score",
        event_id=lambda tx: tx.transaction_id,
    )

    @app.post("/score")
    @hook
    async def score(tx: Tx) -> Score:
        return Score(score=min(tx.amount / 1000, 1.0), event_id=current_event_id())

    @app.post("/boom")
    @hook
    async def boom(tx: Tx) -> Score:
        await asyncio.sleep(0.01)
        raise RuntimeError("model server fell over")

    @app.post("/declined")
    @hook
    def declined(tx: Tx) -> Score:
        raise HTTPException(409, "card blocked")

    return app


def test_fastapi_requests_become_valid_events_ok_and_error(setup: Setup) -> None:
    topic = f"{setup.prefix}.fastapi"
    pub = AsyncPublisher(
        PublisherConfig(bootstrap=setup.kafka.bootstrap, topic=topic, linger_ms=20)
    )
    app = scoring_app(pub)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app") as client,
        ):
            responses = [
                await client.post(
                    "/score",
                    json={"amount": 10.0 * i, "country": "DE", "transaction_id": f"ok-{i}"},
                )
                for i in range(20)
            ]
            body = {"amount": 5.0, "country": "FR"}
            responses.append(await client.post("/boom", json={**body, "transaction_id": "boom"}))
            responses.append(await client.post("/declined", json={**body, "transaction_id": "no"}))
            return responses

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 20 + [500, 409]
    assert responses[-1].json() == {"detail": "card blocked"}  # the handler's own response
    assert responses[3].json() == {"score": 0.03, "event_id": "ok-3"}
    events = {e.event_id: e for e in events_on(setup.kafka.bootstrap, topic)}
    assert set(events) == {f"ok-{i}" for i in range(20)} | {"boom", "no"}
    for i in range(20):
        event = events[f"ok-{i}"]
        assert (event.model, event.model_version, event.status) == ("fraud", "7", "ok")
        assert event.features == {"amount": 10.0 * i, "country": "DE", "transaction_id": f"ok-{i}"}
        assert event.prediction == pytest.approx(10.0 * i / 1000)
        assert event.latency_ms is not None
        assert 0 < event.latency_ms < 1000
    for eid in ("boom", "no"):
        assert (events[eid].status, events[eid].prediction) == ("error", None)
        assert events[eid].features["country"] == "FR"
    assert events["boom"].latency_ms is not None
    assert events["boom"].latency_ms >= 10
    assert pub.metrics.sent._value.get() == 22


def test_uvicorn_shutdown_flushes_what_is_queued(setup: Setup) -> None:
    """A real server: the events are still lingering in the queue when the server is told
    to stop; the lifespan's shutdown sends them."""
    topic = f"{setup.prefix}.shutdown"
    config = PublisherConfig(
        bootstrap=setup.kafka.bootstrap, topic=topic, linger_ms=5_000, batch_size=10_000
    )
    pub = AsyncPublisher(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            scoring_app(pub), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn to start")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(50):
                tx = {"amount": float(i), "country": "NL", "transaction_id": f"q-{i}"}
                assert client.post("/score", json=tx).status_code == 200
        assert pub.queued == 50
        assert pub.metrics.sent._value.get() == 0
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()
    assert pub.queued == 0
    events = events_on(setup.kafka.bootstrap, topic)
    assert sorted(e.event_id for e in events) == sorted(f"q-{i}" for i in range(50))


def test_odd_values_reach_kafka_and_do_not_stall_the_sender(setup: Setup) -> None:
    topic = f"{setup.prefix}.odd"
    pub = SyncPublisher(PublisherConfig(bootstrap=setup.kafka.bootstrap, topic=topic, linger_ms=20))
    pub.record("fraud", "3", {"amount": np.float64(2.5), "flag": np.bool_(True)},
               prediction=np.float32(0.5), event_id="numpy")  # fmt: skip
    pub.record("fraud", "3", {"embedding": np.zeros(3)}, event_id="unencodable")
    pub.record_many("fraud", "3", {"amount": [1.0, 2.0]}, [0.1, 0.2], event_ids=["a", "b"])
    wait_for(lambda: pub.queued == 0, 30, "the queue to drain")
    pub.record("fraud", "3", {"amount": 3.0}, event_id="after")
    pub.close()
    events = {e.event_id: e for e in events_on(setup.kafka.bootstrap, topic)}
    assert set(events) == {"numpy", "a", "b", "after"}
    assert events["numpy"].features == {"amount": 2.5, "flag": 1.0}
    assert events["numpy"].prediction == 0.5
    assert pub.metrics.dropped.labels("bad_input")._value.get() == 1


# --- MLflow -------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path: Path) -> Iterator[str]:
    """A fresh MLflow tracking and registry store (SQLite) for one test."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before or "")
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def transactions(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": np.round(rng.lognormal(3, 1, n), 2),
            "age": np.round(rng.normal(40, 10, n)),
            "country": rng.choice(["DE", "FR", "NL"], n),
        }
    )


def test_mlflow_wrapper_one_event_per_row_with_the_models_predictions(
    setup: Setup, mlflow_store: str, tmp_path: Path
) -> None:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import OneHotEncoder, StandardScaler  # type: ignore[import-untyped]

    train = transactions(2_000, seed=1)
    labels = ((np.log(train["amount"]) + (train["country"] == "NL")) > 3.2).astype(int)
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["amount", "age"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["country"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(train, labels)
    experiment = mlflow.create_experiment(
        "hooks", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            registered_model_name="fraud",
            signature=infer_signature(train, pipeline.predict(train)),
        )
    assert info.registered_model_version == 1
    mlflow.register_model(info.model_uri, "fraud")  # version 2: the same model
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("fraud", "champion", "1")

    topic = f"{setup.prefix}.mlflow"
    pub = SyncPublisher(PublisherConfig(bootstrap=setup.kafka.bootstrap, topic=topic, linger_ms=20))
    champion = load_monitored("models:/fraud@champion", pub)
    latest = load_monitored("models:/fraud/latest", pub, model="fraud-latest")
    assert (champion.model, champion.version) == ("fraud", "1")
    assert (latest.model, latest.version) == ("fraud-latest", "2")

    data = transactions(300, seed=2)
    expected = pipeline.predict(data)
    out = champion.predict(data)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(latest.predict(data.head(1)), expected[:1])
    broken = data.head(2).copy()
    broken.loc[0, "amount"] = np.nan
    with pytest.raises(ValueError, match="NaN"):  # scikit-learn's own exception
        champion.predict(broken)
    pub.close()

    events = events_on(setup.kafka.bootstrap, topic)
    ok = [e for e in events if e.model == "fraud" and e.status == "ok"]
    assert len(ok) == 300
    assert len(events) == 300 + 1 + 2
    # one event per row, in order within the batch: the row's features, the model's output
    assert [e.features for e in ok] == data.to_dict("records")
    assert [e.prediction for e in ok] == expected.astype(float).tolist()
    assert {e.model_version for e in ok} == {"1"}
    assert len({e.latency_ms for e in ok}) == 1
    assert len({e.event_id for e in ok}) == 300
    (one,) = [e for e in events if e.model == "fraud-latest"]
    assert (one.model_version, one.prediction, one.status) == ("2", float(expected[0]), "ok")
    errors = [e for e in events if e.status == "error"]
    assert [(e.model_version, e.prediction) for e in errors] == [("1", None), ("1", None)]
    assert errors[0].features["amount"] is None
    assert errors[1].features["amount"] == data["amount"].iloc[1]


# --- the example serving app ------------------------------------------------------------


def test_example_app_serves_registers_and_publishes_every_prediction(
    setup: Setup, tmp_path: Path
) -> None:
    topic = f"{setup.prefix}.app"
    port = free_port()
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    app_cmd = [sys.executable, "-m", "serving_hooks.example_app"]
    log_path = tmp_path / "app.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *app_cmd,
                "--bootstrap",
                setup.kafka.bootstrap,
                "--topic",
                topic,
                "--state-dir",
                str(state),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:

        def healthy() -> Any:
            if proc.poll() is not None:
                raise AssertionError(f"the app exited: {log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            except httpx.HTTPError:
                return None

        health = wait_for(healthy, 180, "the example app to serve", every=0.5)
        assert health == {"model": "fraud", "model_version": "1"}
        traffic = subprocess.run(
            [
                *app_cmd,
                "--traffic",
                "60",
                "--drift-after",
                "30",
                "--missing-share",
                "0.1",
                "--sim-interval-ms",
                "60000",
                "--seed",
                "4",
                "--port",
                str(port),
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        summary = json.loads(traffic.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    # the lifespan flushed before the process ended
    assert json.loads(output.splitlines()[-1]) == {
        "stopped": True,
        "events_sent": 60.0,
        "queued": 0,
    }

    rows = traffic_rows(60, seed=4, drift_after=30, missing_share=0.1, sim_interval_ms=60_000)
    missing = {r["transaction_id"] for r in rows if r["amount"] is None}
    assert 0 < len(missing) < 20
    assert summary == {"sent": 60, "ok": 60 - len(missing), "errors": len(missing), "drifted": 30}
    events = {e.event_id: e for e in events_on(setup.kafka.bootstrap, topic)}
    assert set(events) == {r["transaction_id"] for r in rows}
    for row in rows:
        event = events[row["transaction_id"]]
        assert (event.model, event.model_version) == ("fraud", "1")
        assert event.features == {k: row[k] for k in FEATURES}
        if row["transaction_id"] in missing:
            assert (event.status, event.prediction) == ("error", None)
        else:
            assert event.status == "ok"
            assert isinstance(event.prediction, float)
            assert 0 < event.prediction < 1
    stamps = [events[r["transaction_id"]].ts for r in rows]
    assert np.diff(stamps).tolist() == [60_000] * 59  # simulated event time
    before = np.median([r["amount"] for r in rows[:30] if r["amount"] is not None])
    after = np.median([r["amount"] for r in rows[30:] if r["amount"] is not None])
    assert after > 1.3 * before  # the drift the demo is about

    profile = ModelProfile.load(state / "fraud-v1.dlprofile")
    assert (profile.model, profile.model_version) == ("fraud", "1")
    assert set(profile.features) == set(FEATURES)
    assert profile.kind("country") == "categorical"
    assert (state / "train.parquet").exists()
