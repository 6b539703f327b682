"""The monitor configuration: a YAML file, validated with errors that say where and what.

Example (``docs/monitor.example.yaml`` is the annotated version)::

    window: {size: 1h, hop: null, lateness: 5m, idle_close: 1m}
    kafka:
      bootstrap: 127.0.0.1:9092
      group: driftline-worker
    metrics: {host: 127.0.0.1, port: 9464}
    models:
      - name: fraud
        reference: refs/fraud.dlprofile
        versions: {"4": refs/fraud-v4.dlprofile}
        features: {amount: numeric, country: categorical}

Every setting can also come from the environment: ``DRIFTLINE_KAFKA__BOOTSTRAP`` and the
like (a double underscore separates levels); the environment wins over the file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from alerts.rules import RuleSet, default_rules, load_rules
from stream.configfile import describe, parse_duration, read_mapping
from stream.errors import StreamError
from stream.events import Limits
from stream.kafka_security import KafkaSecurity
from stream.profiles import ModelProfile, ProfileError
from stream.windows import WindowSpec


class ConfigError(StreamError):
    """A monitor configuration that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    # errors never echo the input: it may hold a secret someone put in the wrong place
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class WindowConfig(_Strict):
    size: int = Field(default=3_600_000, description="window length")
    hop: int | None = Field(default=None, description="hop for overlapping windows")
    lateness: int = Field(default=300_000, description="allowed lateness (watermark lag)")
    idle_close: int = Field(
        default=60_000, description="close windows of a quiet model after this wall time"
    )

    @field_validator("size", "hop", "lateness", "idle_close", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return None if v is None else parse_duration(v)

    def spec(self) -> WindowSpec:
        return WindowSpec(self.size, self.hop, self.lateness)

    @model_validator(mode="after")
    def _valid(self) -> WindowConfig:
        self.spec()  # raises WindowSpecError with the reason
        return self


class KafkaConfig(_Strict):
    bootstrap: str = "127.0.0.1:9092"
    group: str = "driftline-worker"
    events_topic: str = "driftline.events"
    reports_topic: str = "driftline.reports"
    dlq_topic: str = "driftline.dlq"
    alerts_topic: str = "driftline.alerts"
    retrain_topic: str = "driftline.retrain"
    outcomes_topic: str = "driftline.outcomes"
    quality_topic: str = "driftline.quality"
    state_topic: str = Field(
        default="",
        description="compacted topic of the workers' saved state (default: <group>.state)",
    )
    pending_topic: str = Field(
        default="",
        description="log of the predictions waiting for outcomes (default: <group>.pending)",
    )
    partitions: int = Field(default=4, ge=1)
    batch_size: int = Field(
        default=5_000, ge=1, description="messages fetched at most per poll (handled together)"
    )
    batch_within: float = Field(
        default=0.5, gt=0, description="seconds to wait for every partition's run of a fetch"
    )
    security: KafkaSecurity = Field(
        default_factory=KafkaSecurity, description="SASL and TLS of every Kafka client"
    )

    @property
    def state_topic_name(self) -> str:
        return self.state_topic or f"{self.group}.state"

    @property
    def pending_topic_name(self) -> str:
        return self.pending_topic or f"{self.group}.pending"


class OutcomesConfig(_Strict):
    """Joining late labels (``driftline.outcome/v1``) to the predictions they are about."""

    enabled: bool = True
    ttl: int = Field(
        default=7 * 86_400_000,
        gt=0,
        description="how long (event time) a prediction waits for its label",
    )
    threshold: float = Field(default=0.5, description="score threshold of binary models")
    wait: int = Field(
        default=300_000,
        ge=0,
        description="how long (wall clock) an outcome waits for a prediction not seen yet",
    )
    store: Literal["rocksdb", "memory"] = Field(
        default="rocksdb", description="pending predictions: on disk in the data dir, or RAM"
    )

    @field_validator("ttl", "wait", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return parse_duration(v) if isinstance(v, str) else v


class MetricsConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class LimitsConfig(_Strict):
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    max_events_per_batch: int = Field(default=100_000, ge=1)
    max_features: int = Field(default=1_000, ge=1)
    max_string_bytes: int = Field(default=1_024, ge=16)
    max_future: int | None = 3_600_000

    @field_validator("max_future", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return None if v is None else parse_duration(v)

    def limits(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_events_per_batch=self.max_events_per_batch,
            max_features=self.max_features,
            max_string_bytes=self.max_string_bytes,
            max_future_ms=self.max_future,
        )


class RegistryModelConfig(_Strict):
    """Where a model's references live in the MLflow registry."""

    name: str | None = Field(default=None, description="registered model (default: the model)")
    alias: str | None = Field(
        default=None, description="fallback for versions without a reference, e.g. champion"
    )


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    reference: Path | None = Field(default=None, description="profile for every version")
    versions: dict[str, Path] = Field(default_factory=dict, description="per-version profiles")
    mlflow: RegistryModelConfig | None = Field(
        default=None, description="references stored with the model versions in MLflow"
    )
    features: dict[str, Literal["numeric", "categorical"]] | None = Field(
        default=None, description="features to monitor and their kinds (default: the profile's)"
    )
    task: Literal["binary", "regression", "multiclass"] | None = Field(
        default=None,
        description="how outcomes are scored (default: the reference quality's, else the "
        "label: 0/1 binary, other numbers regression, text multi-class)",
    )

    @model_validator(mode="after")
    def _has_reference(self) -> ModelConfig:
        if self.reference is None and not self.versions and self.mlflow is None:
            raise ValueError(f"model {self.name!r} needs `reference`, `versions` or `mlflow`")
        return self


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(
        default=None, description="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    retry: float = Field(
        default=30_000, gt=0, description="how soon a missing reference is looked up again"
    )

    @field_validator("retry", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return parse_duration(v) if isinstance(v, str) else v


class MonitorConfig(_Strict):
    window: WindowConfig = WindowConfig()
    kafka: KafkaConfig = KafkaConfig()
    metrics: MetricsConfig = MetricsConfig()
    limits: LimitsConfig = LimitsConfig()
    mlflow: MlflowConfig = MlflowConfig()
    outcomes: OutcomesConfig = OutcomesConfig()
    rules: Path | None = Field(default=None, description="alert rules (default: shipped)")
    source: str = Field(default="driftline", description="CloudEvents `source` of retrain events")
    models: list[ModelConfig] = Field(min_length=1)
    base_dir: Path = Field(default=Path("."), exclude=True)
    _names: frozenset[str] | None = PrivateAttr(default=None)

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {', '.join(dupes)}")
        return models

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def monitors(self, name: str) -> bool:
        if self._names is None:  # the models are fixed once validated
            self._names = frozenset(m.name for m in self.models)
        return name in self._names

    def rule_set(self) -> RuleSet:
        """The configured alert rules, or the shipped defaults."""
        if self.rules is None:
            return default_rules()
        path = self.rules if self.rules.is_absolute() else self.base_dir / self.rules
        return load_rules(path)


def _env_overrides(prefix: str = "DRIFTLINE_") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in os.environ.items():
        if not key.startswith(prefix) or "__" not in key:
            continue
        path = key[len(prefix) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged.get(k) or {}, v) if isinstance(v, dict) else v
    return merged


def load_config(path: str | Path, env: bool = True) -> MonitorConfig:
    """Reads and validates a monitor configuration (YAML, with env overrides)."""
    path = Path(path)
    raw = read_mapping(path, "monitor configuration", ConfigError)
    if env:
        raw = _merge(raw, _env_overrides())
    try:
        return MonitorConfig.model_validate({**raw, "base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(describe(exc, f"invalid monitor configuration in {path}:")) from None
    except StreamError as exc:
        raise ConfigError(f"invalid monitor configuration in {path}: {exc}") from None


class ReferenceStore:
    """Resolves (model, version) to its profile from the configuration's local files,
    loading each file once; features are narrowed to the configured ones."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self._files: dict[Path, ModelProfile] = {}
        self._resolved: dict[tuple[str, str], ModelProfile | None] = {}
        self._errors: dict[tuple[str, str], str] = {}
        self._registry: Any = None

    @property
    def errors(self) -> dict[tuple[str, str], str]:
        """(model, version) -> why it has no reference, for the versions seen so far."""
        if self._registry is None:
            return self._errors
        return {**self._errors, **self._registry.errors}

    def registry(self) -> Any:
        if self._registry is None:
            from stream.registry import RegistryReferences

            mlflow = self.config.mlflow
            self._registry = RegistryReferences(mlflow.tracking_uri, retry_s=mlflow.retry / 1000)
        return self._registry

    def path(self, model: str, version: str) -> Path | None:
        mc = self.config.model(model)
        if mc is None:
            return None
        chosen = mc.versions.get(version, mc.reference)
        if chosen is None:
            return None
        return chosen if chosen.is_absolute() else self.config.base_dir / chosen

    def __call__(self, model: str, version: str) -> ModelProfile | None:
        key = (model, version)
        if key in self._resolved:
            return self._resolved[key]
        mc = self.config.model(model)
        path = self.path(model, version)
        if path is None and mc is not None and mc.mlflow is not None:
            # looked up again after the retry interval while missing: a version
            # registered after its first events is picked up without a restart
            found = self.registry().resolve(mc.mlflow.name or model, version, mc.mlflow.alias)
            if found is None:
                return None
            profile = self._narrow(f"models:/{mc.mlflow.name or model}/{version}", found, key)
        else:
            profile = self._from_file(path, key)
        self._resolved[key] = profile
        return profile

    def _from_file(self, path: Path | None, key: tuple[str, str]) -> ModelProfile | None:
        if path is None:
            return None
        if path not in self._files:
            try:
                self._files[path] = ModelProfile.load(path)
            except ProfileError as exc:
                self._errors[key] = str(exc)
                return None
        return self._narrow(str(path), self._files[path], key)

    def _narrow(
        self, where: str, profile: ModelProfile, key: tuple[str, str]
    ) -> ModelProfile | None:
        mc = self.config.model(key[0])
        if mc is None or mc.features is None:
            return profile
        missing = [f for f in mc.features if f not in profile.features]
        if missing:
            self._errors[key] = f"profile {where} lacks configured features: {', '.join(missing)}"
            return None
        wrong = [f for f, k in mc.features.items() if profile.kind(f) != k]
        if wrong:
            self._errors[key] = (
                f"profile {where}: features {', '.join(wrong)} are of another kind than configured"
            )
            return None
        return dataclasses.replace(profile, features={f: profile.features[f] for f in mc.features})
