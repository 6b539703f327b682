"""Replay: reference build and backtests through the same engines as the stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from alerts.engine import RuleEngine
from alerts.rules import default_rules
from stream.engine import WindowEngine
from stream.profiles import ModelProfile
from stream.replay import ReplayError, events, frames, replay
from stream.windows import WindowSpec

from .conftest import T0

HOUR = 3_600_000


def table(n: int, rng: np.random.Generator, start: int, shift: float = 0.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [start + int(i * HOUR / n) for i in range(n)],
            "model": ["fraud"] * n,
            "model_version": ["3"] * n,
            "event_id": [f"{start}-{i}" for i in range(n)],
            "amount": rng.lognormal(3 + shift, 0.5, n),
            "country": rng.choice(["DE", "FR", "NL"], n).tolist(),
            "prediction": rng.uniform(size=n),
            "latency_ms": rng.lognormal(2, 0.3, n),
            "status": ["ok"] * n,
        }
    )


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_reference_build_and_replay_from_the_command_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    train = table(20_000, rng, T0 - 10 * HOUR)
    train.write_csv(tmp_path / "train.csv")
    ref = str(tmp_path / "ref.dlprofile")
    out = run("reference", "build", str(tmp_path / "train.csv"), "--out", ref,
              "--model", "fraud", "--version", "3")  # fmt: skip
    assert "amount:numeric, country:categorical" in out
    # three steady hours, then three drifted ones, shuffled: replay sorts by event time
    parts = [table(2_000, rng, T0 + h * HOUR, shift=0.6 if h >= 3 else 0.0) for h in range(6)]
    pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=1).write_parquet(
        tmp_path / "ev.parquet"
    )
    text = run("replay", str(tmp_path / "ev.parquet"), "--reference", ref,
               "--window", "1h", "--json", str(tmp_path / "out.json"))  # fmt: skip
    doc = json.loads((tmp_path / "out.json").read_text())
    assert [w["rows"] for w in doc["windows"]] == [2_000] * 6
    assert doc["late_events"] == 0
    drifted = [w["features"]["amount"]["psi"] > 0.2 for w in doc["windows"]]
    assert drifted == [False, False, False, True, True, True]
    # default rules: PSI and KS fire on the second drifted window, one retrain event each
    assert sorted(e["data"]["rule"] for e in doc["retrain_events"]) == ["feature_ks", "feature_psi"]
    assert {e["data"]["window"]["start"] for e in doc["retrain_events"]} == {
        doc["windows"][4]["window_start"]
    }
    assert "12,000 events, 6 windows" in text
    # the document keeps its documented shape
    import jsonschema

    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "replay.schema.json").read_text()
    )
    jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())
    broken = {**doc, "windows": [{**doc["windows"][0], "rows": "many"}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_replay_gives_the_reports_the_engine_gives(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    profile = ModelProfile.build(
        "fraud", "3",
        {"amount": rng.lognormal(3, 0.5, 5_000),
         "country": rng.choice(["DE", "FR", "NL"], 5_000).tolist()},
        prediction=rng.uniform(size=5_000),
    )  # fmt: skip
    frame = pl.concat([table(1_500, rng, T0 + h * HOUR, 0.3 * h) for h in range(3)])
    frame.write_ndjson(tmp_path / "ev.ndjson")
    spec = WindowSpec(HOUR)
    result = replay(frames([tmp_path / "ev.ndjson"]), spec, lambda m, v: profile, default_rules())
    direct = WindowEngine(spec, lambda m, v: profile)
    batch = [e for b in events([tmp_path / "ev.ndjson"]) for e in b]
    expected = direct.process(batch).reports + direct.flush().reports
    assert result.windows == expected
    ruler = RuleEngine(default_rules())
    assert result.alerts == [a for r in expected for a in ruler.evaluate(r).alerts]


def test_bad_input_names_the_file_and_the_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    profile = ModelProfile.build(
        "fraud", "3", {"amount": rng.normal(size=100), "country": ["DE"] * 100}
    )
    bad = table(10, rng, T0).with_columns(pl.col("amount").cast(pl.String))
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ReplayError, match=r"'amount' holds text .* numeric \(rows 0\.\.9\)"):
        replay(frames([tmp_path / "bad.parquet"]), WindowSpec(HOUR), lambda m, v: profile,
               default_rules(), source="bad.csv")  # fmt: skip
    with pytest.raises(ReplayError, match="no such file"):
        list(frames([tmp_path / "missing.parquet"]))
    (tmp_path / "bad.txt").write_text("ts,amount\n1,2\n")
    with pytest.raises(ReplayError, match="unknown format"):
        list(frames([tmp_path / "bad.txt"]))
    pl.DataFrame({"ts": [], "amount": []}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ReplayError, match="no events"):
        list(frames([tmp_path / "empty.parquet"]))
    pl.DataFrame({"amount": [1.0]}).write_parquet(tmp_path / "nots.parquet")
    with pytest.raises(ReplayError, match="no `ts` column"):
        list(frames([tmp_path / "nots.parquet"]))


def test_compare_command_finds_the_drifted_column_and_sets_the_exit_code(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    table(5_000, rng, T0).write_parquet(tmp_path / "ref.parquet")
    table(2_000, rng, T0, shift=0.7).write_csv(tmp_path / "cur.csv")
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "compare", str(tmp_path / "ref.parquet"),
         str(tmp_path / "cur.csv"), "--columns", "amount,country,latency_ms",
         "--json", str(tmp_path / "c.json"), "--fail-on-drift"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["drifted"] == ["amount"]
    assert doc["columns"]["country"]["kind"] == "categorical"
    assert "1 of 3 columns drifted" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "stream.cli", "compare", str(tmp_path / "ref.parquet"),
         str(tmp_path / "cur.csv"), "--columns", "nope"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "no column 'nope'" in missing.stderr


@pytest.mark.parametrize("shuffle", [False, True])
def test_frames_come_in_event_time_order_across_ranges(tmp_path: Path, shuffle: bool) -> None:
    rng = np.random.default_rng(8)
    n = 5_000
    frame = pl.DataFrame(
        {
            "ts": T0 + rng.integers(0, 40, n) * 60_000,
            "seq": np.arange(n),
            "amount": rng.normal(size=n),
        }
    ).sort("ts", maintain_order=True)  # many events share a time: the order must be stable
    if shuffle:
        frame = frame.sample(fraction=1.0, shuffle=True, seed=2)
    frame.write_parquet(tmp_path / "ev.parquet", row_group_size=700)
    got = pl.concat(frames([tmp_path / "ev.parquet"], rows=300, rows_in_memory=1_000))
    assert got.height == n
    # in order, and events at the same time in the order of the file
    assert got["seq"].to_list() == frame.sort("ts", maintain_order=True)["seq"].to_list()
