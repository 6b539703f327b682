"""An example serving app, end to end: a fraud model trained on synthetic transactions,
logged and registered in MLflow, loaded back from the registry through the monitored
pyfunc wrapper and served with FastAPI; every prediction is published to Kafka.

    python -m serving_hooks.example_app --bootstrap 127.0.0.1:9092 --port 8080
    python -m serving_hooks.example_app --traffic 2000 --drift-after 1000 --port 8080

Serving (the default): trains and registers model ``fraud`` (version 1) in the MLflow
store ``--mlflow-uri`` (SQLite under ``--state-dir`` by default; an existing version is
reused unless ``--retrain``), writes the training set (``train.parquet``) and the
driftline reference profile of that version (``fraud-v1.dlprofile``, also logged to the
MLflow run) to the state directory, loads ``models:/fraud/1`` and serves
``POST /predict`` (one transaction), ``POST /predict/batch`` (a list), ``GET /healthz``
and ``GET /metrics`` (the hook's Prometheus metrics). SIGINT/SIGTERM stop the server;
the lifespan then flushes the events still queued.

Traffic (``--traffic N``): sends N deterministic transactions (``--seed``) to a running
app, ``--batch`` per request; from the ``--drift-after``-th on, amounts are larger and the
country mix shifts; ``--missing-share`` of them lack the amount, which the model cannot
score (errors); ``--sim-interval-ms`` gives them event times that many ms apart, ending
now, so hours of traffic take seconds. Traffic mode needs httpx, not MLflow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

MODEL_NAME = "fraud"
EXPERIMENT = "driftline-example"
COUNTRIES = ("DE", "FR", "NL", "ES", "IT")
COUNTRY_SHARE = (0.45, 0.25, 0.15, 0.10, 0.05)
DRIFTED_SHARE = (0.25, 0.20, 0.10, 0.25, 0.20)
NUMERIC = ("amount", "age", "hour", "tenure_days")
FEATURES = (*NUMERIC, "country")

log = logging.getLogger("driftline.example")


# --- data -------------------------------------------------------------------------------


def make_rows(n: int, seed: int, drift: bool = False) -> dict[str, np.ndarray]:
    """``n`` synthetic card transactions as columns; ``drift`` shifts amounts up (x1.8 in
    the median) and the country mix towards ES and IT."""
    rng = np.random.default_rng(seed)
    return {
        "amount": np.round(rng.lognormal(3.4 + (0.6 if drift else 0.0), 0.9, n), 2),
        "age": np.clip(np.round(rng.normal(42, 13, n)), 18, 90),
        "hour": rng.integers(0, 24, n).astype(np.float64),
        "tenure_days": np.round(rng.exponential(700, n)),
        "country": rng.choice(COUNTRIES, n, p=DRIFTED_SHARE if drift else COUNTRY_SHARE),
    }


def fraud_labels(rows: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """Ground truth: large amounts, night hours, new accounts and some countries are riskier."""
    rng = np.random.default_rng(seed)
    night = (rows["hour"] < 6).astype(np.float64)
    risky = np.isin(rows["country"], ("ES", "IT")).astype(np.float64)
    logit = (
        -3.2
        + 1.1 * (np.log(rows["amount"]) - 3.4)
        + 1.3 * night
        + 0.9 * risky
        - 0.8 * np.log1p(rows["tenure_days"] / 365)
    )
    fraud: np.ndarray = rng.random(len(logit)) < 1 / (1 + np.exp(-logit))
    return fraud.astype(np.int64)


# --- training and registry ----------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    uri: str  # models:/NAME/VERSION
    profile: Path  # the driftline reference profile of this version


def default_state_dir() -> Path:
    return Path(os.environ.get("DRIFTLINE_STATE_DIR", ".driftline")) / "example_app"


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def train_and_register(
    tracking_uri: str,
    state_dir: Path,
    name: str = MODEL_NAME,
    retrain: bool = False,
    n_train: int = 20_000,
    seed: int = 7,
) -> Registered:
    """Registers a trained model (or finds the latest version, unless ``retrain``), with its
    training set and reference profile in ``state_dir``."""
    import mlflow
    import pandas as pd  # type: ignore[import-untyped]
    import polars as pl
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import OneHotEncoder, StandardScaler  # type: ignore[import-untyped]

    from stream.profiles import ModelProfile

    state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    if not retrain:
        existing = [
            v
            for v in client.search_model_versions(f"name = '{name}'")
            if (state_dir / f"{name}-v{v.version}.dlprofile").exists()
        ]
        if existing:
            version = str(max(int(v.version) for v in existing))
            return Registered(
                name,
                version,
                f"models:/{name}/{version}",
                state_dir / f"{name}-v{version}.dlprofile",
            )
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(
            EXPERIMENT, artifact_location=(state_dir / "artifacts").resolve().as_uri()
        )
    )
    rows = make_rows(n_train, seed)
    frame = pd.DataFrame(rows)
    labels = fraud_labels(rows, seed + 1)
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), list(NUMERIC)),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["country"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    )
    pipeline.fit(frame, labels)
    scores = pipeline.predict_proba(frame)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-train") as run:
        mlflow.log_params({"n_train": n_train, "seed": seed, "model": "LogisticRegression"})
        mlflow.log_metric("train_accuracy", float(pipeline.score(frame, labels)))
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            registered_model_name=name,
            signature=infer_signature(frame, scores),
            pyfunc_predict_fn="predict_proba",
        )
        version = str(info.registered_model_version)
        pl.DataFrame({**rows, "label": labels}).write_parquet(state_dir / "train.parquet")
        profile = ModelProfile.build(
            name,
            version,
            {k: rows[k] if k != "country" else rows[k].tolist() for k in FEATURES},
            prediction=scores[:, 1],
        ).save(state_dir / f"{name}-v{version}.dlprofile")
        mlflow.log_artifact(str(profile), artifact_path="driftline", run_id=run.info.run_id)
    return Registered(name, version, f"models:/{name}/{version}", profile)


# --- serving ------------------------------------------------------------------------------


class Transaction(BaseModel):
    amount: float | None = Field(description="missing amounts cannot be scored")
    age: float
    hour: float = Field(ge=0, le=23)
    tenure_days: float = Field(ge=0)
    country: str
    transaction_id: str | None = Field(None, description="the event id, for outcomes")
    ts: int | None = Field(None, description="event time, epoch ms (default: now)")


class Score(BaseModel):
    transaction_id: str
    fraud_probability: float
    model: str
    model_version: str


def positive_class(output: Any) -> Any:
    """The fraud probability out of ``predict_proba``'s two columns."""
    return np.asarray(output)[:, 1]


def build_app(model: Any, publisher: Any) -> Any:
    """The FastAPI app around a :class:`~serving_hooks.mlflow.MonitoredModel` (which
    records the events); the publisher starts and stops with the app."""
    import pandas as pd
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from serving_hooks.fastapi import publisher_lifespan

    app = FastAPI(title="driftline example: fraud scoring", lifespan=publisher_lifespan(publisher))

    def score(txs: list[Transaction]) -> list[Score]:
        ids = [tx.transaction_id or os.urandom(16).hex() for tx in txs]
        now = int(time.time() * 1000)
        frame = pd.DataFrame([tx.model_dump(include=set(FEATURES)) for tx in txs])
        frame["amount"] = frame["amount"].astype("float64")
        try:
            probabilities = positive_class(
                model.predict(frame, event_ids=ids, ts_ms=[tx.ts or now for tx in txs])
            )
        except ValueError as exc:  # the event is recorded as an error already
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HTTPException(422, f"the model cannot score this: {reason}") from exc
        return [
            Score(
                transaction_id=i,
                fraud_probability=float(p),
                model=model.model,
                model_version=model.version,
            )
            for i, p in zip(ids, probabilities, strict=True)
        ]

    @app.post("/predict")
    def predict(tx: Transaction) -> Score:
        return score([tx])[0]

    @app.post("/predict/batch")
    def predict_batch(txs: list[Transaction]) -> list[Score]:
        return score(txs)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"model": model.model, "model_version": model.version}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(publisher.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serving_hooks.mlflow import load_monitored
    from serving_hooks.publisher import AsyncPublisher, PublisherConfig

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    state_dir = Path(args.state_dir)
    tracking_uri = args.mlflow_uri or sqlite_uri(state_dir / "mlflow.db")
    registered = train_and_register(tracking_uri, state_dir, args.model_name, args.retrain)
    print(
        json.dumps(
            {
                "model_uri": registered.uri,
                "reference": str(registered.profile),
                "mlflow_uri": tracking_uri,
            }
        ),
        flush=True,
    )
    if args.train_only:
        return 0
    publisher = AsyncPublisher(PublisherConfig(bootstrap=args.bootstrap, topic=args.topic))
    model = load_monitored(registered.uri, publisher, prediction=positive_class)
    app = build_app(model, publisher)
    print(f"serving {registered.uri} on http://{args.host}:{args.port}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT (the lifespan flushes the events),
    # then raises the signal again: let that end here, with exit status 0
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    sent = publisher.metrics.registry.get_sample_value("driftline_hook_events_sent_total")
    print(
        json.dumps({"stopped": True, "events_sent": sent, "queued": publisher.queued}), flush=True
    )
    return 0


# --- traffic ------------------------------------------------------------------------------


@dataclass
class TrafficSummary:
    sent: int = 0  # transactions
    ok: int = 0
    errors: int = 0
    drifted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "ok": self.ok, "errors": self.errors, "drifted": self.drifted}


def traffic_rows(
    n: int,
    seed: int = 0,
    drift_after: int | None = None,
    missing_share: float = 0.0,
    sim_interval_ms: int | None = None,
    now_ms: int | None = None,
) -> list[dict[str, Any]]:
    """The transactions ``send_traffic`` sends, as request bodies (deterministic in
    ``seed``; ``transaction_id`` is ``tx-SEED-I``)."""
    base = make_rows(n, seed)
    drifted = make_rows(n, seed + 1, drift=True)
    missing = np.random.default_rng(seed + 2).random(n) < missing_share
    end = now_ms if now_ms is not None else int(time.time() * 1000)
    out = []
    for i in range(n):
        source = drifted if drift_after is not None and i >= drift_after else base
        row: dict[str, Any] = {k: source[k][i].item() for k in FEATURES}
        if missing[i]:
            row["amount"] = None
        row["transaction_id"] = f"tx-{seed}-{i}"
        if sim_interval_ms is not None:
            row["ts"] = end - (n - 1 - i) * sim_interval_ms
        out.append(row)
    return out


def send_traffic(
    url: str,
    n: int,
    drift_after: int | None = None,
    seed: int = 0,
    batch: int = 1,
    missing_share: float = 0.0,
    sim_interval_ms: int | None = None,
    timeout_s: float = 30.0,
) -> TrafficSummary:
    """Sends ``traffic_rows(...)`` to the app at ``url``, ``batch`` per request."""
    import httpx

    rows = traffic_rows(n, seed, drift_after, missing_share, sim_interval_ms)
    summary = TrafficSummary()
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for start in range(0, n, batch):
            chunk = rows[start : start + batch]
            if batch == 1:
                response = client.post("/predict", json=chunk[0])
            else:
                response = client.post("/predict/batch", json=chunk)
            summary.sent += len(chunk)
            summary.drifted += sum(
                1
                for i in range(start, start + len(chunk))
                if drift_after is not None and i >= drift_after
            )
            if response.status_code == 200:
                summary.ok += len(chunk)
            else:
                summary.errors += len(chunk)
    return summary


# --- command line -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m serving_hooks.example_app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    ap.add_argument("--topic", default="driftline.events", help="the events topic")
    ap.add_argument(
        "--mlflow-uri", help="MLflow tracking/registry URI (default: SQLite in state dir)"
    )
    ap.add_argument(
        "--state-dir",
        default=str(default_state_dir()),
        help="MLflow's SQLite store, the training set and the profile (default: %(default)s)",
    )
    ap.add_argument("--model-name", default=MODEL_NAME)
    ap.add_argument("--retrain", action="store_true", help="register a new version")
    ap.add_argument("--train-only", action="store_true", help="register, print, exit")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    traffic = ap.add_argument_group("traffic (client mode)")
    traffic.add_argument("--traffic", type=int, metavar="N", help="send N transactions and exit")
    traffic.add_argument("--drift-after", type=int, metavar="K", help="drift from the K-th on")
    traffic.add_argument("--url", help="the app (default: http://HOST:PORT)")
    traffic.add_argument("--batch", type=int, default=1, help="transactions per request")
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--missing-share", type=float, default=0.0)
    traffic.add_argument("--sim-interval-ms", type=int, help="simulated event-time spacing")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.traffic is None:
        return serve(args)
    summary = send_traffic(
        args.url or f"http://{args.host}:{args.port}",
        args.traffic,
        drift_after=args.drift_after,
        seed=args.seed,
        batch=args.batch,
        missing_share=args.missing_share,
        sim_interval_ms=args.sim_interval_ms,
    )
    print(json.dumps(summary.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
