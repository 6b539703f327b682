"""The README's first command, end to end: `driftline demo` must turn injected drift into
a retrain event that the webhook receiver verified, and Ctrl-C must leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.localkafka import default_home

from .conftest import wait_for


@pytest.fixture
def demo() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(state: Path) -> subprocess.Popen[str]:
        procs.append(_demo(state))
        return procs[-1]

    yield start
    for proc in procs:  # a failed assertion must not leave a demo running
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _demo(state: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "TOPIC_"))}
    env["NO_COLOR"] = "1"
    return subprocess.Popen(
        [
            sys.executable, "-m", "stream.cli", "demo", "--state-dir", str(state),
            "--kafka-home", str(default_home()), "--timeout", "240", *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip


def leftovers(state: Path) -> list[str]:
    """Processes started by a demo whose state lives in ``state`` (the broker's instance
    is named after the demo)."""
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    )
    kafka_dir = str(default_home() / "demo")
    return [
        line.strip()
        for line in ps.stdout.splitlines()
        if (str(state) in line or kafka_dir in line) and "ps -eo" not in line
    ]


def test_the_demo_catches_the_drift_and_delivers_a_verified_retrain_event(
    tmp_path: Path, demo: Callable[..., subprocess.Popen[str]]
) -> None:
    state = tmp_path / "demo"
    proc = demo(state)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    lines = out.splitlines()
    windows = [line for line in lines if line.startswith("window ")]
    assert len(windows) >= 6, out
    assert any("alert firing: feature_psi on amount" in line for line in lines), out
    verified = [line for line in lines if "signature verified: models:/fraud/1" in line]
    assert verified, out
    assert "drift caught and a verified retrain request delivered" in out
    # the windows before the drift are quiet, the drifted ones flag amount
    steady = [w for w in windows[1:] if "amount PSI  0.0" in w]
    assert len(steady) >= 2, out
    assert leftovers(state) == []


def test_ctrl_c_stops_every_process_of_the_demo(
    tmp_path: Path, demo: Callable[..., subprocess.Popen[str]]
) -> None:
    state = tmp_path / "demo"
    proc = demo(state)
    assert proc.stdout is not None
    seen: list[str] = []
    # interrupt once the serving app is up: broker, worker, dispatcher, receiver and app run
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("5/5 traffic"):
            break
    else:
        raise AssertionError("".join(seen))
    assert len(leftovers(state)) >= 5, leftovers(state)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted: stopping everything" in rest
    wait_for(
        lambda: leftovers(state) == [], 30, "no demo process left", status=lambda: leftovers(state)
    )
    assert time.monotonic() - started < 60
