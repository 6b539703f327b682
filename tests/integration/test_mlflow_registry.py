"""References stored with model versions in a real MLflow registry: a local SQLite store,
and a real `mlflow server` process on 127.0.0.1 feeding a worker on the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from stream.registry import RegistryReferences, client, log_reference
from stream.replay import build_reference

from .conftest import Setup, consume_all, free_port, produce, wait_for
from .test_worker import WINDOW, base_ts, window_events

pytestmark = [
    # MLflow's own imports and SQLAlchemy emit deprecation and resource warnings
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def reference_data(path: Path, shift: float, seed: int, n: int = 20_000) -> Path:
    rng = np.random.default_rng(seed)
    pl.DataFrame(
        {
            "amount": rng.lognormal(3 + shift, 0.5, n),
            "age": rng.normal(40, 10, n),
            "country": rng.choice(["DE", "FR", "NL"], n, p=[0.5, 0.3, 0.2]),
            "prediction": rng.uniform(size=n),
        }
    ).write_csv(path)
    return path


def register_version(uri: str, name: str) -> tuple[str, str]:
    """A model version produced by a run, as a training pipeline registers it."""
    mlflow = client(uri)
    run_id = mlflow.create_run(experiment_id="0").info.run_id
    mlflow.set_terminated(run_id)
    if not mlflow.search_registered_models(filter_string=f"name = '{name}'"):
        mlflow.create_registered_model(name)
    mv = mlflow.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    return str(mv.version), run_id


def cli(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_reference_logged_with_a_version_resolves_and_errors_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the store's artifacts go under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1, run1 = register_version(uri, "fraud")
    v2, _ = register_version(uri, "fraud")
    data = reference_data(tmp_path / "ref.csv", 0.0, 1)

    done = cli(
        "reference", "build", str(data), "--mlflow-model", "fraud", "--version", v1,
        cwd=tmp_path, uri=uri,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = build_reference([data], "fraud", v1)
    assert f"logged reference {expected.identity} for models:/fraud/{v1}" in done.stdout

    mlflow = client(uri)
    tags = mlflow.get_model_version("fraud", v1).tags
    assert tags["driftline.reference"] == f"runs:/{run1}/driftline/reference.dlpf"
    assert tags["driftline.reference_id"] == expected.identity

    refs = RegistryReferences(uri, retry_s=3600, cache_dir=tmp_path)
    got = refs.resolve("fraud", v1)
    assert got is not None
    assert got.identity == expected.identity
    assert got.features.keys() == expected.features.keys()
    assert got.origin == {
        "model_uri": f"models:/fraud/{v1}",
        "run_id": run1,
        "reference_uri": f"runs:/{run1}/driftline/reference.dlpf",
    }

    # a version without a reference, and one that does not exist: None with the reason
    assert refs.resolve("fraud", v2) is None
    assert "has no driftline reference" in refs.errors[("fraud", v2)]
    assert f"--mlflow-model fraud --version {v2}" in refs.errors[("fraud", v2)]
    assert refs.resolve("fraud", "77") is None
    assert refs.errors[("fraud", "77")] == "model 'fraud' has no version 77 in the registry"

    # an alias as the fallback: v2 is judged against the champion's reference
    mlflow.set_registered_model_alias("fraud", "champion", v1)
    fallback = refs.resolve("fraud", v2, alias="champion")
    assert fallback is not None
    assert fallback.identity == expected.identity
    assert fallback.model_version == v2
    assert fallback.origin is not None
    assert fallback.origin["model_uri"] == f"models:/fraud/{v2}"
    assert fallback.origin["reference_from"] == "models:/fraud@champion"

    # misses are looked up again after the retry interval: v2 gets its own reference
    retrying = RegistryReferences(uri, retry_s=0.0, cache_dir=tmp_path)
    assert retrying.resolve("fraud", v2) is None
    shifted = build_reference([reference_data(tmp_path / "v2.csv", 0.8, 2)], "fraud", v2)
    log_reference(shifted, model="fraud", version=v2, uri=uri)
    found = retrying.resolve("fraud", v2)
    assert found is not None
    assert found.identity == shifted.identity
    assert ("fraud", v2) not in retrying.errors

    # a corrupt artifact is refused, with the reason
    (artifact,) = (tmp_path / "mlruns").rglob(f"{run1}/artifacts/driftline/reference.dlpf")
    blob = bytearray(artifact.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    artifact.write_bytes(bytes(blob))
    fresh = RegistryReferences(uri, retry_s=3600, cache_dir=tmp_path)
    assert fresh.resolve("fraud", v1) is None
    assert "reference artifact is corrupt" in fresh.errors[("fraud", v1)]


def test_an_unreachable_tracking_server_is_an_error_not_a_hang(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    refs = RegistryReferences(uri, retry_s=3600, cache_dir=tmp_path)
    started = time.monotonic()
    assert refs.resolve("fraud", "1") is None
    assert time.monotonic() - started < 60
    assert refs.errors[("fraud", "1")].startswith(f"tracking server {uri} failed")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (tmp_path / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(healthy, 120, "mlflow server /health")
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_worker_judges_each_version_by_its_own_registered_reference(
    setup: Setup,
    start_worker: Callable[..., Popen[bytes]],
    mlflow_server: str,
    tmp_path: Path,
) -> None:
    uri = mlflow_server
    v1, run1 = register_version(uri, "fraud")
    v2, run2 = register_version(uri, "fraud")
    ref1 = build_reference([reference_data(tmp_path / "v1.csv", 0.0, 1)], "fraud", v1)
    ref2 = build_reference([reference_data(tmp_path / "v2.csv", 0.8, 2)], "fraud", v2)
    log_reference(ref1, model="fraud", version=v1, uri=uri)
    # v2's reference is logged only after the worker has started

    config = yaml.safe_load(setup.config_path.read_text())
    config["models"] = [{"name": "fraud", "mlflow": {}}]
    config["mlflow"] = {"tracking_uri": uri, "retry": "1s"}
    setup.config_path.write_text(yaml.safe_dump(config))

    def at(version: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**e, "model_version": version, "event_id": f"{version}-{e['event_id']}"}
                for e in events]  # fmt: skip

    rng = np.random.default_rng(5)
    t0 = base_ts()
    # v1: steady, then two drifted windows (retrain); then v2, whose traffic matches its
    # own (shifted) reference; one event of an unregistered version on the way
    v1_events = at(v1, window_events(t0, 1_000, rng))
    v1_events += at(v1, window_events(t0 + WINDOW, 1_000, rng, shift=0.8))
    v1_events += at(v1, window_events(t0 + 2 * WINDOW, 1_000, rng, shift=0.8))
    ghost = at("99", window_events(t0 + 2 * WINDOW, 1, rng))
    v2_events = at(v2, window_events(t0 + 3 * WINDOW, 1_000, rng, shift=0.8))
    closer = at(v2, window_events(t0 + 5 * WINDOW, 1, rng, shift=0.8))

    worker = start_worker()
    bootstrap = setup.kafka.bootstrap

    def send(events: list[dict[str, Any]]) -> None:
        produce(bootstrap, setup.events, [(b"fraud", json.dumps(e).encode()) for e in events])

    send(v1_events + ghost)

    def reports(n: int) -> Callable[[], list[dict[str, Any]] | None]:
        def ready() -> list[dict[str, Any]] | None:
            got = [json.loads(v) for v in consume_all(bootstrap, setup.reports)]
            return sorted(got, key=lambda r: r["window_start_ms"]) if len(got) >= n else None

        return ready

    # the v1 windows close once v2's traffic moves the watermark; v2's reference is
    # registered while the worker runs, and found when v2's first events arrive
    log_reference(ref2, model="fraud", version=v2, uri=uri)
    send(v2_events + closer)
    got = wait_for(reports(4), 120, "4 window reports")
    assert [(r["model_version"], r["rows"]) for r in got] == [(v1, 1_000)] * 3 + [(v2, 1_000)]
    for r in got[:3]:
        assert r["reference"] == ref1.identity
        assert r["model_uri"] == f"models:/fraud/{v1}"
        assert r["run_id"] == run1
    assert got[0]["features"]["amount"]["psi"] < 0.1
    assert got[1]["features"]["amount"]["psi"] > 0.2
    assert got[3]["reference"] == ref2.identity
    assert got[3]["model_uri"] == f"models:/fraud/{v2}"
    assert got[3]["run_id"] == run2
    assert got[3]["features"]["amount"]["psi"] < 0.1  # judged by its own reference

    def retrain() -> list[dict[str, Any]] | None:
        found = [json.loads(v) for v in consume_all(bootstrap, setup.retrain)]
        return found if len(found) >= 2 else None

    for event in wait_for(retrain, 60, "retrain events"):
        data = event["data"]
        assert data["model_uri"] == f"models:/fraud/{v1}"
        assert data["run_id"] == run1
        assert data["reference"] == ref1.identity
        assert data["reference_uri"] == f"runs:/{run1}/driftline/reference.dlpf"

    # the unregistered version is dead-lettered and named in the log; the worker goes on
    (dead,) = [json.loads(v) for v in consume_all(bootstrap, setup.dlq)]
    assert dead["reason"] == "unknown_model"
    assert worker.poll() is None
    log = (setup.tmp / "w1.log").read_text()
    assert "no reference for fraud version 99: model 'fraud' has no version 99" in log


def test_replay_takes_references_from_the_registry_and_logs_the_backtest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    v1, run1 = register_version(uri, "fraud")
    ref1 = build_reference([reference_data(tmp_path / "v1.csv", 0.0, 1)], "fraud", v1)
    log_reference(ref1, model="fraud", version=v1, uri=uri)

    rng = np.random.default_rng(9)
    t0 = base_ts()
    shifts = [0.0, 0.8, 0.8, 0.0]
    events = [e for i, s in enumerate(shifts) for e in window_events(t0 + i * WINDOW, 800, rng, s)]
    rows = [{"ts": e["ts"], "model": "fraud", "model_version": v1, "event_id": e["event_id"],
             **e["features"], "prediction": e["prediction"], "latency_ms": e["latency_ms"],
             "status": e["status"]} for e in events]  # fmt: skip
    pl.DataFrame(rows).write_parquet(tmp_path / "events.parquet")
    config = {"window": {"size": "10m", "lateness": "0s"},
              "models": [{"name": "fraud", "mlflow": {}}]}  # fmt: skip
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))

    for how in (["--reference", "models:/fraud"], ["--config", "monitor.yaml"]):
        done = cli(
            "replay", "events.parquet", *how, "--window", "10m", "--json", "out.json",
            "--report", "out.html", "--mlflow-experiment", "backtests", cwd=tmp_path, uri=uri,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        document = json.loads((tmp_path / "out.json").read_text())
        assert [w["rows"] for w in document["windows"]] == [800] * 4
        assert {w["model_uri"] for w in document["windows"]} == {f"models:/fraud/{v1}"}
        assert {w["run_id"] for w in document["windows"]} == {run1}
        assert {e["data"]["model_uri"] for e in document["retrain_events"]} == {
            f"models:/fraud/{v1}"
        }
        assert len(document["retrain_events"]) == 2

    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name("backtests")
    runs = mlflow.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["window_ms"] == str(WINDOW)
        assert run.data.metrics["windows"] == 4
        assert run.data.metrics["retrain_events"] == 2
        assert run.data.metrics["alerts_fired"] == len(
            [a for a in document["alerts"] if a["state"] == "firing"]
        )
        names = sorted(a.path for a in mlflow.list_artifacts(run.info.run_id, "backtest"))
        assert names == ["backtest/out.html", "backtest/out.json"]
