"""The window engine alone, with explicit timestamps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stream.engine import WindowEngine
from stream.events import Event
from stream.profiles import ModelProfile
from stream.windows import WindowSpec

from .conftest import T0

MIN = 60_000
EventFactory = Callable[..., Event]


@pytest.fixture
def engine(make_profile: Callable[..., ModelProfile]) -> WindowEngine:
    profiles = {("fraud", "3"): make_profile(), ("fraud", "4"): make_profile(model_version="4")}
    return WindowEngine(
        WindowSpec(size_ms=10 * MIN, lateness_ms=MIN), lambda m, v: profiles.get((m, v))
    )


def window_rows(
    rng: np.random.Generator, make_event: EventFactory, start: int, n: int, shift: float = 0.0
) -> list[Event]:
    amounts = rng.lognormal(3 + shift, 0.5, n)
    countries = rng.choice(["DE", "FR", "NL"], n, p=[0.5, 0.3, 0.2])
    return [
        make_event(
            ts=start + int(i * (10 * MIN - 1) / n),
            amount=float(a),
            country=str(c),
            prediction=float(rng.uniform()),
        )
        for i, (a, c) in enumerate(zip(amounts, countries, strict=True))
    ]


def test_windows_close_when_the_watermark_passes(
    engine: WindowEngine, make_event: EventFactory
) -> None:
    out = engine.process([make_event(ts=T0 + i * 1000) for i in range(100)])
    assert (out.accepted, out.reports) == (100, [])
    # 10 min + 1 min lateness later the first window closes, not before
    assert engine.process([make_event(ts=T0 + 11 * MIN - 1)]).reports == []
    out = engine.process([make_event(ts=T0 + 11 * MIN)])
    (report,) = out.reports
    assert report["rows"] == 100
    assert report["window_start_ms"] == T0
    assert report["window_end_ms"] == T0 + 10 * MIN
    assert report["window_start"] == "2026-11-22T10:00:00.000+00:00"
    assert report["report_id"] == f"fraud/3/{T0}/{T0 + 10 * MIN}"
    assert engine.open_windows("fraud") == [("3", T0 + 10 * MIN)]


def test_late_events_are_counted_not_added(engine: WindowEngine, make_event: EventFactory) -> None:
    engine.process([make_event(ts=T0), make_event(ts=T0 + 12 * MIN)])  # closes window 0
    out = engine.process([make_event(ts=T0 + 5 * MIN), make_event(ts=T0 + 10 * MIN + 1)])
    assert (out.late, out.accepted) == (1, 1)
    assert out.late_by_model == {"fraud": 1}
    report = engine.flush().reports[0]
    assert report["rows"] == 2
    assert report["late_events"] == 1


def test_out_of_order_within_lateness_is_kept(
    engine: WindowEngine, make_event: EventFactory
) -> None:
    engine.process([make_event(ts=T0 + 10 * MIN + 30_000)])
    out = engine.process([make_event(ts=T0 + 9 * MIN)])  # 1.5 min behind, lateness 1 min
    assert out.late == 0  # window 0 ends at 10 min, watermark is 9.5 min: still open
    assert [r["rows"] for r in engine.flush().reports] == [1, 1]


def test_hopping_windows_each_get_the_event(
    make_profile: Callable[..., ModelProfile], make_event: EventFactory
) -> None:
    profile = make_profile()
    eng = WindowEngine(WindowSpec(size_ms=10 * MIN, hop_ms=5 * MIN), lambda m, v: profile)
    eng.process([make_event(ts=T0 + 7 * MIN)])
    assert [s for _, s in eng.open_windows("fraud")] == [T0, T0 + 5 * MIN]


def test_shifted_feature_is_flagged_and_counts_are_exact(
    engine: WindowEngine, make_event: EventFactory
) -> None:
    rng = np.random.default_rng(5)
    steady = window_rows(rng, make_event, T0, 2_000)
    shifted = window_rows(rng, make_event, T0 + 10 * MIN, 2_000, shift=0.7)
    reports = engine.process(steady + shifted).reports + engine.flush().reports
    first, second = reports
    assert first["rows"] == second["rows"] == 2_000
    assert first["features"]["amount"]["psi"] < 0.05
    assert first["features"]["amount"]["ks"] < 0.05
    assert second["features"]["amount"]["psi"] > 0.2
    assert second["features"]["amount"]["ks"] > 0.15
    assert second["features"]["country"]["psi"] < 0.05  # the other feature did not move
    assert second["features"]["amount"]["n"] == 2_000
    assert first["model_metrics"]["prediction"]["ks"] < 0.1


def test_model_metrics(engine: WindowEngine, make_event: EventFactory) -> None:
    events = [
        make_event(ts=T0 + i, latency_ms=float(i + 1), status="error" if i % 10 == 0 else "ok")
        for i in range(1_000)
    ]
    report = engine.process(events).reports + engine.flush().reports
    m = report[0]["model_metrics"]
    assert m["errors"] == 100
    assert m["error_rate"] == pytest.approx(0.1)
    assert m["latency_ms"]["count"] == 1_000
    assert m["latency_ms"]["p50"] == pytest.approx(500, rel=0.01)
    assert m["latency_ms"]["p99"] == pytest.approx(990, rel=0.01)


def test_versions_get_their_own_windows(engine: WindowEngine, make_event: EventFactory) -> None:
    engine.process([make_event(), make_event(model_version="4"), make_event(model_version="4")])
    reports = engine.flush().reports
    assert sorted((r["model_version"], r["rows"]) for r in reports) == [("3", 1), ("4", 2)]


def test_unknown_models_and_mistyped_features_are_rejected(
    engine: WindowEngine, make_event: EventFactory
) -> None:
    out = engine.process(
        [
            make_event(model="nope"),
            make_event(model_version="99"),
            make_event(amount="12"),
            make_event(country=5.0),
            make_event(),
        ]
    )
    assert out.accepted == 1
    assert [pos for pos, _ in out.rejected] == [0, 1, 2, 3]
    assert [r.reason for _, r in out.rejected] == [
        "unknown_model",
        "unknown_model",
        "feature_type_mismatch",
        "feature_type_mismatch",
    ]
    assert "'amount' is numeric" in out.rejected[2][1].detail
    assert b'"model":"nope"' in out.rejected[0][1].raw


def test_missing_and_unknown_features(engine: WindowEngine, make_event: EventFactory) -> None:
    engine.process([make_event(amount=None), make_event(extra_feature=1.0)])
    (report,) = engine.flush().reports
    assert report["features"]["amount"]["missing"] == 1
    assert report["unknown_feature_values"] == 1


def approx_reports(reports: list[dict[str, Any]]) -> Any:
    """Counts and statistics equal; float sums (mean, std) equal up to summation order."""

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, float):
            return pytest.approx(v, rel=1e-9, abs=1e-12)
        return v

    return [walk(r) for r in reports]


def test_snapshot_and_restore_give_the_uninterrupted_reports(
    make_profile: Callable[..., ModelProfile], make_event: EventFactory
) -> None:
    profile = make_profile()
    spec = WindowSpec(size_ms=10 * MIN, lateness_ms=MIN)
    rng = np.random.default_rng(9)
    events = window_rows(rng, make_event, T0, 3_000) + window_rows(
        rng, make_event, T0 + 10 * MIN, 3_000, 0.3
    )
    whole = WindowEngine(spec, lambda m, v: profile)
    expected = whole.process(events).reports + whole.flush().reports

    first = WindowEngine(spec, lambda m, v: profile)
    got = first.process(events[:4_000]).reports
    saved = first.snapshot("fraud")
    second = WindowEngine(spec, lambda m, v: profile)  # a restarted worker
    second.restore("fraud", saved)
    got += second.process(events[4_000:]).reports + second.flush().reports
    assert got == approx_reports(expected)


def test_idle_models_close_on_wall_clock(engine: WindowEngine, make_event: EventFactory) -> None:
    wall = 1_000_000
    engine.process([make_event(ts=T0)], now_ms=wall)
    engine.process([make_event(ts=T0 + 12 * MIN, model_version="4")], now_ms=wall + 5_000)
    assert engine.advance(now_ms=wall + 29_999, idle_ms=30_000).reports == []
    (report,) = engine.advance(now_ms=wall + 35_000, idle_ms=30_000).reports
    assert report["rows"] == 1
    assert engine.open_windows("fraud") == []


def test_models_sharing_a_profile_report_under_their_own_names(
    make_profile: Callable[..., ModelProfile], make_event: EventFactory
) -> None:
    profile = make_profile()  # built for "fraud"
    eng = WindowEngine(WindowSpec(size_ms=10 * MIN), lambda m, v: profile)
    eng.process([make_event(model="a"), make_event(model="b"), make_event(model="b")])
    reports = eng.flush().reports
    assert sorted((r["model"], r["rows"]) for r in reports) == [("a", 1), ("b", 2)]
    assert len({r["report_id"] for r in reports}) == 2


@pytest.mark.parametrize("hop", [None, 5 * MIN])
def test_the_columnar_path_equals_the_event_path(
    make_profile: Callable[..., ModelProfile], make_event: EventFactory, hop: int | None
) -> None:
    profile = make_profile()
    spec = WindowSpec(size_ms=10 * MIN, hop_ms=hop, lateness_ms=2 * MIN)
    rng = np.random.default_rng(8)
    # out of order, with some events beyond the lateness: late ones must match too
    ts = T0 + np.sort(rng.integers(0, 60 * MIN, 3_000)) + rng.integers(-12 * MIN, 1, 3_000)
    amounts = rng.lognormal(3, 0.5, 3_000)
    amounts[::97] = np.nan
    countries = rng.choice(["DE", "FR", "NL", "PL"], 3_000).tolist()
    countries[::53] = [None] * len(countries[::53])
    preds = rng.uniform(size=3_000)
    lat = rng.lognormal(2, 0.3, 3_000)
    status = rng.random(3_000) < 0.02
    events = [
        make_event(ts=int(t), amount=None if np.isnan(a) else float(a), country=c,
                   prediction=float(p), latency_ms=float(la), status="error" if s else "ok")
        for t, a, c, p, la, s in zip(ts, amounts, countries, preds, lat, status, strict=True)
    ]  # fmt: skip
    by_events = WindowEngine(spec, lambda m, v: profile)
    by_columns = WindowEngine(spec, lambda m, v: profile)
    expected, got = [], []
    late_e = late_c = 0
    for lo in range(0, 3_000, 700):  # the same batches both ways
        hi = lo + 700
        out_e = by_events.process(events[lo:hi])
        out_c = by_columns.process_columns(
            "fraud", "3", ts[lo:hi], {"amount": amounts[lo:hi], "country": countries[lo:hi]},
            preds[lo:hi], lat[lo:hi], status[lo:hi],
        )  # fmt: skip
        expected += out_e.reports
        got += out_c.reports
        late_e += out_e.late
        late_c += out_c.late
    expected += by_events.flush().reports
    got += by_columns.flush().reports
    assert late_e == late_c > 0
    assert got == approx_reports(expected)
