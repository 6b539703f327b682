"""The dispatcher on the real broker delivering to the reference receiver (a real server):
receiver down for a while, dispatcher killed mid-retry and restarted, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from .conftest import Setup, consume_all, free_port, group_state, produce, received, wait_for

SECRET = "integration-secret-0123456789"


def cli(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DRIFTLINE_WEBHOOK_SECRET": SECRET}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stream.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_every_event_arrives_once_despite_outages(setup: Setup, tmp_path: Path) -> None:
    bootstrap = setup.kafka.bootstrap
    ids = [f"ev-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    events = [
        {"specversion": "1.0", "type": "io.driftline.retrain.requested", "id": i,
         "source": "test", "subject": "fraud", "data": {"model": "fraud"}}
        for i in ids
    ]  # fmt: skip
    produce(bootstrap, setup.retrain, [(b"fraud", json.dumps(e).encode()) for e in events])
    port = free_port()
    group = f"{setup.prefix}-dispatcher"
    dispatch_args = (
        "dispatcher", "--bootstrap", bootstrap, "--url", f"http://127.0.0.1:{port}/retrain",
        "--topic", setup.retrain, "--dlq-topic", f"{setup.retrain}.dlq", "--group", group,
        "--base-delay", "0.2", "--max-delay", "1", "--max-attempts", "1000",
    )  # fmt: skip
    log = tmp_path / "dispatcher.log"
    dispatcher = cli(*dispatch_args, log=log)
    receiver = None
    try:
        # the receiver is down: the dispatcher retries
        wait_for(lambda: log.exists() and log.read_text().count("failed") >= 3, 60, "retries")
        dispatcher.send_signal(signal.SIGKILL)  # killed mid-retry
        dispatcher.wait()
        dispatcher = cli(*dispatch_args, log=log)
        receiver = cli(
            "receiver", "--port", str(port), "--seen-file", str(tmp_path / "seen"),
            log=tmp_path / "receiver.log",
        )  # fmt: skip
        wait_for(lambda: received(port) == 5, 90, "5 events at the receiver")
        wait_for(lambda: group_state(bootstrap, group, setup.retrain)[1] == 0, 30, "commits")
        assert received(port) == 5  # nothing twice
        assert sorted((tmp_path / "seen").read_text().split()) == sorted(ids)
        assert consume_all(bootstrap, f"{setup.retrain}.dlq") == []
        assert SECRET not in log.read_text()
        assert SECRET not in (tmp_path / "receiver.log").read_text()
    finally:
        for proc in (dispatcher, receiver):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_an_event_the_receiver_refuses_goes_to_the_dlq(setup: Setup, tmp_path: Path) -> None:
    bootstrap = setup.kafka.bootstrap
    event = {"specversion": "1.0", "type": "io.driftline.retrain.requested", "id": "ev-refused",
             "source": "test", "subject": "fraud", "data": {}}  # fmt: skip
    produce(bootstrap, setup.retrain, [(b"fraud", json.dumps(event).encode())])
    port = free_port()
    # the receiver holds another secret: every signature fails with 401, which no retry fixes
    receiver = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "receiver", "--port", str(port)],
        env={**os.environ, "DRIFTLINE_WEBHOOK_SECRET": "not-the-same-secret"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    group = f"{setup.prefix}-dispatcher"
    dispatcher = cli(
        "dispatcher", "--bootstrap", bootstrap, "--url", f"http://127.0.0.1:{port}/retrain",
        "--topic", setup.retrain, "--dlq-topic", f"{setup.retrain}.dlq", "--group", group,
        "--base-delay", "0.1", "--max-attempts", "3", log=tmp_path / "dispatcher.log",
    )  # fmt: skip
    try:
        wait_for(lambda: received(port) == 0, 30, "the receiver up")
        dead = wait_for(lambda: consume_all(bootstrap, f"{setup.retrain}.dlq"), 60, "a dead letter")
        (record,) = [json.loads(d) for d in dead]
        assert record["reason"] == "HTTP 401"
        assert json.loads(record["event"])["id"] == "ev-refused"
        wait_for(lambda: group_state(bootstrap, group, setup.retrain)[1] == 0, 30, "the commit")
    finally:
        for proc in (dispatcher, receiver):
            proc.terminate()
            proc.wait(timeout=30)
