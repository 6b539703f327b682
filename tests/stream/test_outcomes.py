"""Outcomes without Kafka: the contract, the pending store, quality figures against
scikit-learn, the book, the quality rules and the worker's join."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (  # type: ignore[import-untyped]
    accuracy_score,
    f1_score,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
)

from alerts.engine import QualityRuleEngine
from alerts.rules import RuleSet
from stream.config import MonitorConfig
from stream.engine import WindowEngine
from stream.events import Event, Invalid, encode_event
from stream.metrics import WorkerMetrics
from stream.outcomes import (
    BINS,
    CHUNK_BYTES,
    Outcome,
    Pending,
    PendingPredictions,
    QualityBook,
    QualityState,
    decode_chunk,
    decode_outcome,
    encode_chunks,
    encode_outcome,
    histogram_auc,
    reference_quality,
)
from stream.profiles import ModelProfile
from stream.state import MemoryPendingLog, MemoryState
from stream.windows import WindowSpec
from stream.worker import Handler, Outcomes

from .conftest import T0

MIN = 60_000


def test_outcome_messages_decode_or_say_why() -> None:
    good = decode_outcome(
        b'{"schema":"driftline.outcome/v1","event_id":"e1","model":"fraud","label":true,'
        b'"ts":"2026-11-23T10:00:00Z"}'
    )
    assert good == Outcome("e1", "fraud", 1.0, 1795428000000)
    assert decode_outcome(encode_outcome(Outcome("e2", "m", "cat", None))) == Outcome(
        "e2", "m", "cat", None
    )
    reasons = {
        b"{nope": "invalid_json",
        b'{"schema":"driftline.outcome/v1","model":"m","label":1}': "schema_violation",
        b'{"schema":"driftline.outcome/v1","event_id":"e","model":"m","label":[1]}': (
            "schema_violation"
        ),
        b'{"schema":"driftline.outcome/v1","event_id":"e","model":"m","label":1e999}': (
            "schema_violation"
        ),
        b'{"schema":"driftline.outcome/v1","event_id":"e","model":"m","label":1,"ts":"x"}': (
            "bad_timestamp"
        ),
        b'{"schema":"driftline.outcome/v1","event_id":"' + b"x" * 20_000 + b'"}': "too_large",
        b'{"schema":"driftline.outcome/v1","event_id":"e","model":"m","label":"\xff"}': (
            "invalid_json"
        ),
    }
    for raw, reason in reasons.items():
        bad = decode_outcome(raw)
        assert isinstance(bad, Invalid), raw
        assert bad.reason in (reason, "not_finite"), (raw, bad)
        assert bad.raw == raw


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_pending_predictions_join_once_and_expire(tmp_path: Path, store: str) -> None:
    path = tmp_path / "pending" if store == "rocksdb" else None
    pending = PendingPredictions(path, ttl_ms=10 * MIN)
    items = [
        ("fraud", "a", Pending("3", T0, 0.25)),
        ("fraud", "b", Pending("3", T0 + MIN, "yes")),
        ("fraud", "c", Pending("4", T0 - 20 * MIN, 0.5)),
        ("churn", "a", Pending("1", T0, None)),
    ]
    assert len(pending.put_many(items)) == 4
    assert pending.find("fraud", "a", T0) == ("joined", Pending("3", T0, 0.25))
    assert pending.find("fraud", "b", T0) == ("joined", Pending("3", T0 + MIN, "yes"))
    assert pending.find("churn", "a", T0) == ("joined", Pending("1", T0, None))
    assert pending.find("fraud", "c", T0)[0] == "expired"  # 20 min before the newest event
    assert pending.find("fraud", "zzz", T0) == ("unknown_event", None)
    pending.mark_joined([items[0]])
    assert pending.find("fraud", "a", T0)[0] == "duplicate"
    if path is not None:
        pending.close()
        reopened = PendingPredictions(path, ttl_ms=10 * MIN)  # a restart keeps them
        assert reopened.find("fraud", "a", T0)[0] == "duplicate"
        assert reopened.find("fraud", "b", T0)[0] == "joined"
        reopened.close()


def scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
    return p, y


def test_binary_quality_matches_scikit_learn() -> None:
    p, y = scores(20_000, 1)
    one, many = QualityState("binary"), QualityState("binary")
    for a, b in zip(p.tolist(), y.tolist(), strict=True):
        assert one.add(a, b) is None
    many.add_many(p, y)
    assert one == many  # the event path and the columnar path count the same
    figures = many.figures()
    predicted = (p >= 0.5).astype(int)
    assert figures["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert figures["precision"] == pytest.approx(precision_score(y, predicted), abs=1e-12)
    assert figures["recall"] == pytest.approx(recall_score(y, predicted), abs=1e-12)
    assert figures["f1"] == pytest.approx(f1_score(y, predicted), abs=1e-12)
    # exact for scores binned to 1/BINS ...
    binned = np.clip(np.floor(p * BINS), 0, BINS - 1)
    assert figures["auc"] == pytest.approx(roc_auc_score(y, binned), abs=1e-12)
    # ... and on raw scores within half the share of (positive, negative) pairs in a bin
    pos, neg = np.array(many.pos), np.array(many.neg)
    bound = 0.5 * float((pos * neg).sum()) / (pos.sum() * neg.sum())
    assert abs(figures["auc"] - roc_auc_score(y, p)) <= bound
    assert bound < 0.01


def test_regression_and_multiclass_quality_and_merge() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(10, 3, 5_000)
    p = y + rng.normal(0.5, 1.0, 5_000)
    left, right = QualityState("regression"), QualityState("regression")
    left.add_many(p[:2_000], y[:2_000])
    right.add_many(p[2_000:], y[2_000:])
    left.merge(right)
    figures = left.figures()
    assert figures["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert figures["rmse"] == pytest.approx(math.sqrt(np.mean((p - y) ** 2)), rel=1e-12)
    labels = np.array(["a", "b", "c"] * 100)
    guesses = labels.copy()
    guesses[:30] = "x"
    mc = QualityState("multiclass")
    mc.add_many(guesses, labels)
    assert mc.figures() == {"accuracy": accuracy_score(labels, guesses)}
    assert QualityState("binary").add(0.3, 2.0) == "label 2.0 of a binary model is not 0/1"


def test_histogram_auc_of_separable_and_tied_scores() -> None:
    assert histogram_auc([0, 0, 5], [5, 0, 0]) == 1.0
    assert histogram_auc([5, 0, 0], [0, 0, 5]) == 0.0
    assert histogram_auc([3, 0], [3, 0]) == 0.5
    assert histogram_auc([0, 0], [1, 0]) is None


def test_reference_quality_infers_the_task() -> None:
    p, y = scores(2_000, 3)
    ref = reference_quality(p, y)
    assert ref["task"] == "binary"
    assert ref["labelled"] == 2_000
    assert ref["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-12)
    assert reference_quality(np.array([1.5, 2.0]), np.array([1.0, 2.5]))["task"] == "regression"


def test_the_book_attributes_labels_to_windows_by_prediction_time() -> None:
    spec = WindowSpec(10 * MIN, 5 * MIN)  # hopping: a prediction is in two windows
    book = QualityBook(spec, ttl_ms=60 * MIN)
    starts, why = book.add("m", Pending("1", T0 + 7 * MIN, 0.9), 1.0, "binary")
    assert why is None
    assert starts == [T0, T0 + 5 * MIN]
    report = {"model": "m", "model_version": "1", "window_start_ms": T0, "rows": 4}
    closed = book.window_closed(report)
    assert closed is not None
    assert closed.rows == 4
    quality = book.report("m", "1", T0, {"accuracy": 0.75, "auc": 0.9})
    assert quality["labelled"] == 1
    assert quality["labelled_share"] == 0.25
    assert quality["quality"]["accuracy"] == 1.0
    assert quality["model_metrics"]["accuracy_drop"] == pytest.approx(-0.25)
    assert "auc_drop" not in quality["model_metrics"]  # one class only: no AUC
    book.expire("m", T0 + 72 * MIN)  # windows that ended 60 min before the newest event go
    assert list(book.states["m"]) == [("1", T0 + 5 * MIN)]
    book.restore("m", book.snapshot("m"))
    assert list(book.states["m"]) == [("1", T0 + 5 * MIN)]


def quality_rules() -> RuleSet:
    return RuleSet.model_validate(
        {
            "rules": [
                {"name": "acc", "metric": "accuracy_drop", "threshold": 0.05,
                 "min_samples": 10, "action": "retrain", "severity": "critical"},
                {"name": "psi", "metric": "psi", "threshold": 0.2},
            ]
        }
    )  # fmt: skip


def quality_report(start: int, drop: float, labelled: int) -> dict[str, Any]:
    return {
        "report_id": f"m/1/{start}/{start + 10 * MIN}/quality",
        "model": "m",
        "model_version": "1",
        "window_start": str(start),
        "window_end": str(start + 10 * MIN),
        "window_start_ms": start,
        "window_end_ms": start + 10 * MIN,
        "model_metrics": {"accuracy_drop": drop, "labelled": labelled},
    }


def test_quality_rules_judge_each_window_once_as_labels_arrive() -> None:
    judge = QualityRuleEngine(quality_rules())
    assert judge.evaluate(quality_report(T0, 0.2, 5)).alerts == []  # too few labels yet
    fired = judge.evaluate(quality_report(T0, 0.2, 50))
    assert [a["state"] for a in fired.alerts] == ["firing"]
    assert len(fired.retrain) == 1
    again = judge.evaluate(quality_report(T0, 0.25, 80))  # re-reported: nothing new
    assert again.alerts == []
    assert again.retrain == []
    # another window, out of order, is judged on its own
    assert judge.evaluate(quality_report(T0 - 10 * MIN, 0.01, 50)).alerts == []
    resolved = judge.evaluate(quality_report(T0, 0.02, 200))
    assert [a["state"] for a in resolved.alerts] == ["resolved"]
    restored = QualityRuleEngine(quality_rules())
    restored.restore(judge.snapshot("m"), "m")
    assert restored.evaluate(quality_report(T0, 0.02, 300)).alerts == []


class Sink:
    def __init__(self) -> None:
        self.sent: dict[str, list[dict[str, Any]]] = {
            k: [] for k in ("reports", "quality", "dlq", "alerts", "retrain")
        }

    def to(self, name: str) -> Callable[..., Any]:
        async def send(*args: bytes) -> None:
            self.sent[name].append(json.loads(args[-1]))

        return send


def handler_with_outcomes(
    profile: ModelProfile,
    tmp_path: Path,
    sink: Sink,
    wait_s: float = 0.0,
    state: MemoryState | None = None,
    log: MemoryPendingLog | None = None,
) -> Handler:
    config = MonitorConfig.model_validate(
        {
            "window": {"size": "10m", "lateness": "0s", "idle_close": "1m"},
            "models": [{"name": "fraud", "reference": "unused"}],
            "outcomes": {"ttl": "30m"},
            "limits": {"max_future": None},
            "base_dir": Path("."),
        }
    )
    engine = WindowEngine(config.window.spec(), lambda m, v: profile if m == "fraud" else None)
    return Handler(
        config=config,
        engine=engine,
        metrics=WorkerMetrics(),
        send_report=sink.to("reports"),
        send_dlq=sink.to("dlq"),
        state=state if state is not None else MemoryState(),
        send_alert=sink.to("alerts"),
        send_retrain=sink.to("retrain"),
        outcomes=Outcomes(
            pending=PendingPredictions(tmp_path / "pending", 30 * MIN),
            book=QualityBook(config.window.spec(), 30 * MIN),
            rules=QualityRuleEngine(quality_rules()),
            send_quality=sink.to("quality"),
            wait_s=wait_s,
            log=log,
        ),
    )


def outcome(event_id: str, label: float) -> bytes:
    return encode_outcome(Outcome(event_id, "fraud", label, None))


def test_the_worker_joins_late_out_of_order_and_duplicated_labels(
    make_profile: Callable[..., ModelProfile],
    make_event: Callable[..., Event],
    tmp_path: Path,
) -> None:
    profile = make_profile()
    profile.quality = {"task": "binary", "threshold": 0.5, "accuracy": 0.9, "auc": 0.95}
    sink = Sink()
    handler = handler_with_outcomes(profile, tmp_path, sink)
    rng = np.random.default_rng(4)
    events = []
    for i in range(400):  # two windows of 200
        events.append(make_event(ts=T0 + i * 3_000, prediction=float(rng.random())))
    messages = [(0, i, encode_event(e)) for i, e in enumerate(events)]
    asyncio.run(handler.handle(messages[:150]))
    # labels of window 1 arrive before it closes, out of order, one twice
    truth = {e.event_id: float(e.prediction >= 0.5) for e in events}  # type: ignore[operator]
    first = [e.event_id for e in events[:150]][::-1]
    batch = [(0, i, outcome(eid, truth[eid])) for i, eid in enumerate(first)]
    batch.append((0, 150, outcome(first[0], truth[first[0]])))
    held = asyncio.run(handler.handle_outcomes(batch))
    assert held == []
    assert sink.sent["quality"] == []  # window 1 is still open
    assert [d["reason"] for d in sink.sent["dlq"]] == ["duplicate"]
    asyncio.run(handler.handle(messages[150:]))  # window 1 closes
    (q1,) = sink.sent["quality"]
    assert q1["window_start_ms"] == T0
    assert (q1["rows"], q1["labelled"], q1["labelled_share"]) == (200, 150, 0.75)
    assert q1["quality"]["accuracy"] == 1.0
    assert q1["model_metrics"]["accuracy_drop"] == pytest.approx(-0.1)
    # window 2: labels flipped for half of it (a degraded model) -> accuracy_drop fires
    second = [e.event_id for e in events[200:400]]
    flipped = [(0, 151 + i, outcome(eid, 1.0 - truth[eid] if i % 2 else truth[eid]))
               for i, eid in enumerate(second)]  # fmt: skip
    asyncio.run(handler.handle_outcomes([*flipped, (0, 351, outcome("nobody", 1.0))]))
    assert [d["reason"] for d in sink.sent["dlq"]] == ["duplicate", "unknown_event"]
    asyncio.run(handler.tick(now_ms=10**13))  # the idle model's window 2 closes
    q2 = sink.sent["quality"][-1]
    assert q2["window_start_ms"] == T0 + 10 * MIN
    assert q2["labelled"] == 200
    assert q2["quality"]["accuracy"] == pytest.approx(0.5)
    (alert,) = sink.sent["alerts"]
    assert (alert["rule"], alert["state"], alert["window_start_ms"]) == (
        "acc",
        "firing",
        T0 + 10 * MIN,
    )
    (retrain,) = sink.sent["retrain"]
    assert retrain["data"]["rule"] == "acc"
    # a redelivered outcome message is skipped by its offset; a label past the TTL expires
    asyncio.run(handler.handle_outcomes([(0, 300, outcome(second[99], 1.0))]))
    asyncio.run(handler.handle_outcomes([(0, 352, outcome(events[180].event_id, 1.0))]))
    q1 = sink.sent["quality"][-1]  # a late label for window 1 re-reports it
    assert (q1["window_start_ms"], q1["labelled"]) == (T0, 151)
    assert handler.metrics.redelivered._value.get() == 1  # offset 300 was handled already
    late = make_event(ts=T0 + 60 * MIN, prediction=0.9)
    asyncio.run(handler.handle([(0, 400, encode_event(late))]))
    asyncio.run(handler.handle_outcomes([(0, 353, outcome(events[0].event_id, 1.0))]))
    assert sink.sent["dlq"][-1]["reason"] == "duplicate"
    asyncio.run(handler.handle_outcomes([(0, 354, outcome(events[399].event_id, 1.0))]))
    assert sink.sent["dlq"][-1]["reason"] == "duplicate"
    never = make_event(ts=T0 + 61 * MIN, prediction=0.9)
    old = make_event(ts=T0 + 20 * MIN, prediction=0.9)
    asyncio.run(handler.handle([(0, 401, encode_event(old)), (0, 402, encode_event(never))]))
    asyncio.run(handler.handle_outcomes([(0, 355, outcome(old.event_id, 1.0))]))
    assert sink.sent["dlq"][-1]["reason"] == "expired"  # 41 min before the newest event


def test_stream_and_replay_give_the_same_quality(
    make_profile: Callable[..., ModelProfile],
    make_event: Callable[..., Event],
    tmp_path: Path,
) -> None:
    import polars as pl

    from stream.replay import replay

    profile = make_profile()
    profile.quality = {"task": "binary", "threshold": 0.5, "accuracy": 0.8, "auc": 0.9}
    rng = np.random.default_rng(8)
    events = [make_event(ts=T0 + i * 2_000, prediction=float(rng.random())) for i in range(900)]
    labels = {e.event_id: float(rng.random() < float(e.prediction or 0)) for e in events}
    sink = Sink()
    handler = handler_with_outcomes(profile, tmp_path, sink)
    asyncio.run(handler.handle([(0, i, encode_event(e)) for i, e in enumerate(events)]))
    asyncio.run(handler.tick(now_ms=10**13))
    order = list(labels)
    rng.shuffle(order)
    asyncio.run(
        handler.handle_outcomes([(0, i, outcome(eid, labels[eid])) for i, eid in enumerate(order)])
    )
    streamed = {q["window_start_ms"]: q for q in sink.sent["quality"]}  # the latest of each

    frame = pl.DataFrame(
        {
            "ts": [e.ts for e in events],
            "model": [e.model for e in events],
            "model_version": [e.model_version for e in events],
            "event_id": [e.event_id for e in events],
            "amount": [e.features["amount"] for e in events],
            "country": [e.features["country"] for e in events],
            "prediction": [e.prediction for e in events],
            "label": [labels[e.event_id] for e in events],
        }
    )
    result = replay(
        iter([frame]), WindowSpec(10 * MIN, None, 0), lambda m, v: profile, quality_rules()
    )
    replayed = {q["window_start_ms"]: q for q in result.quality}
    assert sorted(replayed) == sorted(streamed) == [T0, T0 + 10 * MIN, T0 + 20 * MIN]

    def same(q: dict[str, Any]) -> dict[str, Any]:
        keep = ("report_id", "rows", "labelled", "labelled_share", "quality", "model_metrics")
        text = json.dumps({k: q[k] for k in keep})
        rounded: dict[str, Any] = json.loads(text, parse_float=lambda x: round(float(x), 9))
        return rounded

    for start, q in replayed.items():
        assert same(q) == same(streamed[start])
    quality_alerts = sorted(a["alert_id"] for a in result.alerts if a["rule"] == "acc")
    assert quality_alerts == sorted(a["alert_id"] for a in sink.sent["alerts"])
    # the --json document with its quality reports keeps to the documented schema
    import jsonschema

    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/replay.schema.json").read_text()
    )
    jsonschema.validate(json.loads(json.dumps(result.to_json())), schema)
    broken = json.loads(json.dumps(result.to_json()))
    broken["quality"][0]["labelled"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_an_outcome_before_its_prediction_waits_for_it(
    make_profile: Callable[..., ModelProfile],
    make_event: Callable[..., Event],
    tmp_path: Path,
) -> None:
    sink = Sink()
    handler = handler_with_outcomes(make_profile(), tmp_path, sink, wait_s=60.0)
    early = make_event(ts=T0, prediction=0.9)
    asyncio.run(handler.handle_outcomes([(0, 0, outcome(early.event_id, 1.0))]))
    assert handler.outcomes is not None
    assert [len(w) for w in handler.outcomes.waiting.values()] == [1]
    assert sink.sent["dlq"] == []
    later = make_event(ts=T0 + 10 * MIN, prediction=0.1)
    asyncio.run(handler.handle([(0, 0, encode_event(early)), (0, 1, encode_event(later))]))
    (quality,) = sink.sent["quality"]  # joined once the event came; window 1 closed
    assert (quality["window_start_ms"], quality["labelled"]) == (T0, 1)
    assert handler.outcomes.waiting == {}
    # one that never finds its prediction goes to the DLQ once the wait is over
    handler.outcomes.wait_s = 0.0
    asyncio.run(handler.handle_outcomes([(0, 1, outcome("nobody", 1.0))]))
    assert [d["reason"] for d in sink.sent["dlq"]] == ["unknown_event"]


def test_pending_store_chunks_round_trip_and_split() -> None:
    rows = [(bytes([i % 256]) * 12, b"\x00\x00" + bytes(8) + b"\x01v" + bytes(i % 50))
            for i in range(100_000)]  # fmt: skip
    chunks = encode_chunks(rows)
    assert len(chunks) > 1
    assert all(len(c) <= CHUNK_BYTES for c in chunks)
    assert [r for c in chunks for r in decode_chunk(c)] == rows
    assert encode_chunks([]) == []
    for bad in (b"", b"nope", chunks[0][:-3], chunks[0][:20]):
        with pytest.raises(ValueError, match="chunk"):
            decode_chunk(bad)


def test_pending_store_applies_its_log_in_order(tmp_path: Path) -> None:
    a = PendingPredictions(tmp_path / "a", ttl_ms=10 * MIN)
    b = PendingPredictions(None, ttl_ms=10 * MIN)
    made = ("fraud", "e1", Pending("3", T0, 0.75))
    a.put_many([made])
    (chunk,) = encode_chunks(a.mark_joined([made]))
    assert b.applied(2) == 0
    assert b.apply_chunk(2, 0, chunk) == 1
    assert b.find("fraud", "e1", T0)[0] == "duplicate"
    assert (b.applied(2), b.applied(3)) == (1, 0)
    assert b.apply_chunk(2, 1, b"not a chunk") == -1  # skipped, offset still moves on
    assert b.applied(2) == 2
    b.advance(2, 5)  # not directly after what it applied: a gap to replay later
    assert b.applied(2) == 2
    b.advance(2, 2)
    assert b.applied(2) == 3
    a.close()


def test_a_partition_moved_to_another_worker_takes_its_pending_predictions(
    make_profile: Callable[..., ModelProfile],
    make_event: Callable[..., Event],
    tmp_path: Path,
) -> None:
    # worker A sees the predictions, then loses the partition to worker B (its own store,
    # empty); B replays the store's log and joins their labels; A, given the partition
    # back, replays B's joined markers: a label sent again is a duplicate there
    profile = make_profile()
    state, log = MemoryState(), MemoryPendingLog()
    sink = Sink()
    a = handler_with_outcomes(profile, tmp_path / "a", sink, state=state, log=log)
    b = handler_with_outcomes(profile, tmp_path / "b", sink, state=state, log=log)
    events = [make_event(ts=T0 + i * 1_000, prediction=0.9) for i in range(50)]
    asyncio.run(a.handle([(1, i, encode_event(e)) for i, e in enumerate(events)]))
    asyncio.run(a.revoke({1}))
    labels = [(1, i, outcome(e.event_id, 1.0)) for i, e in enumerate(events)]
    assert asyncio.run(b.handle_outcomes(labels)) == []
    assert sink.sent["dlq"] == []
    assert b.metrics.outcomes.labels("fraud", "joined")._value.get() == 50
    asyncio.run(b.revoke({1}))
    again = [(1, 50, outcome(events[0].event_id, 1.0))]
    asyncio.run(a.handle_outcomes(again))
    assert [d["reason"] for d in sink.sent["dlq"]] == ["duplicate"]
    # one record per batch: A's predictions, then B's joined markers
    assert [len(decode_chunk(c)) for c in log.partitions[1]] == [50, 50]
