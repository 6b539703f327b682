"""The Grafana dashboard and the exported alert rules against a real Prometheus (Debian's
binary) scraping a live worker, dispatcher and serving hook, fed through the real broker
(predictions, then their labels as outcomes): every expression must return something,
with the dashboard's variables set to real values."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from serving_hooks.publisher import PublisherConfig, SyncPublisher

from .conftest import REPO, Setup, free_port, produce, received, wait_for
from .test_webhooks import cli
from .test_worker import event, reports

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "driftline.json"
DEPLOY_PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
WINDOW_MS = 10_000
#: the dashboard's variables, set as a user would pick them
VARIABLES = {"model": "fraud", "feature": "amount"}
#: Grafana's own interval variables, as Grafana expands them for a short time range
BUILTINS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m"}
#: metrics a panel already shows but the code does not export yet (none at the moment).
#: Each is checked to be absent: once the metric exists this test fails until the entry
#: goes, and from then on its expressions are checked like every other one.
PENDING: dict[str, str] = {}
#: the reference quality put in the test's profile: accuracy_drop is judged against it
REFERENCE_QUALITY: dict[str, Any] = {
    "task": "binary",
    "threshold": 0.5,
    "accuracy": 0.9,
    "auc": 0.95,
}


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only


class Prometheus:
    """Debian's Prometheus on 127.0.0.1 with a temporary configuration and storage."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        assert Path(binary).exists(), "no prometheus binary: apt-get install prometheus"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with self.log.open("wb") as out:
            self.proc = Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str | list[str]) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with _opener().open(url, timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # bad queries answer 400 with the reason
            raise AssertionError(f"{path} {params}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def ready(self) -> bool:
        try:
            with _opener().open(f"{self.base}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def targets_down(self) -> list[str]:
        active = self.get("/api/v1/targets")["activeTargets"]
        if not active:
            return ["no targets yet"]
        return [
            f"{t['labels']['job']}: {t['health']} {t['lastError']}"
            for t in active
            if t["health"] != "up"
        ]

    def log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dashboard_expressions(node: Any) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target in the dashboard, rows included."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for target in node.get("targets", []):
            found.append((node.get("title", "?"), target["expr"]))
        for child in node.get("panels", []):
            found.extend(dashboard_expressions(child))
    return found


def substitute(expr: str) -> str:
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name, value in VARIABLES.items():
        expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, expr)
    assert "$" not in expr, f"a variable this test does not know is left in {expr!r}"
    return expr


def prometheus_config(deploy: dict[str, Any], local: dict[str, str], rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its jobs pointed at the local processes and
    1 s intervals."""
    jobs = []
    wanted = dict(local)
    for job in deploy["scrape_configs"]:
        name = job["job_name"]
        assert name in wanted, f"{DEPLOY_PROMETHEUS} scrapes {name}, which this test does not run"
        kept = {
            k: v for k, v in job.items() if not k.endswith("_sd_configs") and k != "static_configs"
        }
        kept.pop("scrape_interval", None)
        kept.pop("scrape_timeout", None)
        jobs.append({**kept, "static_configs": [{"targets": [wanted.pop(name)]}]})
    assert not wanted, f"{DEPLOY_PROMETHEUS} has no scrape job for {sorted(wanted)}"
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": jobs,
    }


@contextlib.contextmanager
def serving_hook(
    bootstrap: str, topic: str, outcomes_topic: str
) -> Iterator[tuple[SyncPublisher, int]]:
    """A serving pod's hook: a publisher whose registry is served over HTTP."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    config = PublisherConfig(
        bootstrap=bootstrap, topic=topic, outcomes_topic=outcomes_topic, linger_ms=20
    )
    publisher = SyncPublisher(config, registry=registry)
    try:
        yield publisher, port
    finally:
        publisher.close()
        server.shutdown()
        server.server_close()
        thread.join(10)


def window(start: int, n: int, rng: np.random.Generator, bad: bool) -> list[dict[str, Any]]:
    """n events across one window; a bad one has a shifted `amount`, 5% slow requests
    (450 ms) and 5% errors: each shipped rule that is exported breaches."""
    out = []
    for i in range(n):
        over: dict[str, Any] = {}
        if bad and i % 20 == 0:
            over["latency_ms"] = 450.0
        if bad and i % 20 == 1:
            over["status"] = "error"
        out.append(event(start + i * (WINDOW_MS // n), i, rng, 0.8 if bad else 0.0, **over))
    return out


def labels(events: list[dict[str, Any]], flip: bool) -> list[tuple[str, float]]:
    """(event_id, label) for 9 of every 10 events, in event order: the label agrees with
    the prediction at the 0.5 threshold, except every 4th one when ``flip`` (1350 of 1500
    labelled, 375 of them wrong: accuracy 0.72, and about that in every run of 100 labels
    in this order, so a window breaches the reference's 0.9 - 0.05 from its 100th label
    on and fires exactly once)."""
    out = []
    for i, e in enumerate(events):
        if i % 10 == 9:
            continue  # no label (yet): the labelled share is 0.9
        label = float(e["prediction"] >= 0.5)
        if flip and i % 4 == 0:
            label = 1.0 - label
        out.append((e["event_id"], label))
    return out


def test_every_dashboard_and_alert_expression_returns_data(
    setup: Setup, start_worker: Callable[..., Popen[bytes]], tmp_path: Path
) -> None:
    bootstrap = setup.kafka.bootstrap
    # short event-time windows so that the rules' `for` (windows - 1) x size is 10 s
    config = yaml.safe_load(setup.config_path.read_text())
    config["window"] = {"size": "10s", "lateness": "0s", "idle_close": "3s"}
    outcomes_topic = f"{setup.prefix}.outcomes"
    config["kafka"].update(outcomes_topic=outcomes_topic, quality_topic=f"{setup.prefix}.quality")
    config["outcomes"] = {"ttl": "30m", "wait": "30s"}
    setup.config_path.write_text(yaml.safe_dump(config))
    # the reference quality the windows' accuracy is compared with (accuracy_drop)
    setup.profile.quality = dict(REFERENCE_QUALITY)
    setup.profile.save(config["models"][0]["reference"])
    rules_path = tmp_path / "driftline-rules.yml"
    subprocess.run(
        [sys.executable, "-m", "stream.cli", "rules", "export-prometheus",
         "--window", "10s", "--out", str(rules_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    rules = [r for g in yaml.safe_load(rules_path.read_text())["groups"] for r in g["rules"]]
    assert rules, "the export wrote no alert rules"

    worker_port, dispatcher_port, receiver_port = free_port(), free_port(), free_port()
    worker = start_worker(metrics_port=worker_port)
    with contextlib.ExitStack() as stack:
        receiver = cli(
            "receiver", "--port", str(receiver_port), log=tmp_path / "receiver.log"
        )  # fmt: skip
        stack.callback(_stop, receiver)
        dispatcher = cli(
            "dispatcher", "--bootstrap", bootstrap,
            "--url", f"http://127.0.0.1:{receiver_port}/retrain", "--topic", setup.retrain,
            "--dlq-topic", f"{setup.retrain}.dlq", "--group", f"{setup.prefix}-dispatcher",
            "--metrics-port", str(dispatcher_port), log=tmp_path / "dispatcher.log",
        )  # fmt: skip
        stack.callback(_stop, dispatcher)
        publisher, hook_port = stack.enter_context(
            serving_hook(bootstrap, setup.events, outcomes_topic)
        )
        local = {
            "driftline-worker": f"127.0.0.1:{worker_port}",
            "driftline-dispatcher": f"127.0.0.1:{dispatcher_port}",
            "serving-hooks": f"127.0.0.1:{hook_port}",
        }
        deploy = yaml.safe_load(DEPLOY_PROMETHEUS.read_text())
        prom = Prometheus(prometheus_config(deploy, local, rules_path), tmp_path)
        stack.callback(prom.stop)
        wait_for(prom.ready, 60, "Prometheus ready", status=prom.log_tail)
        wait_for(
            lambda: not prom.targets_down(), 60, "every target scraped", status=prom.targets_down
        )

        # steady, bad, late events for the closed first window, bad; and one broken message
        rng = np.random.default_rng(8)
        now = int(time.time() * 1000) - 2 * 3_600_000
        t0 = now - now % WINDOW_MS
        late = [event(t0 + i, 10_000 + i, rng) for i in range(20)]
        steady = window(t0, 1_500, rng, bad=False)
        bad = [window(t0 + k * WINDOW_MS, 1_500, rng, bad=True) for k in (1, 2)]
        events = [*steady, *bad[0], *late, *bad[1]]
        for e in events:
            publisher.record(
                e["model"], e["model_version"], e["features"], prediction=e["prediction"],
                latency_ms=e["latency_ms"], status=e["status"], event_id=e["event_id"],
                ts_ms=e["ts"],
            )  # fmt: skip
        produce(bootstrap, setup.events, [(b"fraud", b"{not json")])
        assert [r["rows"] for r in reports(setup, 3)] == [1_500] * 3
        assert worker.poll() is None

        # then the labels, through the hook: the steady window's agree with the predictions,
        # the bad windows' accuracy drops below the reference's. Every window is closed and
        # each label's prediction is in, so every one joins, in order: the last quality
        # report (the gauges' values) is the last bad window's.
        outcomes = [
            *labels(steady, flip=False),
            *labels(bad[0], flip=True),
            *labels(bad[1], flip=True),
        ]
        for event_id, label in outcomes:
            publisher.record_outcome("fraud", event_id, label)
        joined = 'sum(driftline_outcomes_total{result="joined"})'
        results = "sum by (result) (driftline_outcomes_total)"
        wait_for(
            lambda: [float(s["value"][1]) for s in prom.query(joined)] == [len(outcomes)],
            90, f"{len(outcomes)} outcomes joined", status=lambda: prom.query(results),
        )  # fmt: skip
        assert {s["metric"]["result"] for s in prom.query(results)} == {"joined"}

        def quality() -> dict[str, float]:
            got = prom.query('driftline_quality{model="fraud", model_version="3"}')
            return {s["metric"]["figure"]: float(s["value"][1]) for s in got}

        predicted = {e["event_id"]: float(e["prediction"] >= 0.5) for e in bad[1]}
        last = labels(bad[1], flip=True)
        accuracy = sum(predicted[event_id] == label for event_id, label in last) / len(last)
        expected = {
            "labelled": float(len(last)),
            "labelled_share": len(last) / len(bad[1]),
            "accuracy": accuracy,
            "accuracy_drop": REFERENCE_QUALITY["accuracy"] - accuracy,
        }
        assert expected["accuracy_drop"] > 0.1  # well past the rule's 0.05
        wait_for(
            lambda: all(abs(quality().get(k, -1.0) - v) < 1e-9 for k, v in expected.items()),
            30, f"the last bad window's quality {expected} scraped", status=quality,
        )  # fmt: skip

        # Alert rules are threshold comparisons, empty while nothing breaches. Rather than
        # strip the comparisons, the events and labels above make every exported rule
        # breach, so the whole expressions (thresholds, `unless`, the min-rows and
        # min-labelled joins) are what is checked, and the dashboard's "Alerts firing"
        # panel has firing alerts to show.
        names = {r["alert"] for r in rules}

        def firing() -> set[str]:
            return {s["metric"]["alertname"] for s in prom.query('ALERTS{alertstate="firing"}')}

        wait_for(
            lambda: names <= firing(), 90, f"alerts {sorted(names)} firing",
            status=lambda: prom.query("ALERTS"),
        )  # fmt: skip
        # the four retrain events (PSI, KS; accuracy_drop of each bad window) reached the
        # receiver, and the dispatcher says so
        wait_for(lambda: received(receiver_port) == 4, 60, "4 retrain events at the receiver")
        delivered = 'driftline_dispatcher_events_total{outcome="delivered"}'
        wait_for(
            lambda: [float(s["value"][1]) for s in prom.query(delivered)] == [4.0],
            30, "4 deliveries scraped from the dispatcher", status=lambda: prom.query(delivered),
        )  # fmt: skip

        dashboard = json.loads(DASHBOARD.read_text())
        exported = set(prom.get("/api/v1/label/__name__/values"))
        empty: list[str] = []
        for var in dashboard["templating"]["list"]:
            if var["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert match, f"variable {var['name']}: {var['definition']!r} is not label_values()"
            values = prom.get(
                f"/api/v1/label/{match[2]}/values", **{"match[]": [substitute(match[1])]}
            )
            if VARIABLES[var["name"]] not in values:
                empty.append(f"variable {var['name']}: {var['definition']} gave {values}")
        checked = 0
        for title, expr in dashboard_expressions(dashboard):
            pending = [m for m in PENDING if re.search(rf"\b{m}\b", expr)]
            if pending:
                assert not set(pending) & exported, (
                    f"{pending} is exported now: remove it from PENDING so that panel "
                    f"{title!r} is checked"
                )
                continue
            checked += 1
            if not prom.query(substitute(expr)):
                empty.append(f"panel {title!r}: {substitute(expr)}")
        for rule in rules:
            checked += 1
            if not prom.query(rule["expr"]):
                empty.append(f"alert {rule['alert']}: {rule['expr']}")
        assert not empty, "empty results:\n" + "\n".join(empty)
        assert checked >= len(rules) + 30


def _stop(proc: Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
