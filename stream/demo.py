"""The demo: the whole pipeline on this machine, from serving to a verified retrain request.

    driftline demo [--keep-running] [--state-dir .driftline/demo]

1. a local Kafka broker (KRaft, from Maven Central jars on first use);
2. an MLflow store (SQLite) with model ``fraud`` trained on synthetic transactions,
   registered as version 1, and its driftline reference logged with that version;
3. a stream worker whose monitor config takes the references from the registry, the
   webhook dispatcher and the reference receiver (signed webhooks, shared secret);
4. the example serving app (FastAPI + the MLflow model behind the monitored wrapper),
   publishing every prediction to Kafka;
5. traffic to the app: simulated event times an hour long in a few seconds, steady at
   first, then with larger amounts and another country mix.

The terminal shows each closed window's per-feature figures, the alerts, the retrain
event and its arrival at the receiver (accepted only with a valid signature). Then
everything stops (Ctrl-C stops it at any time, leaving no process behind), or with
``--keep-running`` stays up with the URLs of the metrics (and of a local Prometheus
scraping them when Debian's ``prometheus`` is installed).

Exit status 0 means the injected drift produced a retrain event that the receiver
verified; 1 means it did not within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stream.localkafka import LocalKafka

WINDOW = "10m"
EVENTS_PER_WINDOW = 400
WINDOWS = 7
DRIFT_FROM_WINDOW = 4  # windows 4.. of 7 carry the drift
INTERVAL_MS = 600_000 // EVENTS_PER_WINDOW
PSI_LINE = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


class _Colour:
    on = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None

    @classmethod
    def wrap(cls, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if cls.on else text


def red(text: str) -> str:
    return _Colour.wrap("1;31", text)


def green(text: str) -> str:
    return _Colour.wrap("1;32", text)


def bold(text: str) -> str:
    return _Colour.wrap("1", text)


def dim(text: str) -> str:
    return _Colour.wrap("2", text)


@dataclass
class Stack:
    """The demo's processes; stopped in reverse order, each with SIGTERM then SIGKILL."""

    state: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    kafka: LocalKafka | None = None

    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        out = self.log(name).open("ab")
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the others
        )
        out.close()
        self.procs.append((name, proc))

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise DemoError(
                    f"{name} exited with {proc.returncode}; see {self.log(name)}:\n"
                    + _tail(self.log(name))
                )

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.kafka is not None:
            self.kafka.down()
            self.kafka = None


class DemoError(RuntimeError):
    pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(what: str, predicate: Any, timeout: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _received(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(json.loads(r.read())["received"])
    except (OSError, ValueError, KeyError):
        return -1


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _driftline(*args: str) -> list[str]:
    return _python("-m", "stream.cli", *args)


def _run(stack: Stack, name: str, argv: Sequence[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        list(argv),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    stack.log(name).write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise DemoError(f"{name} failed ({done.returncode}):\n{_tail(stack.log(name))}")
    return done.stdout


def _figures(report: dict[str, Any]) -> str:
    parts = []
    for name, f in sorted(report["features"].items()):
        psi = f.get("psi") or 0.0
        text = f"{name} PSI {psi:5.2f}"
        if f.get("ks") is not None:
            text += f" KS {f['ks']:.2f}"
        parts.append(red(text) if psi > PSI_LINE else text)
    return " | ".join(parts)


async def _watch(
    bootstrap: str,
    topics: dict[str, str],
    receiver_url: str,
    seen_file: Path,
    deadline: float,
    stack: Stack,
) -> bool:
    """Prints reports, alerts and retrain events as they arrive; True once the receiver
    has accepted (verified) a retrain event that the worker raised."""
    from aiokafka import AIOKafkaConsumer

    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    consumer = AIOKafkaConsumer(
        topics["reports"],
        topics["alerts"],
        topics["retrain"],
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    raised: dict[str, dict[str, Any]] = {}
    # the three topics are fetched independently: hold records a moment and print them
    # in window order, each report before its alerts and retrain events
    pending: list[tuple[tuple[str, int], float, str, dict[str, Any]]] = []
    order = {topics["reports"]: 0, topics["alerts"]: 1, topics["retrain"]: 2}
    try:
        while time.monotonic() < deadline:
            stack.check()
            batch = await consumer.getmany(timeout_ms=300)
            now = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    value = json.loads(record.value or b"{}")
                    start = (
                        value["data"]["window"]["start"]
                        if tp.topic == topics["retrain"]
                        else value["window_start"]
                    )
                    pending.append(((start[:19], order[tp.topic]), now, tp.topic, value))
            pending.sort(key=lambda p: p[0])
            while pending and now - max(p[1] for p in pending) > 0.8:
                _, _, topic, value = pending.pop(0)
                if topic == topics["reports"]:
                    _say(
                        f"window {value['window_start'][11:16]}-{value['window_end'][11:16]}"
                        f"  {value['model']} v{value['model_version']}"
                        f"  rows {value['rows']:4d}  {_figures(value)}"
                    )
                elif topic == topics["alerts"]:
                    line = (
                        f"  alert {value['state']}: {value['rule']} on "
                        f"{value.get('feature') or value['model']} "
                        f"({value['metric']} {value['value']:.3f} vs {value['threshold']})"
                    )
                    _say(red(line) if value["state"] == "firing" else green(line))
                else:
                    raised[value["id"]] = value
                    data = value["data"]
                    _say(
                        bold(
                            f"  retrain requested: {data['model_uri'] or data['model']} "
                            f"rule {data['rule']} ({value['id'][:12]}…)"
                        )
                    )
            accepted = set(seen_file.read_text().split()) if seen_file.exists() else set()
            verified = sorted(accepted & raised.keys())
            if verified and _received(receiver_url) >= len(verified):
                for event_id in verified:
                    data = raised[event_id]["data"]
                    _say(
                        green(
                            f"  retrain event {event_id[:12]}… received by the webhook "
                            f"receiver, signature verified: {data['model_uri']} "
                            f"(run {data['run_id']}, reference {data['reference']}, "
                            f"window {data['window']['start']}..{data['window']['end']})"
                        )
                    )
                return True
    finally:
        await consumer.stop()
    return False


def run(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    if state.exists() and not args.reuse:
        shutil.rmtree(state)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(state)

    def interrupted(signum: int, _: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        return _demo(args, stack, started)
    except KeyboardInterrupt:
        _say("\ninterrupted: stopping everything")
        return 130
    except DemoError as exc:
        _say(red(f"demo failed: {exc}"))
        return 1
    finally:
        stack.stop()
        _say(dim(f"stopped; logs in {state / 'logs'}"))


def _demo(args: argparse.Namespace, stack: Stack, started: float) -> int:
    state = stack.state
    prefix = "driftline"
    topics = {
        "events": f"{prefix}.events",
        "reports": f"{prefix}.reports",
        "alerts": f"{prefix}.alerts",
        "retrain": f"{prefix}.retrain",
    }
    mlflow_uri = f"sqlite:///{state / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": mlflow_uri, "DRIFTLINE_WEBHOOK_SECRET": secrets.token_hex(32)}
    # Faust reads settings from the environment over the code's own
    for key in [k for k in os.environ if k.startswith(("BROKER_", "TOPIC_", "APP_"))]:
        del os.environ[key]

    _say(bold("1/5 local Kafka broker"))
    kafka_port = args.kafka_port or _free_port()
    stack.kafka = LocalKafka(
        home=Path(args.kafka_home).resolve(),
        name="demo",
        port=kafka_port,
        controller_port=_free_port(),
        heap="512m",
    )
    stack.kafka.down()  # a broker left by an earlier demo that was killed
    stack.kafka.wipe()
    stack.kafka.up()
    bootstrap = stack.kafka.bootstrap
    _say(f"    {bootstrap} ready")

    _say(bold("2/5 MLflow: train, register and profile model fraud"))
    app_state = state / "app"
    trained = _run(
        stack,
        "train",
        _python(
            "-m", "serving_hooks.example_app", "--train-only",
            "--state-dir", str(app_state), "--mlflow-uri", mlflow_uri,
        ),
        env,
    )  # fmt: skip
    _say(dim("    " + trained.strip().splitlines()[-1] if trained.strip() else "    trained"))
    logged = _run(
        stack,
        "reference",
        _driftline(
            "reference", "build", str(app_state / "train.parquet"),
            "--mlflow-model", "fraud", "--version", "1",
        ),
        env,
    )  # fmt: skip
    _say(f"    {logged.strip().splitlines()[-1]}")

    _say(bold("3/5 worker, webhook dispatcher, receiver"))
    metrics_port = args.metrics_port or _free_port()
    receiver_port = _free_port()
    app_port = args.app_port or _free_port()
    config = {
        "window": {"size": WINDOW, "lateness": "30s", "idle_close": "4s"},
        "kafka": {
            "bootstrap": bootstrap,
            "group": f"{prefix}-worker",
            "partitions": 4,
            "batch_size": 2000,
            "batch_within": 0.2,
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "mlflow": {"tracking_uri": mlflow_uri, "retry": "2s"},
        "models": [{"name": "fraud", "mlflow": {"name": "fraud"}}],
    }
    config_path = state / "monitor.yaml"
    config_path.write_text(yaml.safe_dump(config))
    seen = state / "receiver-seen"
    stack.start(
        "receiver",
        _driftline("receiver", "--port", str(receiver_port), "--seen-file", str(seen)),
        env,
    )
    stack.start("worker", _driftline("worker", "--config", str(config_path)), env)
    stack.start(
        "dispatcher",
        _driftline(
            "dispatcher", "--bootstrap", bootstrap,
            "--url", f"http://127.0.0.1:{receiver_port}/retrain",
            "--topic", topics["retrain"], "--group", f"{prefix}-dispatcher",
        ),
        env,
    )  # fmt: skip
    receiver_url = f"http://127.0.0.1:{receiver_port}/healthz"
    _wait("the receiver", lambda: _http_ok(receiver_url), 60, stack)
    _wait(
        "the worker's metrics",
        lambda: _http_ok(f"http://127.0.0.1:{metrics_port}/metrics"),
        120,
        stack,
    )
    _say(f"    worker metrics http://127.0.0.1:{metrics_port}/metrics")

    _say(bold("4/5 example serving app (FastAPI + the registered model)"))
    stack.start(
        "app",
        _python(
            "-m", "serving_hooks.example_app", "--bootstrap", bootstrap,
            "--topic", topics["events"], "--state-dir", str(app_state),
            "--mlflow-uri", mlflow_uri, "--port", str(app_port),
        ),
        env,
    )  # fmt: skip
    app_url = f"http://127.0.0.1:{app_port}"
    _wait("the serving app", lambda: _http_ok(f"{app_url}/healthz"), 120, stack)
    _say(f"    serving {app_url}/predict, hook metrics {app_url}/metrics")

    total = EVENTS_PER_WINDOW * WINDOWS
    drift_after = EVENTS_PER_WINDOW * (DRIFT_FROM_WINDOW - 1)
    _say(
        bold(
            f"5/5 traffic: {total} predictions over {WINDOWS} windows of {WINDOW} (event "
            f"time); drift from window {DRIFT_FROM_WINDOW} on"
        )
    )
    stack.start(
        "traffic",
        _python(
            "-m", "serving_hooks.example_app", "--traffic", str(total),
            "--drift-after", str(drift_after), "--url", app_url, "--batch", "20",
            "--sim-interval-ms", str(INTERVAL_MS), "--seed", "7",
        ),
        env,
    )  # fmt: skip
    traffic = stack.procs[-1][1]
    stack.procs.pop()  # it exits when done: not a failure for check()
    deadline = time.monotonic() + args.timeout
    ok = asyncio.run(_watch(bootstrap, topics, receiver_url, seen, deadline, stack))
    traffic.wait(timeout=60)
    elapsed = time.monotonic() - started
    if not ok:
        _say(red(f"no verified retrain event within {args.timeout:.0f} s"))
        return 1
    _say(green(bold(f"drift caught and a verified retrain request delivered in {elapsed:.0f} s")))
    if args.keep_running:
        _keep_running(stack, metrics_port, app_url)
    return 0


def _keep_running(stack: Stack, metrics_port: int, app_url: str) -> None:
    targets = [f"127.0.0.1:{metrics_port}", app_url.removeprefix("http://")]
    prometheus = shutil.which("prometheus")
    lines = [f"worker metrics: http://127.0.0.1:{metrics_port}/metrics",
             f"serving app:    {app_url}/predict (hook metrics {app_url}/metrics)"]  # fmt: skip
    if prometheus:
        port = _free_port()
        cfg = stack.state / "prometheus.yml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "5s"},
                    "scrape_configs": [
                        {"job_name": "driftline", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        stack.start(
            "prometheus",
            [
                prometheus, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={stack.state / 'prometheus'}",
            ],
        )  # fmt: skip
        lines.append(f"prometheus:     http://127.0.0.1:{port}/graph")
    _say("\n".join(["", *lines, "running until Ctrl-C"]))
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            stack.check()
            time.sleep(1)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--state-dir", default=".driftline/demo", help="logs, stores, config")
    p.add_argument("--kafka-home", default=".kafka", help="broker jars and data")
    p.add_argument("--kafka-port", type=int, default=0, help="0 = a free port")
    p.add_argument("--metrics-port", type=int, default=0, help="worker metrics (0 = free port)")
    p.add_argument("--app-port", type=int, default=0, help="serving app (0 = free port)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds for the retrain event")
    p.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    p.add_argument("--reuse", action="store_true", help="keep the state dir of an earlier run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="driftline demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return run(add_arguments(p).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
