"""FastAPI / Starlette integration: one ``driftline.event/v1`` per prediction request.

    publisher = AsyncPublisher(PublisherConfig(bootstrap="kafka:9092"))
    app = FastAPI(lifespan=publisher_lifespan(publisher))

    @app.post("/predict")
    @monitor(publisher, model="fraud", model_version="3", prediction="score")
    async def predict(tx: Transaction) -> Score: ...

``monitor`` times the endpoint itself (request parsing and validation happen before it,
serialisation after), and records its features, prediction, latency and status: ``ok``
when it returns, ``error`` when it raises, in which case the original exception goes on
unchanged to the framework's handlers (the client gets the same response as without the
decorator). Recording costs a few microseconds and never raises into the request: a
feature extractor that fails, or input the contract cannot carry, is counted in
``driftline_hook_events_dropped_total{reason="bad_input"}`` and logged once.

Nothing here imports FastAPI or Starlette: the decorator wraps any endpoint function
(async endpoints stay coroutines, plain ``def`` endpoints stay plain functions, so FastAPI
still runs them in its thread pool), and :func:`publisher_lifespan` is the ``lifespan``
both frameworks take.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import fields, is_dataclass
from time import perf_counter
from typing import Any, TypeVar, cast

from serving_hooks._values import clean, clean_features
from serving_hooks.publisher import AsyncPublisher, SyncPublisher, new_event_id

__all__ = ["current_event_id", "monitor", "publisher_lifespan"]

log = logging.getLogger("driftline.hooks")
Publisher = SyncPublisher | AsyncPublisher
F = TypeVar("F", bound=Callable[..., Any])
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

_event_id: ContextVar[str | None] = ContextVar("driftline_event_id", default=None)


def current_event_id() -> str | None:
    """Inside a monitored endpoint, the id of the event it will be recorded as: return it
    to the client (or log it) to join outcomes (``driftline.outcome/v1``) later."""
    return _event_id.get()


def monitor(
    publisher: Publisher,
    *,
    model: str,
    model_version: str | Callable[[], str],
    features: Callable[..., Any] | str | None = None,
    prediction: Callable[[Any], Any] | str | None = None,
    event_id: Callable[..., str | None] | None = None,
) -> Callable[[F], F]:
    """Records one event per call of the decorated endpoint (put it under ``@app.post``).

    - ``features``: the name of the endpoint argument that holds them (a pydantic model, a
      dataclass or a mapping); or a callable, given the endpoint arguments it names (a
      one-argument callable whose parameter names none of them gets the request body);
      it may return an awaitable in async endpoints (``lambda request: request.json()``
      in Starlette). By default: the first pydantic-model, dataclass or dict argument,
      else every scalar argument (query parameters).
    - ``prediction``: a callable given the endpoint's return value, or the name of a key or
      attribute of it. By default: the return value if it is a number or a string, else
      its ``prediction`` key or attribute.
    - ``event_id``: a callable given the endpoint arguments it names (like ``features``),
      e.g. the client's transaction id; by default a random id. Either way the endpoint
      can read it with :func:`current_event_id`.
    - ``model_version``: a string, or a callable returning the version now serving.
    """

    def decorate(endpoint: F) -> F:
        rec = _Recorder(publisher, model, model_version, endpoint, features, prediction, event_id)
        if inspect.iscoroutinefunction(inspect.unwrap(endpoint)):

            @functools.wraps(endpoint)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                eid = rec.new_id(args, kwargs)
                token = _event_id.set(eid)
                started = perf_counter()
                try:
                    result = await endpoint(*args, **kwargs)
                except Exception:
                    latency_ms = (perf_counter() - started) * 1000.0
                    _event_id.reset(token)
                    pending = rec.record(args, kwargs, None, "error", latency_ms, eid, True)
                    if pending is not None:
                        await pending
                    raise
                latency_ms = (perf_counter() - started) * 1000.0
                _event_id.reset(token)
                pending = rec.record(args, kwargs, result, "ok", latency_ms, eid, True)
                if pending is not None:  # the features come from an awaitable
                    await pending
                return result

            return cast(F, async_wrapper)

        @functools.wraps(endpoint)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            eid = rec.new_id(args, kwargs)
            token = _event_id.set(eid)
            started = perf_counter()
            try:
                result = endpoint(*args, **kwargs)
            except Exception:
                latency_ms = (perf_counter() - started) * 1000.0
                _event_id.reset(token)
                rec.record(args, kwargs, None, "error", latency_ms, eid)
                raise
            latency_ms = (perf_counter() - started) * 1000.0
            _event_id.reset(token)
            rec.record(args, kwargs, result, "ok", latency_ms, eid)
            return result

        return cast(F, sync_wrapper)

    return decorate


def publisher_lifespan(*publishers: Publisher, lifespan: Lifespan | None = None) -> Lifespan:
    """A ``lifespan`` for ``FastAPI(...)`` / ``Starlette(...)``: starts the async publishers
    on startup; on shutdown, after the app's own ``lifespan`` (if given) has finished,
    flushes and closes every publisher (each within its ``close_timeout_s``)."""

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        for pub in publishers:
            if isinstance(pub, AsyncPublisher):
                await pub.start()
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            for pub in publishers:
                try:
                    if isinstance(pub, AsyncPublisher):
                        await pub.close()
                    else:
                        await asyncio.to_thread(pub.close)
                except Exception:  # shutting down: say so, and close the others
                    log.exception("driftline hook: closing a publisher failed")

    return run


def _as_mapping(value: Any) -> Mapping[str, Any]:
    if type(value) is dict or isinstance(value, Mapping):
        return value
    if hasattr(value, "__pydantic_fields__") and hasattr(value, "__dict__"):
        # pydantic v2 keeps the field values in __dict__: read as is, 10x cheaper than
        # model_dump() or dict(model) (only read here, never changed)
        extra = getattr(value, "__pydantic_extra__", None)
        return {**value.__dict__, **extra} if extra else value.__dict__
    if hasattr(value, "model_dump"):
        return dict(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    raise TypeError(f"cannot take features from a {type(value).__name__}")


def _is_body(value: Any) -> bool:
    return (
        type(value) is dict
        or hasattr(value, "model_dump")
        or (is_dataclass(value) and not isinstance(value, type))
    )


_PLAIN = (int, float, str, bool)


class _Recorder:
    """What one decorated endpoint records; every method behind the call never raises."""

    def __init__(
        self,
        publisher: Publisher,
        model: str,
        model_version: str | Callable[[], str],
        endpoint: Callable[..., Any],
        features: Callable[..., Any] | str | None,
        prediction: Callable[[Any], Any] | str | None,
        event_id: Callable[..., str | None] | None,
    ) -> None:
        self.publisher = publisher
        self.model = model
        self.model_version = model_version
        try:
            self.params = list(inspect.signature(endpoint).parameters)
        except (TypeError, ValueError):
            self.params = []
        self.features = self._extractor(features)
        self.prediction = prediction
        self.event_id = self._extractor(event_id) if event_id is not None else None
        self.warned = False

    def _extractor(self, spec: Callable[..., Any] | str | None) -> Callable[[dict[str, Any]], Any]:
        """``spec`` as a function of the endpoint's arguments by name."""
        if spec is None:
            return self._default_features
        if isinstance(spec, str):
            name = spec
            return lambda arguments: _as_mapping(arguments[name])
        func = spec
        try:
            params = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            return lambda arguments: func(self._body(arguments))
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return lambda arguments: func(**arguments)
        wanted = [p.name for p in params if p.name in self.params]
        if wanted:
            return lambda arguments: func(**{k: arguments[k] for k in wanted if k in arguments})
        return lambda arguments: func(self._body(arguments))

    def _body(self, arguments: dict[str, Any]) -> Any:
        for value in arguments.values():
            if _is_body(value):
                return value
        raise TypeError("the endpoint has no pydantic-model, dataclass or dict argument")

    def _default_features(self, arguments: dict[str, Any]) -> Mapping[str, Any]:
        for value in arguments.values():
            if _is_body(value):
                return _as_mapping(value)
        return {
            k: v for k, v in arguments.items() if v is None or isinstance(v, _PLAIN)
        }  # query parameters

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if not args:  # FastAPI and Starlette pass keywords only, or the request alone
            return kwargs
        named = dict(zip(self.params, args, strict=False))
        named.update(kwargs)
        return named

    def new_id(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.event_id is not None:
            try:
                given = self.event_id(self.arguments(args, kwargs))
                if given:
                    return str(given)
            except Exception:  # the event is still recorded, under a random id
                self.failed("its event_id callable", count=False)
        return new_event_id()

    def record(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        status: str,
        latency_ms: float,
        eid: str,
        can_await: bool = False,
    ) -> Awaitable[None] | None:
        """Records the call; if the features extractor returned an awaitable (and the
        endpoint is async), returns what to await to finish."""
        try:
            features = self.features(self.arguments(args, kwargs))
            if type(features) is not dict and inspect.isawaitable(features):
                if can_await:
                    return self._finish(features, result, status, latency_ms, eid)
                if inspect.iscoroutine(features):
                    features.close()
                raise TypeError("a features callable of a plain def endpoint returned an awaitable")
            self.publish(features, result, status, latency_ms, eid)
        except Exception:
            self.failed("reading its features or prediction")
        return None

    async def _finish(
        self, features: Awaitable[Any], result: Any, status: str, latency_ms: float, eid: str
    ) -> None:
        try:
            self.publish(await features, result, status, latency_ms, eid)
        except Exception:
            self.failed("reading its features or prediction")

    def publish(self, features: Any, result: Any, status: str, latency_ms: float, eid: str) -> None:
        version = self.model_version
        self.publisher.record(
            self.model,
            version if isinstance(version, str) else version(),
            clean_features(_as_mapping(features)),
            prediction=None if status == "error" else self.predicted(result),
            latency_ms=latency_ms,
            status=status,
            event_id=eid,
        )

    def predicted(self, result: Any) -> float | int | str | None:
        spec = self.prediction
        if spec is None:
            if isinstance(result, (int, float, str)) or result is None:
                return clean(result)
            value = (
                result.get("prediction")
                if isinstance(result, Mapping)
                else getattr(result, "prediction", None)
            )
            return clean(value)
        if isinstance(spec, str):
            return clean(result[spec] if isinstance(result, Mapping) else getattr(result, spec))
        return clean(spec(result))

    def failed(self, what: str, count: bool = True) -> None:
        if count:
            self.publisher.metrics.dropped.labels("bad_input").inc()
        if not self.warned:
            self.warned = True
            log.warning(
                "driftline hook: %s failed for a %s event (%s; failures are counted in "
                "driftline_hook_events_dropped_total, further ones logged at debug)",
                what,
                self.model,
                "dropped" if count else "recorded anyway",
                exc_info=True,
            )
        else:
            log.debug("driftline hook: %s failed for a %s event", what, self.model, exc_info=True)
