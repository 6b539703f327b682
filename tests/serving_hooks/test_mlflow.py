"""The monitored pyfunc wrapper around stand-in models (the real MLflow round trip is in
tests/integration/test_hooks_integrations.py); nothing here imports MLflow."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

import serving_hooks
from serving_hooks.errors import ServingHooksError
from serving_hooks.mlflow import MonitoredModel, load_monitored, resolve_model_uri
from serving_hooks.publisher import AsyncPublisher

from .conftest import as_wire, dropped


class Schema:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def has_input_names(self) -> bool:
        return True

    def input_names(self) -> list[str]:
        return self.names


class Metadata:
    def __init__(self, names: list[str]) -> None:
        self.schema = Schema(names)

    def get_input_schema(self) -> Schema:
        return self.schema


class Model:
    """Like a loaded pyfunc model: ``predict(data, params=None)`` and ``metadata``."""

    def __init__(self, output: Callable[[Any], Any], names: list[str] | None = None) -> None:
        self.output = output
        self.metadata = Metadata(names or [])
        self.calls = 0

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.calls += 1
        return self.output(data)


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": [10.0, np.nan, 30.5],
            "count": np.array([1, 2, 3], dtype=np.int64),
            "flag": [True, False, True],
            "country": ["DE", None, "FR"],
            "segment": pd.Categorical(["a", "b", "a"]),
            "visits": pd.array([1, None, 3], dtype="Int64"),
        }
    )


def test_one_event_per_row_with_the_rows_features_and_prediction(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    model = MonitoredModel(
        Model(lambda df: df["amount"].fillna(0).to_numpy() / 100), pub, model="fraud", version="3"
    )
    out = model.predict(frame())
    np.testing.assert_array_equal(out, [0.1, 0.0, 0.305])
    events = as_wire(pub)
    assert len(events) == 3
    first, second, third = events
    assert first.features == {"amount": 10.0, "count": 1.0, "flag": 1.0, "country": "DE",
                              "segment": "a", "visits": 1.0}  # fmt: skip
    assert second.features == {"amount": None, "count": 2.0, "flag": 0.0, "country": None,
                               "segment": "b", "visits": None}  # fmt: skip
    assert [e.prediction for e in events] == [0.1, 0.0, 0.305]
    assert {(e.model, e.model_version, e.status) for e in events} == {("fraud", "3", "ok")}
    assert len({e.latency_ms for e in events}) == 1  # shared by the batch
    assert len({e.event_id for e in events}) == 3
    assert third.features["amount"] == 30.5


def test_array_input_takes_names_from_the_signature_or_numbers_them(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    MonitoredModel(Model(lambda a: a.sum(axis=1), ["a", "b"]), pub, model="m", version="1").predict(
        x
    )
    MonitoredModel(Model(lambda a: a.sum(axis=1), ["a"]), pub, model="m", version="1").predict(x)
    MonitoredModel(
        Model(lambda a: a[:, 0]), pub, model="m", version="1", feature_names=["p", "q"]
    ).predict(x)
    features = [e.features for e in as_wire(pub)]
    assert features == [
        {"a": 1.0, "b": 2.0},
        {"a": 3.0, "b": 4.0},
        {"x0": 1.0, "x1": 2.0},  # the signature does not fit: numbered
        {"x0": 3.0, "x1": 4.0},
        {"p": 1.0, "q": 2.0},
        {"p": 3.0, "q": 4.0},
    ]


def test_dict_of_columns_and_list_outputs(make_publisher: Callable[..., AsyncPublisher]) -> None:
    pub = make_publisher()
    model = MonitoredModel(Model(lambda d: ["yes", "no"]), pub, model="m", version="1")
    assert model.predict({"a": np.array([1.0, 2.0]), "c": ["x", "y"]}) == ["yes", "no"]
    assert [(e.features, e.prediction) for e in as_wire(pub)] == [
        ({"a": 1.0, "c": "x"}, "yes"),
        ({"a": 2.0, "c": "y"}, "no"),
    ]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (lambda df: pd.Series([0, 1]), [0.0, 1.0]),
        (lambda df: pd.DataFrame({"p": [0.25, 0.75]}), [0.25, 0.75]),
        (lambda df: np.array([[0.25], [0.75]]), [0.25, 0.75]),
        (lambda df: np.array([True, False]), [1.0, 0.0]),
        (lambda df: np.array(["fraud", "ok"]), ["fraud", "ok"]),
        (lambda df: np.array([[0.9, 0.1], [0.2, 0.8]]), [None, None]),  # which column?
        (lambda df: {"p": [1, 2]}, [None, None]),
        (lambda df: np.array([1.0]), [None, None]),  # not one per row
    ],
)
def test_output_shapes(
    make_publisher: Callable[..., AsyncPublisher],
    output: Callable[[Any], Any],
    expected: list[Any],
) -> None:
    pub = make_publisher()
    MonitoredModel(Model(output), pub, model="m", version="1").predict(pd.DataFrame({"a": [1, 2]}))
    assert [e.prediction for e in as_wire(pub)] == expected
    assert dropped(pub) == 0  # recorded without predictions rather than dropped


def test_prediction_picks_one_value_per_row(make_publisher: Callable[..., AsyncPublisher]) -> None:
    pub = make_publisher()
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    model = MonitoredModel(
        Model(lambda df: proba), pub, model="m", version="1", prediction=lambda p: p[:, 1]
    )
    assert model.predict(pd.DataFrame({"a": [1, 2]})) is proba  # the model's own output
    assert [e.prediction for e in as_wire(pub)] == [0.1, 0.8]


def test_a_failing_model_records_errors_and_raises_its_own_exception(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    failure = ValueError("Input X contains NaN")

    def fail(df: Any) -> Any:
        raise failure

    model = MonitoredModel(Model(fail), pub, model="m", version="1")
    with pytest.raises(ValueError, match="contains NaN") as info:
        model.predict(pd.DataFrame({"a": [1.0, np.nan]}))
    assert info.value is failure
    events = as_wire(pub)
    assert [(e.status, e.prediction) for e in events] == [("error", None), ("error", None)]
    assert events[0].features == {"a": 1.0}
    assert events[0].latency_ms is not None


def test_ids_from_a_column_or_given_and_event_times(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    data = pd.DataFrame({"tx": ["t1", "t2"], "a": [1.0, 2.0]})
    model = MonitoredModel(Model(lambda df: df["a"]), pub, model="m", version="1", id_column="tx")
    model.predict(data, ts_ms=1_795_341_600_000)
    model.predict(data, event_ids=["x", "y"], ts_ms=[1_795_341_600_001, 1_795_341_600_002])
    events = as_wire(pub)
    assert [(e.event_id, e.ts) for e in events] == [
        ("t1", 1_795_341_600_000),
        ("t2", 1_795_341_600_000),
        ("x", 1_795_341_600_001),
        ("y", 1_795_341_600_002),
    ]
    assert all(e.features == {"a": e.prediction} for e in events)


def test_unreadable_input_never_breaks_predict(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    pub = make_publisher()
    model = MonitoredModel(Model(lambda x: [0.5]), pub, model="m", version="1")
    assert model.predict(object()) == [0.5]  # pandas cannot make rows of it
    assert pub.queued == 0
    assert dropped(pub) == 1


def test_params_go_through_and_the_rest_is_the_inner_models(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    seen: list[Any] = []

    class WithParams(Model):
        def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
            seen.append(params)
            return np.zeros(len(data))

    inner = WithParams(lambda d: None, ["a"])
    model = MonitoredModel(inner, make_publisher(), model="m", version="1")
    model.predict(pd.DataFrame({"a": [1.0]}), params={"threshold": 0.3})
    assert seen == [{"threshold": 0.3}]
    assert model.metadata is inner.metadata
    assert "version='1'" in repr(model)
    with pytest.raises(AttributeError):
        _ = model.no_such_attribute


def test_nan_features_are_sent_as_missing(make_publisher: Callable[..., AsyncPublisher]) -> None:
    pub = make_publisher()
    MonitoredModel(Model(lambda d: np.ones(2)), pub, model="m", version="1").predict(
        np.array([[np.nan], [np.inf]])
    )
    assert [e.features["x0"] for e in as_wire(pub)] == [None, None]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("models:/fraud/3", ("fraud", "3")), ("models:/fraud-scoring/12", ("fraud-scoring", "12"))],
)
def test_resolve_model_uri_with_a_version(uri: str, expected: tuple[str, str]) -> None:
    assert resolve_model_uri(uri) == expected


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/", "models:/a/b/c", "/tmp/model"])
def test_resolve_model_uri_refuses_what_names_no_registered_model(uri: str) -> None:
    with pytest.raises(ServingHooksError, match="names no registered model"):
        resolve_model_uri(uri)


def test_load_monitored_needs_a_name_and_version_for_other_uris(
    make_publisher: Callable[..., AsyncPublisher],
) -> None:
    with pytest.raises(ServingHooksError, match="pass model= and version="):
        load_monitored("runs:/abc/model", make_publisher())


def test_serving_hooks_imports_without_fastapi_mlflow_or_pandas() -> None:
    code = (
        "import sys\n"
        "import serving_hooks.publisher, serving_hooks.fastapi, serving_hooks.mlflow\n"
        "import serving_hooks.example_app\n"
        "heavy = {'fastapi', 'starlette', 'mlflow', 'pandas', 'sklearn', 'uvicorn', 'httpx'}\n"
        "loaded = sorted(heavy & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    root = Path(serving_hooks.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
