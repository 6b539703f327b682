"""The alert rules as Prometheus alerting rules over driftline's own metrics.

``driftline rules export-prometheus`` writes them; Prometheus then raises the same alerts
as the rule engine from what the workers export. A rule's ``for`` (consecutive windows)
becomes ``for: (windows - 1) * window size`` (the first breaching window already shows);
``min_samples`` compares with the rows of the
window; overrides become rules of their own, excluded from the base rule with ``unless``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import yaml

from alerts.rules import Rule, RuleSet

_FEATURE = 'driftline_feature_drift{{figure="{figure}"{extra}}}'
_SELECTORS = {
    "prediction_psi": 'driftline_prediction_drift{{figure="psi"{extra}}}',
    "latency_p99_ms": '(driftline_latency_seconds{{quantile="0.99"{extra}}} * 1000)',
    "error_rate": "driftline_error_rate{extra_braced}",
    "accuracy_drop": 'driftline_quality{{figure="accuracy_drop"{extra}}}',
    "auc_drop": 'driftline_quality{{figure="auc_drop"{extra}}}',
    "mae_increase": 'driftline_quality{{figure="mae_increase"{extra}}}',
}
#: rule metrics with no exported series yet (left out of the export, with a note)
NOT_EXPORTED: tuple[str, ...] = ()


def _camel(name: str) -> str:
    return "Driftline" + "".join(
        p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]", name) if p
    )


def _matcher(label: str, patterns: list[str]) -> str:
    if patterns == ["*"]:
        return ""
    regex = "|".join(
        fnmatch.translate(p).removeprefix("(?s:").removesuffix(")\\Z") for p in patterns
    )
    return f',{label}=~"{regex}"'


def _series(rule: Rule, extra: str) -> str:
    if rule.per_feature:
        return _FEATURE.format(figure=rule.metric, extra=extra)
    if rule.metric == "share_of_drifted_features":
        psi = _FEATURE.format(figure="psi", extra=extra)
        return (
            f"(count by (model, model_version) ({psi} > {rule.drift_psi})"
            f" / count by (model, model_version) ({psi}))"
        )
    braced = "{" + extra.lstrip(",") + "}" if extra else ""
    return _SELECTORS[rule.metric].format(extra=extra, extra_braced=braced)


def _alert(
    rule: Rule, name: str, extra: str, threshold: float, for_: int, min_samples: int,
    window_s: int, excluded: list[str],
) -> dict[str, Any]:  # fmt: skip
    expr = f"{_series(rule, extra)} {rule.op} {threshold}"
    for other in excluded:
        expr = f"({expr}) unless {_series(rule, other)}"
    if min_samples > 0 and rule.on_quality:
        labelled = 'driftline_quality{figure="labelled"}'
        expr = f"({expr}) and on (model, model_version) {labelled} >= {min_samples}"
    elif min_samples > 0:
        expr = f"({expr}) and on (model, model_version) driftline_window_rows >= {min_samples}"
    target = "{{ $labels.feature }} of " if rule.per_feature else ""
    return {
        "alert": name,
        "expr": expr,
        "for": f"{max(0, (for_ - 1)) * window_s}s",
        "labels": {"severity": rule.severity, "action": rule.action, "rule": rule.name},
        "annotations": {
            "summary": f"{rule.metric} {rule.op} {threshold}: {target}{{{{ $labels.model }}}}",
            "description": (
                f"{rule.metric} of {target}model {{{{ $labels.model }}}} version "
                f"{{{{ $labels.model_version }}}} is {{{{ $value }}}} ({rule.op} {threshold})"
            ),
        },
    }


def export(rules: RuleSet, window_s: int = 3600) -> tuple[dict[str, Any], list[str]]:
    """The rule groups document, and notes on what could not be exported."""
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for rule in rules.rules:
        if rule.metric in NOT_EXPORTED:
            notes.append(f"rule {rule.name}: {rule.metric} has no exported metric yet, skipped")
            continue
        scope = _matcher("model", rule.models)
        if rule.per_feature:
            scope += _matcher("feature", rule.features)
        specific: list[str] = []
        for i, o in enumerate(rule.overrides):
            extra = scope
            if o.model is not None:
                extra += f',model="{o.model}"'
            if o.feature is not None and rule.per_feature:
                extra += _matcher("feature", [o.feature])
            specific.append(extra)
            if o.enabled:
                out.append(
                    _alert(
                        rule,
                        f"{_camel(rule.name)}Override{i + 1}",
                        extra,
                        o.threshold if o.threshold is not None else rule.threshold,
                        o.for_ or rule.for_,
                        o.min_samples if o.min_samples is not None else rule.min_samples,
                        window_s,
                        specific[i + 1 :],
                    )
                )
        out.append(
            _alert(
                rule,
                _camel(rule.name),
                scope,
                rule.threshold,
                rule.for_,
                rule.min_samples,
                window_s,
                specific,
            )
        )
    return {"groups": [{"name": "driftline", "rules": out}]}, notes


def export_yaml(rules: RuleSet, window_s: int = 3600) -> tuple[str, list[str]]:
    doc, notes = export(rules, window_s)
    return yaml.safe_dump(doc, sort_keys=False, width=1000), notes
