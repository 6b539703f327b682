"""Reference profiles kept in the MLflow model registry, next to the model versions.

A profile is logged as the artifact ``driftline/reference.dlpf`` of the run that produced
the model version, and the version is tagged:

- ``driftline.reference``: the artifact's URI (``runs:/RUN_ID/driftline/reference.dlpf``)
- ``driftline.reference_id``: the profile's identity (checked again after download)

The tracking URI comes from ``MLFLOW_TRACKING_URI``; without it, an embedded local SQLite
store (``sqlite:///mlflow.db`` in the working directory) is used, so nothing else has to run.
MLflow is imported only here, and only when a registry is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stream.errors import StreamError
from stream.profiles import ModelProfile, ProfileError

log = logging.getLogger("driftline.registry")

ARTIFACT_DIR = "driftline"
ARTIFACT_NAME = "reference.dlpf"
TAG_REFERENCE = "driftline.reference"
TAG_REFERENCE_ID = "driftline.reference_id"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class RegistryError(StreamError):
    """A reference could not be stored in or read from the MLflow registry."""


def tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI: explicit, else ``MLFLOW_TRACKING_URI``, else the embedded store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _quiet_http() -> None:
    # a worker must not stall for minutes on an unreachable tracking server: MLflow's
    # defaults retry 7 times with exponential backoff and wait 120 s per request
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def client(uri: str | None = None) -> Any:
    """An MlflowClient on the tracking (and registry) URI."""
    _quiet_http()
    try:
        from mlflow import MlflowClient
    except ImportError as exc:  # pragma: no cover - mlflow is a declared dependency
        raise RegistryError("the MLflow registry needs the mlflow package") from exc
    resolved = tracking_uri(uri)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


@dataclass(frozen=True)
class Logged:
    model: str
    version: str | None
    run_id: str
    artifact_uri: str
    reference_id: str


def log_reference(
    profile: ModelProfile,
    *,
    model: str | None = None,
    version: str | None = None,
    run_id: str | None = None,
    uri: str | None = None,
) -> Logged:
    """Logs ``profile`` as an artifact of the model version's run (or of ``run_id``) and
    tags the version with where it is and what it is."""
    if version is None and run_id is None:
        raise RegistryError("name a model version (--mlflow-model NAME --version V) or --run-id")
    mlflow_client = client(uri)
    name = model or profile.model
    try:
        if version is not None:
            mv = mlflow_client.get_model_version(name, str(version))
            if run_id is None:
                run_id = mv.run_id or None
            if run_id is None:
                raise RegistryError(
                    f"model {name!r} version {version} was registered without a run: "
                    "pass --run-id to say where the reference goes"
                )
        assert run_id is not None
        with tempfile.TemporaryDirectory(prefix="driftline-ref-") as tmp:
            path = profile.save(Path(tmp) / ARTIFACT_NAME)
            mlflow_client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)
        artifact_uri = f"runs:/{run_id}/{ARTIFACT_DIR}/{ARTIFACT_NAME}"
        mlflow_client.set_tag(run_id, TAG_REFERENCE, artifact_uri)
        mlflow_client.set_tag(run_id, TAG_REFERENCE_ID, profile.identity)
        if version is not None:
            mlflow_client.set_model_version_tag(name, str(version), TAG_REFERENCE, artifact_uri)
            mlflow_client.set_model_version_tag(
                name, str(version), TAG_REFERENCE_ID, profile.identity
            )
    except RegistryError:
        raise
    except Exception as exc:
        where = f"model {name!r} version {version}" if version else f"run {run_id}"
        raise RegistryError(
            f"could not log the reference for {where} at {tracking_uri(uri)}: {_why(exc)}"
        ) from None
    return Logged(name, version, run_id, artifact_uri, profile.identity)


@dataclass
class _Cached:
    profile: ModelProfile | None
    error: str | None
    at: float


@dataclass
class RegistryReferences:
    """Resolves (registered model, version) to the profile stored with the version.

    Found profiles are cached for good (a version's reference does not change; a new
    reference means a new version). Misses and errors are retried after ``retry_s``, so a
    version registered after its first events arrive is picked up without a restart.
    ``alias`` (e.g. ``champion``) is the fallback for versions without a reference.
    """

    uri: str | None = None
    retry_s: float = 30.0
    cache_dir: Path | None = None
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    _cache: dict[tuple[str, str, str | None], _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: Any = None

    def _mlflow(self) -> Any:
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def resolve(self, name: str, version: str, alias: str | None = None) -> ModelProfile | None:
        key = (name, version, alias)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and (hit.profile is not None or now - hit.at < self.retry_s):
                return hit.profile
            profile, error = self._fetch(name, version, alias)
            self._cache[key] = _Cached(profile, error, now)
            if error is None:
                self.errors.pop((name, version), None)
            else:
                if self.errors.get((name, version)) != error:
                    log.warning("no reference for %s version %s: %s", name, version, error)
                self.errors[(name, version)] = error
            return profile

    def by_alias(self, name: str, alias: str) -> ModelProfile | None:
        """The profile of the version an alias points at (e.g. ``champion``)."""
        try:
            profile, why = self._for_alias(name, alias)
        except Exception as exc:
            profile, why = None, f"tracking server {tracking_uri(self.uri)} failed: {_why(exc)}"
        if profile is None:
            self.errors[(name, f"@{alias}")] = why
        return profile

    def _fetch(
        self, name: str, version: str, alias: str | None
    ) -> tuple[ModelProfile | None, str | None]:
        try:
            profile, why = self._for_version(name, version)
            if profile is not None:
                return profile, None
            if alias is None:
                return None, why
            fallback, alias_why = self._for_alias(name, alias)
            if fallback is None:
                return None, f"{why}; fallback @{alias}: {alias_why}"
            log.info("model %s version %s uses the reference of @%s", name, version, alias)
            origin = {
                **(fallback.origin or {}),
                "model_uri": model_uri(name, version),
                "reference_from": f"models:/{name}@{alias}",
            }
            return replace(fallback, model_version=version, origin=origin), None
        except Exception as exc:
            return None, f"tracking server {tracking_uri(self.uri)} failed: {_why(exc)}"

    def _for_version(self, name: str, version: str) -> tuple[ModelProfile | None, str]:
        from mlflow.exceptions import MlflowException

        try:
            mv = self._mlflow().get_model_version(name, version)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
                return None, f"model {name!r} has no version {version} in the registry"
            raise
        return self._load(name, version, mv.run_id, dict(mv.tags or {}))

    def _for_alias(self, name: str, alias: str) -> tuple[ModelProfile | None, str]:
        from mlflow.exceptions import MlflowException

        try:
            mv = self._mlflow().get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
                return None, f"model {name!r} has no alias @{alias}"
            raise
        return self._load(name, str(mv.version), mv.run_id, dict(mv.tags or {}))

    def _load(
        self, name: str, version: str, run_id: str | None, tags: dict[str, str]
    ) -> tuple[ModelProfile | None, str]:
        import mlflow.artifacts

        artifact = tags.get(TAG_REFERENCE)
        if artifact is None and run_id:
            run_tags = self._mlflow().get_run(run_id).data.tags
            artifact = run_tags.get(TAG_REFERENCE)
            tags = {**run_tags, **tags}
        if artifact is None:
            return None, (
                f"model {name!r} version {version} has no driftline reference (log one with "
                f"`driftline reference build DATA --mlflow-model {name} --version {version}`)"
            )
        dest = tempfile.mkdtemp(prefix="driftline-ref-", dir=self.cache_dir)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=artifact, dst_path=dest, tracking_uri=tracking_uri(self.uri)
        )
        try:
            profile = ModelProfile.load(local)
        except ProfileError as exc:
            return None, f"model {name!r} version {version}: reference artifact is corrupt: {exc}"
        expected = tags.get(TAG_REFERENCE_ID)
        if expected is not None and expected != profile.identity:
            return None, (
                f"model {name!r} version {version}: reference artifact is corrupt: identity "
                f"{profile.identity} differs from the tagged {expected}"
            )
        origin = {
            "model_uri": model_uri(name, version),
            "run_id": run_id or "",
            "reference_uri": artifact,
        }
        return replace(profile, origin=origin), ""


def log_backtest(
    document: dict[str, Any],
    experiment: str,
    params: dict[str, Any],
    artifacts: list[Path],
    uri: str | None = None,
) -> str:
    """Logs a replay as an MLflow run: its parameters, alert and window counts as metrics,
    and the JSON / HTML reports as artifacts. Returns the run id."""
    mlflow_client = client(uri)
    try:
        found = mlflow_client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id if found else mlflow_client.create_experiment(experiment)
        )
        run_id: str = mlflow_client.create_run(
            experiment_id, tags={"driftline.kind": "backtest"}
        ).info.run_id
        for key, value in params.items():
            mlflow_client.log_param(run_id, key, str(value)[:6000])
        windows = document.get("windows", [])
        alerts = document.get("alerts", [])
        firing = [a for a in alerts if a.get("state") == "firing"]
        metrics = {
            "events": document.get("events", 0),
            "late_events": document.get("late_events", 0),
            "windows": len(windows),
            "alerts_fired": len(firing),
            "retrain_events": len(document.get("retrain_events", [])),
            "drifted_windows": sum(
                1
                for w in windows
                if any((f.get("psi") or 0) > 0.2 for f in w.get("features", {}).values())
            ),
        }
        for rule in sorted({a["rule"] for a in firing}):
            metrics[f"alerts_fired.{rule}"] = sum(1 for a in firing if a["rule"] == rule)
        for key, value in metrics.items():
            mlflow_client.log_metric(run_id, key, float(value))
        for path in artifacts:
            mlflow_client.log_artifact(run_id, str(path), artifact_path="backtest")
        mlflow_client.set_terminated(run_id)
    except Exception as exc:
        raise RegistryError(
            f"could not log the backtest to {tracking_uri(uri)}: {_why(exc)}"
        ) from None
    return run_id
