"""The FastAPI / Starlette integration, driven through httpx's ASGI transport; the
publisher is never started, so the recorded events stay in its queue."""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving_hooks.fastapi import current_event_id, monitor, publisher_lifespan
from serving_hooks.publisher import AsyncPublisher, PublisherConfig, SyncPublisher

from .conftest import as_wire, dropped


class Country(enum.StrEnum):
    DE = "DE"
    FR = "FR"


class Address(BaseModel):
    city: str


class Transaction(BaseModel):
    amount: float
    country: Country
    foreign: bool = False
    age: int | None = None
    address: Address | None = None
    transaction_id: str | None = None


class Score(BaseModel):
    score: float
    event_id: str | None


class Client:
    """Requests to an ASGI app, one event loop each (the app's lifespan does not run)."""

    def __init__(self, app: Any, raise_server_exceptions: bool = True) -> None:
        self.transport = httpx.ASGITransport(app, raise_app_exceptions=raise_server_exceptions)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://app") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(send())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


BODY = {"amount": 12.5, "country": "DE", "foreign": True, "address": {"city": "Berlin"}}


def make_app(pub: AsyncPublisher, **options: Any) -> FastAPI:
    app = FastAPI()
    settings: dict[str, Any] = {"model": "fraud", "model_version": "3", "prediction": "score"}
    settings.update(options)

    @app.post("/score")
    @monitor(pub, **settings)
    async def score(tx: Transaction) -> Score:
        return Score(score=tx.amount / 100, event_id=current_event_id())

    @app.post("/boom")
    @monitor(pub, **settings)
    async def boom(tx: Transaction) -> Score:
        await asyncio.sleep(0.02)
        raise ValueError("the model fell over")

    @app.post("/missing")
    @monitor(pub, **settings)
    def missing(tx: Transaction) -> Score:  # a plain def endpoint: FastAPI's thread pool
        raise HTTPException(404, "no such card")

    @app.post("/sync")
    @monitor(pub, **settings)
    def sync_score(tx: Transaction) -> Score:
        return Score(score=0.25, event_id=current_event_id())

    return app


def test_ok_request_is_recorded_with_features_prediction_latency_and_id(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    client = Client(make_app(pub))
    response = client.post("/score", json=BODY)
    assert response.status_code == 200
    (event,) = as_wire(pub)
    assert (event.model, event.model_version, event.status) == ("fraud", "3", "ok")
    # enums by value, booleans as 0/1, nested objects left out
    assert event.features == {"amount": 12.5, "country": "DE", "foreign": 1.0, "age": None,
                              "transaction_id": None}  # fmt: skip
    assert event.prediction == 0.125
    assert event.latency_ms is not None
    assert 0 < event.latency_ms < 1000
    assert response.json()["event_id"] == event.event_id  # current_event_id() in the endpoint


def test_error_is_recorded_and_the_client_gets_the_handlers_response(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    client = Client(make_app(pub), raise_server_exceptions=False)
    assert client.post("/boom", json=BODY).status_code == 500
    response = client.post("/missing", json=BODY)
    assert (response.status_code, response.json()) == (404, {"detail": "no such card"})
    boom, missing = as_wire(pub)
    assert (boom.status, boom.prediction, boom.features["amount"]) == ("error", None, 12.5)
    assert boom.latency_ms is not None
    assert boom.latency_ms >= 20  # the time the handler took before it raised
    assert (missing.status, missing.prediction) == ("error", None)


def test_the_original_exception_goes_on_unchanged(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    client = Client(make_app(pub))  # re-raises what the app raised
    with pytest.raises(ValueError, match="the model fell over"):
        client.post("/boom", json=BODY)
    assert [e.status for e in as_wire(pub)] == ["error"]


def test_plain_def_endpoints_stay_plain_functions(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    app = make_app(pub)
    client = Client(app)
    assert client.post("/sync", json=BODY).json()["score"] == 0.25
    endpoints = {r.path: r.endpoint for r in app.routes if hasattr(r, "endpoint")}  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(endpoints["/sync"])
    assert inspect.iscoroutinefunction(endpoints["/score"])
    (event,) = as_wire(pub)
    assert (event.prediction, event.status) == (0.25, "ok")


def test_the_endpoint_signature_is_kept_for_fastapi(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    schema = make_app(make_publisher()).openapi()
    body = schema["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/Transaction")
    ok = schema["paths"]["/score"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/Score")
    client = Client(make_app(make_publisher()))
    assert client.post("/score", json={"amount": "not a number"}).status_code == 422


def test_extractors_by_name_event_id_and_version_callable(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    versions = iter(["3", "4"])
    app = make_app(
        pub,
        features=lambda tx: {"amount": tx.amount, "big": tx.amount > 10},
        prediction=lambda out: out.score * 2,
        event_id=lambda tx: tx.transaction_id,
        model_version=lambda: next(versions),
    )
    client = Client(app)
    response = client.post("/score", json={**BODY, "transaction_id": "tx-1"})
    assert response.json()["event_id"] == "tx-1"
    client.post("/score", json=BODY)  # no transaction id: a random one
    first, second = as_wire(pub)
    assert (first.event_id, first.model_version, first.prediction) == ("tx-1", "3", 0.25)
    assert first.features == {"amount": 12.5, "big": 1.0}
    assert (len(second.event_id), second.model_version) == (32, "4")


def test_features_by_argument_name_and_query_parameters(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    app = FastAPI()

    @app.post("/named")
    @monitor(pub, model="fraud", model_version="3", features="tx")
    async def named(request: Request, tx: Transaction) -> float:
        return 0.5

    @app.get("/query")
    @monitor(pub, model="fraud", model_version="3")
    def query(amount: float, country: str = "DE") -> dict[str, float]:
        return {"prediction": amount / 10}

    client = Client(app)
    client.post("/named", json=BODY)
    client.get("/query", params={"amount": 5})
    named_event, query_event = as_wire(pub)
    assert named_event.features["amount"] == 12.5
    assert named_event.prediction == 0.5
    assert query_event.features == {"amount": 5.0, "country": "DE"}
    assert query_event.prediction == 0.5


def test_failing_extractors_never_reach_the_client(
    make_publisher: Callable[..., AsyncPublisher], caplog: pytest.LogCaptureFixture
) -> None:
    pub = make_publisher()
    caplog.set_level(logging.DEBUG, "driftline.hooks")

    def broken(tx: Transaction) -> dict[str, float]:
        raise KeyError("oops")

    app = make_app(pub, features=broken)
    client = Client(app, raise_server_exceptions=False)
    assert client.post("/score", json=BODY).status_code == 200
    assert client.post("/score", json=BODY).status_code == 200
    assert client.post("/boom", json=BODY).status_code == 500  # still the handler's error
    assert pub.queued == 0
    assert dropped(pub) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per endpoint
    assert "driftline_hook_events_dropped_total" in warnings[0].getMessage()

    pub = make_publisher()
    client = Client(make_app(pub, prediction=lambda out: out["no such key"]))
    assert client.post("/score", json=BODY).status_code == 200
    assert pub.queued == 0
    assert dropped(pub) == 1


def test_a_failing_event_id_callable_still_records_under_a_random_id(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    client = Client(make_app(pub, event_id=lambda tx: tx.no_such_field))
    assert client.post("/score", json=BODY).status_code == 200
    (event,) = as_wire(pub)
    assert len(event.event_id) == 32
    assert dropped(pub) == 0


def test_plain_starlette_endpoint_with_async_features(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()

    @monitor(
        pub,
        model="fraud",
        model_version="3",
        features=lambda request: request.json(),
        prediction=lambda response: json.loads(response.body)["score"],
    )
    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"score": body["amount"] / 100})

    client = Client(Starlette(routes=[Route("/score", score, methods=["POST"])]))
    assert client.post("/score", json={"amount": 50.0, "country": "FR"}).json() == {"score": 0.5}
    (event,) = as_wire(pub)
    assert (event.features, event.prediction) == ({"amount": 50.0, "country": "FR"}, 0.5)


def test_direct_calls_with_positional_arguments(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()

    @monitor(pub, model="fraud", model_version="3", features=lambda body: body)
    def predict(body: dict[str, Any], threshold: float = 0.5) -> float:
        return 1.0 if body["amount"] > threshold else 0.0

    assert predict({"amount": 2.0}, 1.0) == 1.0
    (event,) = as_wire(pub)
    assert (event.features, event.prediction) == ({"amount": 2.0}, 1.0)


def test_recording_adds_microseconds(make_publisher: Callable[..., AsyncPublisher]) -> None:
    """Not a benchmark (see tests/benchmarks/bench_integrations.py): a guard against a
    hook that starts costing milliseconds."""
    pub = make_publisher(max_queue=1_000_000)

    async def bare(tx: Transaction) -> float:
        return tx.amount

    hooked = monitor(pub, model="fraud", model_version="3")(bare)
    tx = Transaction.model_validate(BODY)

    async def run(fn: Callable[..., Any], n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await fn(tx=tx)
        return (time.perf_counter() - started) / n

    base = asyncio.run(run(bare, 5_000))
    added = asyncio.run(run(hooked, 5_000)) - base
    assert added < 100e-6, f"{added * 1e6:.1f} µs per call"


def test_lifespan_starts_and_closes_publishers_around_the_apps_own() -> None:
    unreachable = PublisherConfig(bootstrap="127.0.0.1:9", close_timeout_s=5, retry_backoff_s=0.05)
    apub = AsyncPublisher(unreachable)
    spub = SyncPublisher(unreachable)
    order: list[str] = []

    @asynccontextmanager
    async def own(app: Any) -> AsyncIterator[dict[str, str]]:
        order.append("own startup")
        yield {"db": "connected"}
        order.append("own shutdown")

    app = FastAPI(lifespan=publisher_lifespan(apub, spub, lifespan=own))

    async def serve() -> None:
        async with app.router.lifespan_context(app) as state:
            assert state == {"db": "connected"}
            assert apub._task is not None
            assert not apub._task.done()
            order.append("served")
        assert apub._task.done()

    asyncio.run(serve())
    assert order == ["own startup", "served", "own shutdown"]
    assert apub._core.closing
    assert spub._core.closing
    assert not spub._thread.is_alive()
