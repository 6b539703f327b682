"""Backtest scoring against incidents, threshold sweeps, and the incidents file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from alerts.rules import RuleSet, default_rules
from stream.backtest import (
    Incident,
    IncidentsError,
    covered_days,
    default_grid,
    load_incidents,
    parse_sweep,
    rule_alerts,
    score,
    sweep,
)
from stream.profiles import ModelProfile
from stream.replay import ReplayResult, frames, replay
from stream.windows import WindowSpec

from .conftest import T0
from .test_replay import HOUR, run, table

MINUTE = 60_000
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "replay.schema.json"

# --- scoring on a hand-made replay -------------------------------------------------------

RULES = RuleSet.model_validate(
    {
        "rules": [
            {"name": "feature_psi", "metric": "psi", "threshold": 0.2},
            {"name": "feature_ks", "metric": "ks", "threshold": 0.15},
            {"name": "latency_p99", "metric": "latency_p99_ms", "threshold": 200},
            {"name": "country_js", "metric": "js", "threshold": 0.1, "features": ["country"]},
        ]
    }
)

# A: amount, 13:00-16:00; B: amount, 39:30-41:00; C: the whole model, 30:00-32:00;
# D: amount, 50:00-51:00 (nothing fires)
INCIDENTS = [
    Incident("fraud", "amount", T0 + 3 * HOUR, T0 + 6 * HOUR, "A"),
    Incident("fraud", "amount", T0 + 29 * HOUR + 30 * MINUTE, T0 + 31 * HOUR, "B"),
    Incident("fraud", None, T0 + 20 * HOUR, T0 + 22 * HOUR, "C"),
    Incident("fraud", "amount", T0 + 40 * HOUR, T0 + 41 * HOUR, "D"),
]


def alert(rule: str, feature: str | None, end_h: float, **extra: Any) -> dict[str, Any]:
    end = T0 + int(end_h * HOUR)
    return {
        "state": "firing",
        "rule": rule,
        "model": "fraud",
        "model_version": "3",
        "feature": feature,
        "window_end_ms": end,
        "window_end": f"end+{end_h}h",
        "alert_id": f"{rule}/{feature}/{end_h}",
        **extra,
    }


def hand_made_replay() -> ReplayResult:
    windows = [
        {"model": "fraud", "window_start_ms": T0 + h * HOUR, "window_end_ms": T0 + (h + 1) * HOUR}
        for h in range(48)
    ]  # two days of event time
    alerts = [
        alert("feature_psi", "amount", 5),  # A, 2h after it started
        alert("feature_psi", "amount", 7),  # A again (end + 1h grace): neither new nor false
        alert("feature_psi", "amount", 7, state="resolved"),  # not a firing: ignored
        alert("feature_psi", "country", 4),  # A is on amount: false alarm
        alert("feature_psi", "amount", 30),  # B, 30 min after it started
        alert("feature_psi", "amount", 5, model="other"),  # no incident for model other
        alert("feature_ks", "amount", 3),  # window ends when A starts: holds none of it
        alert("feature_ks", "amount", 8),  # 2h after A ended, past the grace
        alert("latency_p99", None, 21),  # C (any feature, or the model), 1h after it started
    ]
    return ReplayResult(windows=windows, alerts=alerts)


def test_scores_count_what_each_rule_caught_missed_and_raised_falsely() -> None:
    scores = score(hand_made_replay(), RULES, INCIDENTS, grace_ms=HOUR)
    assert scores["days"] == 2.0
    by_rule = {r.pop("rule"): r for r in scores["rules"]}
    assert list(by_rule) == ["feature_psi", "feature_ks", "latency_p99", "country_js"]
    # feature_psi watches amount (A, B, D) and the whole model (C): 4 incidents in scope;
    # catches A (2h) and B (30m); of its 5 firings, country@4h and other@5h match nothing
    assert by_rule["feature_psi"] == {
        "incidents": 4, "caught": 2, "missed": 2, "alerts": 5, "false_alarms": 2,
        "false_alarms_per_day": 1.0, "precision": 3 / 5, "recall": 2 / 4,
        "delay_ms": {"median": (2 * HOUR + 30 * MINUTE) / 2, "max": 2 * HOUR},
    }  # fmt: skip
    assert by_rule["feature_ks"] == {
        "incidents": 4, "caught": 0, "missed": 4, "alerts": 2, "false_alarms": 2,
        "false_alarms_per_day": 1.0, "precision": 0.0, "recall": 0.0,
        "delay_ms": {"median": None, "max": None},
    }  # fmt: skip
    # a model-level rule can only catch C; a rule on country only C too
    assert by_rule["latency_p99"] == {
        "incidents": 1, "caught": 1, "missed": 0, "alerts": 1, "false_alarms": 0,
        "false_alarms_per_day": 0.0, "precision": 1.0, "recall": 1.0,
        "delay_ms": {"median": HOUR, "max": HOUR},
    }  # fmt: skip
    assert by_rule["country_js"] == {
        "incidents": 1, "caught": 0, "missed": 1, "alerts": 0, "false_alarms": 0,
        "false_alarms_per_day": 0.0, "precision": None, "recall": 0.0,
        "delay_ms": {"median": None, "max": None},
    }  # fmt: skip
    # every incident, each at its earliest detection: A 2h, B 30m, C 1h; D missed
    assert scores["overall"] == {
        "incidents": 4, "caught": 3, "missed": 1, "alerts": 8, "false_alarms": 4,
        "false_alarms_per_day": 2.0, "precision": 4 / 8, "recall": 3 / 4,
        "delay_ms": {"median": HOUR, "max": 2 * HOUR},
    }  # fmt: skip
    details = scores["incidents"]
    assert [d["delay_ms"] for d in details] == [2 * HOUR, 30 * MINUTE, HOUR, None]
    assert details[0]["caught_by"] == [
        {"rule": "feature_psi", "delay_ms": 2 * HOUR, "alert_id": "feature_psi/amount/5",
         "window_end": "end+5h"}
    ]  # fmt: skip
    assert details[3]["caught_by"] == []
    assert details[0]["start"] == "2026-11-22T13:00:00Z"


def test_grace_decides_whether_a_late_alert_still_counts() -> None:
    result = hand_made_replay()
    tight = {r["rule"]: r for r in score(result, RULES, INCIDENTS, grace_ms=0)["rules"]}
    loose = {r["rule"]: r for r in score(result, RULES, INCIDENTS, grace_ms=2 * HOUR)["rules"]}
    # psi amount@7h: 1h after A ended
    assert tight["feature_psi"]["false_alarms"] == 3
    # ks amount@8h: 2h after A ended, delay 5h
    assert loose["feature_ks"]["caught"] == 1
    assert loose["feature_ks"]["delay_ms"]["max"] == 5 * HOUR


# --- on a real replay, and from the command line -----------------------------------------


def test_replay_scores_incidents_and_sweeps_from_the_command_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    table(20_000, rng, T0 - 10 * HOUR).write_csv(tmp_path / "train.csv")
    ref = str(tmp_path / "ref.dlprofile")
    run("reference", "build", str(tmp_path / "train.csv"), "--out", ref,
        "--model", "fraud", "--version", "3")  # fmt: skip
    # amount shifts from 13:00 to 16:00; nothing happens 18:00-19:00
    hours = [table(2_000, rng, T0 + h * HOUR, 0.6 if 3 <= h < 6 else 0.0) for h in range(10)]
    pl.concat(hours).write_parquet(tmp_path / "ev.parquet")
    (tmp_path / "incidents.csv").write_text(
        "model,feature,start,end,note\n"
        "fraud,amount,2026-11-22T13:00:00Z,2026-11-22T16:00:00Z,amount shift\n"
        f"fraud,,{T0 + 8 * HOUR},{T0 + 9 * HOUR},\n"
    )
    out = run("replay", str(tmp_path / "ev.parquet"), "--reference", ref,
              "--incidents", str(tmp_path / "incidents.csv"),
              "--sweep", "feature_psi=0.1:0.5:0.2", "--sweep", "feature_ks",
              "--json", str(tmp_path / "out.json"))  # fmt: skip
    doc = json.loads((tmp_path / "out.json").read_text())
    rules = {r["rule"]: r for r in doc["scores"]["rules"]}
    # the default rules need two drifted windows: they fire on 14:00-15:00, ending 15:00
    for name in ("feature_psi", "feature_ks"):
        assert rules[name]["caught"] == 1
        assert rules[name]["missed"] == 1
        assert rules[name]["false_alarms"] == 0
        assert rules[name]["delay_ms"] == {"median": 2 * HOUR, "max": 2 * HOUR}
    assert doc["scores"]["overall"]["caught"] == 1
    assert doc["scores"]["grace_ms"] == HOUR
    assert doc["scores"]["days"] == pytest.approx(10 / 24)
    assert [p["threshold"] for p in doc["sweep"][0]["points"]] == [0.1, 0.3, 0.5]
    assert [p["threshold"] for p in doc["sweep"][1]["points"]][3] == 0.15  # the default grid
    # the drifted windows have KS ~0.47 and PSI > 1: only KS > 0.6 misses the shift
    caught = [(p["threshold"], p["caught"]) for s in doc["sweep"] for p in s["points"]]
    assert [t for t, c in caught if c != 1] == [0.6]
    assert "backtest against 2 incidents" in out
    assert "missed: fraud/* 2026-11-22T18:00:00Z" in out
    assert "sweep of feature_psi (psi > threshold; now 0.2)" in out
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())
    broken = {**doc, "scores": {**doc["scores"], "overall": {**doc["scores"]["overall"]}}}
    del broken["scores"]["overall"]["recall"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = {**doc, "sweep": [{**doc["sweep"][0], "points": [{"threshold": 0.1}]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.fixture(scope="module")
def gradual(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelProfile]:
    """Twelve hours in which amount drifts further every hour, then comes back."""
    rng = np.random.default_rng(12)
    work = tmp_path_factory.mktemp("gradual")
    profile = ModelProfile.build(
        "fraud", "3",
        {"amount": rng.lognormal(3, 0.5, 20_000),
         "country": rng.choice(["DE", "FR", "NL"], 20_000).tolist()},
    )  # fmt: skip
    shifts = [0.0, 0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.7, 0.0, 0.0, 0.4, 0.8]
    frame = pl.concat([table(1_500, rng, T0 + h * HOUR, s) for h, s in enumerate(shifts)])
    frame.write_parquet(work / "ev.parquet")
    return work / "ev.parquet", profile


def _replay(path: Path, profile: ModelProfile, rules: RuleSet) -> ReplayResult:
    return replay(frames([path]), WindowSpec(HOUR), lambda m, v: profile, rules)


def _rules_with(threshold: float) -> RuleSet:
    """The shipped rules as a rules file with feature_psi's threshold changed."""
    raw = default_rules().model_dump(by_alias=True)
    for rule in raw["rules"]:
        if rule["name"] == "feature_psi":
            rule["threshold"] = threshold
    return RuleSet.model_validate(raw)


def test_a_sweep_gives_the_alerts_a_replay_at_that_threshold_gives(
    gradual: tuple[Path, ModelProfile],
) -> None:
    path, profile = gradual
    base = _replay(path, profile, default_rules())
    rule, grid = parse_sweep("feature_psi=0.02:2:0.02", default_rules())
    assert grid is not None
    assert len(grid) == 100
    doc = sweep(base, rule, grid)
    alerts = [p["alerts"] for p in doc["points"]]
    breaches = [p["breaches"] for p in doc["points"]]
    # a stricter threshold never fires more here (every drift rises then falls once), and
    # never breaches more anywhere
    assert alerts == sorted(alerts, reverse=True)
    assert breaches == sorted(breaches, reverse=True)
    assert alerts[0] == 2  # both drifts
    assert alerts[-1] == 0  # neither has two windows with PSI > 2
    assert breaches[0] > breaches[-1]
    # the full replay, window engine and all, at some of the thresholds
    for point in doc["points"][::7]:
        full = _replay(path, profile, _rules_with(point["threshold"]))
        psi = [a for a in full.alerts if a["rule"] == "feature_psi"]
        assert point["alerts"] == sum(1 for a in psi if a["state"] == "firing")
        assert rule_alerts(rule.model_copy(update={"threshold": point["threshold"]}), base) == psi
    # the replay's own threshold gives the replay's own alerts
    assert rule_alerts(rule, base) == [a for a in base.alerts if a["rule"] == "feature_psi"]


def test_the_default_grid_spans_the_rules_threshold(gradual: tuple[Path, ModelProfile]) -> None:
    rules = default_rules()
    rule, grid = parse_sweep("feature_ks", rules)
    assert grid is None
    base = _replay(*gradual, rules)
    assert default_grid(rule, base) == [0.0375, 0.075, 0.1125, 0.15, 0.1875, 0.225, 0.3, 0.45, 0.6]
    zero = rule.model_copy(update={"threshold": 0.0})  # no scale: deciles of what it saw
    grid = default_grid(zero, base)
    assert grid == sorted(grid)
    assert 3 <= len(grid) <= 11
    assert covered_days(base) == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", r"no rule named 'nope' \(rules: feature_psi, feature_ks"),
        ("feature_psi=0.1:0.5", "use RULE=LO:HI:STEP"),
        ("feature_psi=0.1:0.5:0", "STEP > 0"),
        ("feature_psi=0.5:0.1:0.1", "LO <= HI"),
        ("feature_psi=0:1:0.0001", "at most 1000"),
    ],
)
def test_bad_sweeps_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(IncidentsError, match=message):
        parse_sweep(text, default_rules())


# --- the incidents file ------------------------------------------------------------------

EXPECTED = [
    Incident("fraud", "amount", T0, T0 + HOUR, "amount shift"),
    Incident("fraud", None, T0 + 2 * HOUR, T0 + 2 * HOUR + 30 * MINUTE, ""),
]


def test_incidents_read_the_same_from_yaml_json_and_csv(tmp_path: Path) -> None:
    (tmp_path / "i.yaml").write_text(
        "incidents:\n"
        "  - {model: fraud, feature: amount, start: 2026-11-22T10:00:00Z,\n"
        "     end: 2026-11-22T12:00:00+01:00, note: amount shift}\n"
        f"  - {{model: fraud, start: {T0 + 2 * HOUR}, end: '2026-11-22T12:30:00Z'}}\n"
    )
    (tmp_path / "i.json").write_text(
        json.dumps(
            [
                {
                    "model": "fraud",
                    "feature": "amount",
                    "start": T0,
                    "end": T0 + HOUR,
                    "note": "amount shift",
                },
                {
                    "model": "fraud",
                    "feature": None,
                    "start": str(T0 + 2 * HOUR),
                    "end": "2026-11-22T12:30:00Z",
                },
            ]
        )
    )
    (tmp_path / "i.csv").write_text(
        "\ufeffmodel,feature,start,end,note\n"  # with the BOM spreadsheets write
        "fraud,amount,2026-11-22T10:00:00Z,2026-11-22T11:00:00Z,amount shift\n"
        f"fraud, ,{T0 + 2 * HOUR},2026-11-22T12:30:00Z,\n"
    )
    for name in ("i.yaml", "i.json", "i.csv"):
        assert load_incidents(tmp_path / name) == EXPECTED, name


CSV_HEAD = "model,feature,start,end\n"
GOOD_ROW = "fraud,amount,2026-11-22T10:00:00Z,2026-11-22T11:00:00Z\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "i.csv",
            "model,feature,start\n" + "fraud,amount,0\n",
            r"i\.csv the header: missing column 'end'",
        ),
        ("i.csv", "model,feture,start,end\n", r"i\.csv the header: unknown column 'feture'"),
        (
            "i.csv",
            CSV_HEAD + GOOD_ROW + "fraud,amount,yesterday,2026-11-22T11:00:00Z\n",
            r"i\.csv row 2 \(line 3\): `start` 'yesterday' is not a time: use RFC 3339",
        ),
        (
            "i.csv",
            CSV_HEAD + "fraud,amount,2026-11-22T10:00:00,2026-11-22T11:00:00Z\n",
            r"i\.csv row 1 \(line 2\): `start` .* is not a time",
        ),
        (
            "i.csv",
            CSV_HEAD + GOOD_ROW + GOOD_ROW + "fraud,amount,2026-11-22T12:00:00Z,"
            "2026-11-22T11:00:00Z\n",
            r"i\.csv row 3 \(line 4\): end 2026-11-22T11:00:00Z is before start "
            r"2026-11-22T12:00:00Z",
        ),
        (
            "i.csv",
            CSV_HEAD + "fraud,amount,2026-11-22T10:00:00Z\n",
            r"i\.csv row 1 \(line 2\): `end` is empty",
        ),
        ("i.csv", CSV_HEAD + ",amount,0,1\n", r"i\.csv row 1 \(line 2\): `model` is empty"),
        ("i.csv", CSV_HEAD + "fraud,amount,0,1,note,extra\n", r"row 1 \(line 2\): more values"),
        ("i.csv", "", r"i\.csv: empty file"),
        ("i.csv", CSV_HEAD, r"i\.csv: no incidents"),
        (
            "i.yaml",
            "- {model: fraud, end: 2026-11-22T11:00:00Z}\n",
            r"i\.yaml row 1: missing column 'start'",
        ),
        (
            "i.yaml",
            "- {model: fraud, start: 0, end: 1}\n- {model: fraud, start: 2026-11-22T10:00:00,"
            " end: 1}\n",
            r"i\.yaml row 2: `start` .* no time zone",
        ),
        ("i.yaml", "- {model: fraud, start: 2026-11-22, end: 1}\n", r"row 1: `start` .* a date"),
        (
            "i.yaml",
            "- {model: fraud, start: 10, end: 9}\n",
            r"i\.yaml row 1: end .* is before start",
        ),
        ("i.yaml", "- [fraud, amount]\n", r"i\.yaml row 1: expected a mapping"),
        ("i.yaml", "model: fraud\n", r"i\.yaml: expected a list of incidents"),
        ("i.yaml", "- {model: [\n", r"i\.yaml is not valid YAML"),
        ("i.json", '[{"model": "fraud", "start": true, "end": 1}]', r"i\.json row 1: `start`"),
        ("i.json", "[{", r"i\.json is not valid JSON"),
        ("i.txt", "", r"i\.txt: unknown format '\.txt'"),
        (
            "i.csv",
            CSV_HEAD + "fraud,amount,0,99999999999999999\n",
            r"row 1 .*`end` .* out of range",
        ),
    ],
)
def test_bad_incidents_files_name_the_file_and_the_row(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(IncidentsError, match=message):
        load_incidents(tmp_path / name)


def test_bad_flags_fail_before_the_replay_reads_anything(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    ref = ModelProfile.build("fraud", "3", {"amount": rng.normal(size=100)})
    ref.save(tmp_path / "ref.dlprofile")
    (tmp_path / "i.csv").write_text("model,start,end\nfraud,2026-11-22T12:00:00Z,0\n")
    cases = {
        "--incidents": ("i.csv row 1 (line 2): end 1970-01-01T00:00:00Z is before start"),
        "--sweep": "--sweep 'nope': no rule named 'nope'",
        "--grace": "--grace goes with --incidents FILE",
    }
    values = {"--incidents": str(tmp_path / "i.csv"), "--sweep": "nope", "--grace": "1h"}
    for flag, message in cases.items():
        # the events file does not exist: the flags are checked before it is read
        done = subprocess.run(
            [sys.executable, "-m", "stream.cli", "replay", str(tmp_path / "missing.parquet"),
             "--reference", str(tmp_path / "ref.dlprofile"), flag, values[flag]],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert message in done.stderr, done.stderr
