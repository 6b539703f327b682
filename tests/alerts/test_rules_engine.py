"""The rule engine on hand-made report sequences: for, cooldown, resolve, overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alerts.engine import RuleEngine, evaluate_all
from alerts.rules import RulesError, RuleSet, default_rules, load_rules

HOUR = 3_600_000
T0 = 1_795_341_600_000


def report(
    i: int,
    psi: dict[str, float] | None = None,
    n: int = 1_000,
    model: str = "fraud",
    version: str = "3",
    p99: float = 50.0,
    error_rate: float = 0.0,
) -> dict[str, Any]:
    start = T0 + i * HOUR
    psi = psi if psi is not None else {"amount": 0.01, "country": 0.01}
    return {
        "report_id": f"{model}/{version}/{start}/{start + HOUR}",
        "model": model,
        "model_version": version,
        "window_start_ms": start,
        "window_end_ms": start + HOUR,
        "window_start": f"w{i}",
        "window_end": f"w{i + 1}",
        "rows": n,
        "reference": "ref1",
        "features": {k: {"kind": "numeric", "n": n, "psi": v, "ks": v / 2} for k, v in psi.items()},
        "model_metrics": {
            "prediction": {"psi": 0.0},
            "latency_ms": {"count": n, "p50": 10.0, "p95": 30.0, "p99": p99},
            "errors": int(error_rate * n),
            "error_rate": error_rate,
        },
    }


def rules(**rule: Any) -> RuleSet:
    base = {"name": "psi", "metric": "psi", "threshold": 0.2, "action": "retrain"}
    return RuleSet.model_validate({"rules": [{**base, **rule}]})


def states(engine: RuleEngine, reports: list[dict[str, Any]]) -> list[list[tuple[str, str | None]]]:
    return [[(a["state"], a["feature"]) for a in engine.evaluate(r).alerts] for r in reports]


def drift(i: int, amount: float) -> dict[str, Any]:
    return report(i, {"amount": amount, "country": 0.01})


def test_for_needs_consecutive_breaches() -> None:
    engine = RuleEngine(rules(**{"for": 2}))
    seq = [drift(0, 0.5), drift(1, 0.01), drift(2, 0.5), drift(3, 0.5), drift(4, 0.5)]
    assert states(engine, seq) == [[], [], [], [("firing", "amount")], []]


def test_resolve_ends_the_episode_and_a_new_one_can_start() -> None:
    engine = RuleEngine(rules())
    seq = [drift(0, 0.5), drift(1, 0.6), drift(2, 0.01), drift(3, 0.5)]
    assert states(engine, seq) == [
        [("firing", "amount")],
        [],
        [("resolved", "amount")],
        [("firing", "amount")],
    ]


def test_cooldown_delays_the_next_firing() -> None:
    engine = RuleEngine(rules(cooldown="3h"))
    seq = [
        drift(0, 0.5),
        drift(1, 0.01),
        drift(2, 0.5),
        drift(3, 0.5),
        drift(4, 0.5),
        drift(5, 0.5),
    ]
    # resolved at window 1; cooldown until window 1 + 3h = window 4
    assert states(engine, seq) == [
        [("firing", "amount")],
        [("resolved", "amount")],
        [],
        [],
        [("firing", "amount")],
        [],
    ]


def test_min_samples_and_missing_figures_change_nothing() -> None:
    engine = RuleEngine(rules(**{"for": 2, "min_samples": 500}))
    seq = [
        drift(0, 0.5),
        report(1, {"amount": 0.5}, n=10),
        report(2, {"country": 0.01}),
        drift(3, 0.5),
    ]
    assert states(engine, seq) == [[], [], [], [("firing", "amount")]]


def test_overrides_and_globs() -> None:
    ruleset = rules(
        features=["am*"],
        overrides=[
            {"model": "fraud", "feature": "amount", "threshold": 0.7},
            {"model": "churn", "enabled": False},
        ],
    )
    engine = RuleEngine(ruleset)
    assert states(engine, [drift(0, 0.5)]) == [[]]  # threshold raised for fraud/amount
    assert states(engine, [drift(1, 0.8)]) == [[("firing", "amount")]]
    other = report(2, {"amount": 0.5, "country": 0.9}, model="credit")
    assert states(engine, [other]) == [[("firing", "amount")]]  # country is not selected
    assert states(engine, [report(3, {"amount": 0.9}, model="churn")]) == [[]]


def test_one_retrain_event_per_episode_with_a_deterministic_id() -> None:
    seq = [drift(0, 0.01), drift(1, 0.5), drift(2, 0.5), drift(3, 0.6), drift(4, 0.01)]
    first = evaluate_all(rules(**{"for": 2}), seq)
    again = evaluate_all(rules(**{"for": 2}), seq)
    (event,) = first.retrain
    assert event == again.retrain[0]
    assert event["specversion"] == "1.0"
    assert event["type"] == "io.driftline.retrain.requested"
    assert event["subject"] == "fraud"
    assert event["data"]["window"] == {"start": "w2", "end": "w3"}
    assert event["data"]["breaches"] == [
        {"feature": "amount", "metric": "psi", "value": 0.5, "threshold": 0.2}
    ]
    assert [a["state"] for a in first.alerts] == ["firing", "resolved"]
    assert first.alerts[0]["alert_id"] != first.alerts[1]["alert_id"]


def test_features_of_one_window_share_one_retrain_event() -> None:
    out = evaluate_all(rules(), [report(0, {"amount": 0.5, "country": 0.9})])
    (event,) = out.retrain
    assert [b["feature"] for b in event["data"]["breaches"]] == ["amount", "country"]
    assert len(out.alerts) == 2


def test_notify_rules_alert_without_retraining() -> None:
    out = evaluate_all(default_rules(), [report(0, p99=250.0), report(1, error_rate=0.05)])
    assert [(a["rule"], a["state"], a["severity"]) for a in out.alerts] == [
        ("latency_p99", "firing", "warning"),
        ("latency_p99", "resolved", "warning"),
        ("error_rate", "firing", "critical"),
    ]
    assert out.retrain == []


def test_default_rules_retrain_after_two_drifted_windows() -> None:
    out = evaluate_all(default_rules(), [drift(0, 0.5), drift(1, 0.5)])
    assert [e["data"]["rule"] for e in out.retrain] == ["feature_psi", "feature_ks"]
    assert all(e["data"]["window"]["start"] == "w1" for e in out.retrain)


def test_share_of_drifted_features() -> None:
    ruleset = RuleSet.model_validate(
        {"rules": [{"name": "many", "metric": "share_of_drifted_features", "threshold": 0.5}]}
    )
    out = evaluate_all(ruleset, [report(0, {"a": 0.5, "b": 0.5, "c": 0.0})])
    assert out.alerts[0]["value"] == pytest.approx(2 / 3)


def test_versions_have_their_own_episodes() -> None:
    engine = RuleEngine(rules())
    a = engine.evaluate(report(0, {"amount": 0.5}, version="3")).alerts
    b = engine.evaluate(report(0, {"amount": 0.5}, version="4")).alerts
    assert len(a) == len(b) == 1


def test_state_survives_a_restart() -> None:
    engine = RuleEngine(rules(**{"for": 2}))
    engine.evaluate(drift(0, 0.5))
    restarted = RuleEngine(rules(**{"for": 2}))
    restarted.restore(engine.snapshot())
    assert states(restarted, [drift(1, 0.5)]) == [[("firing", "amount")]]
    assert restarted.firing() == [("psi", "fraud", "3", "amount")]


def test_the_documented_example_loads() -> None:
    ruleset = load_rules(Path(__file__).resolve().parents[2] / "docs" / "rules.example.yaml")
    assert {r.name for r in ruleset.rules} >= {"feature_psi", "feature_ks", "error_rate"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: []", "rules: List should have at least 1 item"),
        ("rules: [{name: x, metric: colour, threshold: 1}]", "rules.0.metric"),
        ("rules: [{name: x, metric: psi, threshold: 1, for: 0}]", "rules.0.for"),
        ("rules: [{name: x, metric: psi, threshold: 1, cooldown: soon}]", "not a duration"),
        (
            "rules: [{name: x, metric: psi, threshold: 1}, {name: x, metric: ks, threshold: 1}]",
            "repeated: x",
        ),
        ("rules: [{name: x, metric: psi}]", "rules.0.threshold: Field required"),
        ("- a", "top level must be a mapping"),
    ],
)
def test_bad_rules_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesError, match=message):
        load_rules(path)


def test_prometheus_export_covers_overrides_and_quality_rules() -> None:
    from alerts.prometheus import export

    ruleset = RuleSet.model_validate(
        {
            "rules": [
                {"name": "psi", "metric": "psi", "threshold": 0.2, "for": 3,
                 "overrides": [{"model": "fraud", "feature": "m_*", "threshold": 0.4},
                               {"model": "old", "enabled": False}]},
                {"name": "acc", "metric": "accuracy_drop", "threshold": 0.05},
            ]
        }
    )  # fmt: skip
    doc, notes = export(ruleset, window_s=600)
    rules = doc["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ["DriftlinePsiOverride1", "DriftlinePsi", "DriftlineAcc"]
    override, base, acc = rules
    assert 'model="fraud",feature=~"m_.*"' in override["expr"]
    assert "> 0.4" in override["expr"]
    assert base["expr"].count("unless") == 2
    assert base["for"] == "1200s"
    # quality rules: the drop gauge, with min_samples counted in labelled predictions
    assert acc["expr"] == (
        '(driftline_quality{figure="accuracy_drop"} > 0.05) and on (model, model_version) '
        'driftline_quality{figure="labelled"} >= 100'
    )
    assert notes == []
