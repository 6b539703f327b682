"""Alert rules: what to watch, when it counts as a breach, and what to do about it.

Rules come from YAML (``docs/rules.example.yaml`` is the annotated version) and are
validated with errors that say where and what. Without a file, :func:`default_rules` gives
the shipped defaults: PSI > 0.2 and KS > 0.15 per feature (warning, retrain after two
consecutive windows), latency p99 > 200 ms (warning), error rate > 1% (critical) and
accuracy drop > 5% (critical, retrain).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.errors import AlertsError
from stream.configfile import describe, parse_duration, read_mapping

FEATURE_METRICS = ("psi", "ks", "ks_pvalue", "chi2_pvalue", "js", "missing_share")
MODEL_METRICS = (
    "prediction_psi",
    "latency_p99_ms",
    "error_rate",
    "accuracy_drop",
    "auc_drop",
    "mae_increase",
    "share_of_drifted_features",
)
#: figures of quality reports (labels joined to predictions): each window is judged on
#: its own as its labels arrive; ``min_samples`` counts labelled predictions
QUALITY_METRICS = ("accuracy_drop", "auc_drop", "mae_increase")
Metric = Literal[
    "psi",
    "ks",
    "ks_pvalue",
    "chi2_pvalue",
    "js",
    "missing_share",
    "prediction_psi",
    "latency_p99_ms",
    "error_rate",
    "accuracy_drop",
    "auc_drop",
    "mae_increase",
    "share_of_drifted_features",
]
Op = Literal[">", ">=", "<", "<="]


class RulesError(AlertsError):
    """A rules file that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Override(_Strict):
    """Changes a rule for one model, one feature (or glob), or both."""

    model: str | None = None
    feature: str | None = None
    threshold: float | None = None
    for_: int | None = Field(default=None, alias="for", ge=1)
    min_samples: int | None = Field(default=None, ge=0)
    enabled: bool = True

    def matches(self, model: str, feature: str | None) -> bool:
        if self.model is not None and self.model != model:
            return False
        if self.feature is not None:
            return feature is not None and fnmatch.fnmatchcase(feature, self.feature)
        return True


class Rule(_Strict):
    """One condition over one figure of a window report."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    metric: Metric
    op: Op = ">"
    threshold: float
    features: list[str] = Field(default_factory=lambda: ["*"], description="names or globs")
    models: list[str] = Field(default_factory=lambda: ["*"], description="names or globs")
    for_: int = Field(default=1, alias="for", ge=1, description="consecutive windows")
    min_samples: int = Field(default=100, ge=0, description="values (or rows) per window")
    cooldown: int = Field(default=0, description="after firing, wait this long to fire again")
    severity: Literal["info", "warning", "critical"] = "warning"
    action: Literal["retrain", "notify"] = "notify"
    drift_psi: float = Field(
        default=0.2, description="share_of_drifted_features: a feature drifted when PSI > this"
    )
    overrides: list[Override] = Field(default_factory=list)

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, v: object) -> object:
        return parse_duration(v)

    @property
    def per_feature(self) -> bool:
        return self.metric in FEATURE_METRICS

    @property
    def on_quality(self) -> bool:
        return self.metric in QUALITY_METRICS

    def applies_to(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def selects(self, feature: str) -> bool:
        return any(fnmatch.fnmatchcase(feature, p) for p in self.features)

    def settings(self, model: str, feature: str | None) -> tuple[bool, float, int, int]:
        """(enabled, threshold, for, min_samples) after the overrides that match, in order."""
        enabled, threshold, for_, min_samples = True, self.threshold, self.for_, self.min_samples
        for o in self.overrides:
            if o.matches(model, feature):
                enabled = o.enabled
                threshold = o.threshold if o.threshold is not None else threshold
                for_ = o.for_ if o.for_ is not None else for_
                min_samples = o.min_samples if o.min_samples is not None else min_samples
        return enabled, threshold, for_, min_samples

    def breached(self, value: float, threshold: float) -> bool:
        return {
            ">": value > threshold,
            ">=": value >= threshold,
            "<": value < threshold,
            "<=": value <= threshold,
        }[self.op]


class RuleSet(_Strict):
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RuleSet:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique, repeated: {', '.join(dupes)}")
        return self


def default_rules() -> RuleSet:
    """The shipped defaults (see the module documentation)."""
    return RuleSet.model_validate(
        {
            "rules": [
                {"name": "feature_psi", "metric": "psi", "threshold": 0.2, "for": 2,
                 "severity": "warning", "action": "retrain"},
                {"name": "feature_ks", "metric": "ks", "threshold": 0.15, "for": 2,
                 "severity": "warning", "action": "retrain"},
                {"name": "latency_p99", "metric": "latency_p99_ms", "threshold": 200,
                 "severity": "warning", "action": "notify"},
                {"name": "error_rate", "metric": "error_rate", "threshold": 0.01,
                 "severity": "critical", "action": "notify"},
                {"name": "accuracy_drop", "metric": "accuracy_drop", "threshold": 0.05,
                 "severity": "critical", "action": "retrain"},
            ]
        }
    )  # fmt: skip


def load_rules(path: str | Path) -> RuleSet:
    """Reads and validates a rules file."""
    path = Path(path)
    raw = read_mapping(path, "rules", RulesError)
    try:
        return RuleSet.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(describe(exc, f"invalid rules in {path}:")) from None
