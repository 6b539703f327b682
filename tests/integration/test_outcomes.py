"""Late labels joined to predictions by a worker on the real broker: out of order,
duplicated, past their time to live; a degraded model fires accuracy_drop on the right
window; stream and replay give the same quality figures."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from subprocess import Popen
from typing import Any

import numpy as np
import polars as pl
import yaml

from alerts.rules import default_rules
from stream.outcomes import Outcome, encode_outcome
from stream.replay import replay
from stream.windows import WindowSpec

from .conftest import Setup, consume_all, produce, wait_for
from .test_worker import WINDOW, base_ts, window_events


def test_labels_fill_in_window_quality_and_a_degraded_model_fires(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    bootstrap = setup.kafka.bootstrap
    outcomes_topic, quality_topic = f"{setup.prefix}.outcomes", f"{setup.prefix}.quality"
    profile = setup.profile
    profile.quality = {"task": "binary", "threshold": 0.5, "accuracy": 0.9, "auc": 0.95}
    reference = yaml.safe_load(setup.config_path.read_text())["models"][0]["reference"]
    profile.save(reference)
    config = yaml.safe_load(setup.config_path.read_text())
    config["kafka"].update(outcomes_topic=outcomes_topic, quality_topic=quality_topic)
    config["outcomes"] = {"ttl": "30m", "wait": "2s"}
    config["window"]["idle_close"] = "10m"  # windows close by event time only
    setup.config_path.write_text(yaml.safe_dump(config))

    rng = np.random.default_rng(12)
    t0 = base_ts()
    a = window_events(t0, 600, rng)
    b = window_events(t0 + WINDOW, 600, rng)
    closer = window_events(t0 + 2 * WINDOW + 90_000, 1, rng)
    far = window_events(t0 + 7 * WINDOW, 1, rng)
    for i, e in enumerate(closer + far):
        e["event_id"] = f"late-{i}"
    truth = {e["event_id"]: float(e["prediction"] >= 0.5) for e in a + b}
    # the model gets worse in window B: 40% of its labels disagree with the prediction
    for i, e in enumerate(b):
        if i % 5 < 2:
            truth[e["event_id"]] = 1.0 - truth[e["event_id"]]

    start_worker()

    def send(topic: str, values: list[bytes]) -> None:
        produce(bootstrap, topic, [(b"fraud", v) for v in values])

    send(setup.events, [json.dumps(e).encode() for e in a + b + closer])

    def label(event_id: str) -> bytes:
        return encode_outcome(Outcome(event_id, "fraud", truth[event_id], None))

    kept_back = b[1]["event_id"]  # its label comes after the time to live
    order = [eid for eid in truth if eid != kept_back]
    rng.shuffle(order)
    dupes = order[:25]
    send(outcomes_topic, [label(eid) for eid in order + dupes])

    def quality() -> dict[int, dict[str, Any]]:
        got = [json.loads(v) for v in consume_all(bootstrap, quality_topic)]
        return {q["window_start_ms"]: q for q in got}  # the latest report of each window

    def complete() -> dict[int, dict[str, Any]] | None:
        q = quality()
        done = len(q) == 2 and sorted(r["labelled"] for r in q.values()) == [599, 600]
        return q if done else None

    final = wait_for(complete, 120, "both windows fully labelled", status=quality)
    qa, qb = final[t0], final[t0 + WINDOW]
    assert (qa["rows"], qa["labelled_share"], qa["quality"]["accuracy"]) == (600, 1.0, 1.0)
    wrong = sum(
        1
        for e in b
        if e["event_id"] != kept_back and truth[e["event_id"]] != float(e["prediction"] >= 0.5)
    )
    assert qb["quality"]["accuracy"] == (599 - wrong) / 599
    assert qb["quality"]["accuracy"] < 0.65
    assert qb["model_metrics"]["accuracy_drop"] == 0.9 - qb["quality"]["accuracy"]
    # accuracy_drop fires on window B only (window A got better than the reference)
    alerts = [json.loads(v) for v in consume_all(bootstrap, setup.alerts)]
    drops = [(x["state"], x["window_start_ms"]) for x in alerts if x["rule"] == "accuracy_drop"]
    assert drops == [("firing", t0 + WINDOW)]
    retrain = [json.loads(v) for v in consume_all(bootstrap, setup.retrain)]
    (event,) = [r for r in retrain if r["data"]["rule"] == "accuracy_drop"]
    assert event["data"]["window"]["start"] == qb["window_start"]

    # the far event moves event time 60 min past window B: its last label has expired
    send(setup.events, [json.dumps(e).encode() for e in far])
    wait_for(lambda: len(consume_all(bootstrap, setup.reports)) >= 3, 60, "the closer's window")
    send(
        outcomes_topic,
        [
            label(kept_back),
            label(a[0]["event_id"]),  # joined before: a duplicate
            encode_outcome(Outcome("no-such-event", "fraud", 1.0, None)),
            encode_outcome(Outcome("x", "ghost", 1.0, None)),
            b'{"schema":"driftline.outcome/v1","event_id":"late-1","model":"fraud","label":2}',
        ],
    )

    def reasons() -> list[str]:
        return sorted(json.loads(d)["reason"] for d in consume_all(bootstrap, setup.dlq))

    expected = sorted(
        ["duplicate"] * 26 + ["expired", "unknown_event", "unknown_model", "label_mismatch"]
    )
    wait_for(lambda: reasons() == expected, 60, "the dead letters", status=reasons)
    assert quality()[t0 + WINDOW]["labelled"] == 599  # the expired label changed nothing

    # replay of the same events and labels gives the same quality figures
    rows = [{"ts": e["ts"], "model": "fraud", "model_version": e["model_version"],
             "event_id": e["event_id"], **e["features"], "prediction": e["prediction"],
             "latency_ms": e["latency_ms"], "status": e["status"],
             "label": None if e["event_id"] == kept_back else truth.get(e["event_id"])}
            for e in a + b + closer]  # fmt: skip
    backtest = replay(
        iter([pl.DataFrame(rows)]),
        WindowSpec(WINDOW, None, 60_000),
        lambda m, v: profile,
        default_rules(),
    )
    replayed = {q["window_start_ms"]: q for q in backtest.quality}
    for start in (t0, t0 + WINDOW):
        for key in ("rows", "labelled", "quality", "model_metrics", "report_id"):
            assert replayed[start][key] == final[start][key], key
    assert sorted(a["alert_id"] for a in backtest.alerts if a["rule"] == "accuracy_drop") == sorted(
        x["alert_id"] for x in alerts if x["rule"] == "accuracy_drop"
    )


def test_pending_predictions_follow_their_partition_to_another_worker(
    setup: Setup, start_worker: Callable[..., Popen[bytes]]
) -> None:
    from .conftest import group_state

    bootstrap = setup.kafka.bootstrap
    outcomes_topic, quality_topic = f"{setup.prefix}.outcomes", f"{setup.prefix}.quality"
    config = yaml.safe_load(setup.config_path.read_text())
    config["kafka"].update(outcomes_topic=outcomes_topic, quality_topic=quality_topic)
    config["outcomes"] = {"ttl": "30m", "wait": "1s"}
    config["window"]["idle_close"] = "10m"
    setup.config_path.write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(21)
    t0 = base_ts()
    a = window_events(t0, 400, rng)
    closer = window_events(t0 + 2 * WINDOW + 90_000, 1, rng)
    closer[0]["event_id"] = "closer"

    def send(topic: str, values: list[bytes]) -> None:
        produce(bootstrap, topic, [(b"fraud", v) for v in values])

    # the first worker (a data dir of its own) sees the predictions, then is killed
    first = start_worker("w1")
    send(setup.events, [json.dumps(e).encode() for e in a])
    group = config["kafka"]["group"]
    wait_for(lambda: group_state(bootstrap, group, setup.events)[1] == 0, 90, "events consumed")
    first.kill()
    first.wait(timeout=30)
    # the second worker, with an empty store, gets the labels
    start_worker("w2")
    labels = [
        encode_outcome(Outcome(e["event_id"], "fraud", float(e["prediction"] >= 0.5), None))
        for e in a
    ]
    send(outcomes_topic, labels)
    send(setup.events, [json.dumps(e).encode() for e in closer])

    def quality() -> dict[str, Any] | None:
        got = [json.loads(v) for v in consume_all(bootstrap, quality_topic)]
        done = [q for q in got if q["window_start_ms"] == t0 and q["labelled"] == 400]
        return done[0] if done else None

    def dead() -> list[str]:
        return [json.loads(d)["reason"] for d in consume_all(bootstrap, setup.dlq)]

    q = wait_for(
        quality,
        120,
        "window A fully labelled on the second worker",
        status=lambda: Counter(dead()),
    )
    assert (q["rows"], q["labelled_share"], q["quality"]["accuracy"]) == (400, 1.0, 1.0)
    assert dead() == []
