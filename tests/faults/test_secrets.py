"""The webhook secret never leaks: a worker (at debug log level), dispatchers and
receivers (at info, their most verbose) run with it in their environment, through
successful deliveries and every failing kind (refused signature, unreachable URL,
failing command, malformed event, forged request); their logs, the dead letters, the
HTTP answers, the metrics pages and the command lines must not contain it, in clear,
base64 or hex."""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from subprocess import Popen

import pytest

from alerts.signing import SIGNATURE, signed_headers
from tests.integration.conftest import Setup, consume_all, free_port, produce, received, wait_for

from .conftest import Processes, record_figures
from .test_kill_restart import traffic


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode(errors="replace"))
    except OSError:
        return ""


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_the_webhook_secret_appears_in_no_log_message_or_output(
    setup: Setup,
    start_worker: Callable[..., Popen[bytes]],
    processes: Processes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = f"dl-{secrets.token_urlsafe(24)}"
    forms = {
        "clear": secret,
        "base64": base64.b64encode(secret.encode()).decode(),
        "hex": secret.encode().hex(),
    }
    env = {"DRIFTLINE_WEBHOOK_SECRET": secret}
    bootstrap = setup.kafka.bootstrap
    logs = tmp_path / "logs"
    logs.mkdir()

    # receivers: one that accepts, one that holds another secret (401 on every POST),
    # one whose command fails after printing its environment (500)
    good, wrong, failing = free_port(), free_port(), free_port()
    dump_env = "import os, sys; sys.stderr.write(repr(dict(os.environ))); sys.exit(3)"
    processes.cli(
        "receiver", "--port", str(good), "--seen-file", str(tmp_path / "seen"),
        log=logs / "receiver-good.log", env=env,
    )  # fmt: skip
    processes.cli(
        "receiver", "--port", str(wrong),
        log=logs / "receiver-wrong.log", env={"DRIFTLINE_WEBHOOK_SECRET": "another-secret"},
    )  # fmt: skip
    processes.cli(
        "receiver", "--port", str(failing), "--command", sys.executable, "-c", dump_env,
        log=logs / "receiver-failing.log", env=env,
    )  # fmt: skip
    for port in (good, wrong, failing):
        wait_for(partial(up, port), 30, f"the receiver on {port}")

    # dispatchers: every URL reachable, a refusing one, a failing one, one nobody serves
    dead = free_port()
    metrics_port = free_port()
    targets = {
        "good": [f"http://127.0.0.1:{good}/retrain"],
        "refused": [f"http://127.0.0.1:{good}/retrain", f"http://127.0.0.1:{wrong}/retrain"],
        "failing": [f"http://127.0.0.1:{failing}/retrain"],
        "unreachable": [f"http://127.0.0.1:{dead}/retrain"],
    }
    for name, urls in targets.items():
        processes.cli(
            "dispatcher", "--bootstrap", bootstrap, *[a for u in urls for a in ("--url", u)],
            "--topic", setup.retrain, "--dlq-topic", f"{setup.retrain}.dlq-{name}",
            "--group", f"{setup.prefix}-dispatcher-{name}", "--max-attempts", "3",
            "--base-delay", "0.1", "--max-delay", "0.3",
            *(["--metrics-port", str(metrics_port)] if name == "good" else []),
            log=logs / f"dispatcher-{name}.log", env=env,
        )  # fmt: skip

    # the worker, with the secret in its environment too, raising retrain events
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # start_worker passes its environment on
    monkeypatch.setenv("DRIFTLINE_TEST_LOGLEVEL", "debug")
    port = free_port()
    start_worker("worker", metrics_port=port)
    now = int(time.time() * 1000)
    t0 = now - 3 * 3_600_000
    t0 -= t0 % 600_000
    messages, _ = traffic(t0, 4, 1_500)
    produce(bootstrap, setup.events, [(k, v) for k, v in messages if v is not None])
    produce(bootstrap, setup.retrain, [(b"fraud", b"not a cloud event")])  # malformed

    def dead_letters(name: str) -> list[dict[str, object]]:
        return [json.loads(v) for v in consume_all(bootstrap, f"{setup.retrain}.dlq-{name}")]

    def has_dead_letters(name: str, n: int) -> bool:
        return len(dead_letters(name)) >= n

    # two retrain events plus the malformed one: each failing dispatcher dead-letters 3
    wait_for(lambda: received(good) >= 2, 120, "2 retrain events at the good receiver")
    for name in ("refused", "failing", "unreachable"):
        wait_for(partial(has_dead_letters, name, 3), 90, f"3 dead letters ({name})")
    # a forged request and a replayed stale one, straight at the good receiver
    body = json.dumps({"type": "io.driftline.retrain.requested", "id": "forged"}).encode()
    answers = [
        _post(f"http://127.0.0.1:{good}/retrain", body, {**signed_headers(b"x", body, "forged")}),
        _post(
            f"http://127.0.0.1:{good}/retrain",
            body,
            signed_headers(secret.encode(), body, "forged", now=now / 1000 - 3_600),
        ),
        _post(
            f"http://127.0.0.1:{good}/retrain",
            body,
            {**signed_headers(secret.encode(), body, "forged"), SIGNATURE: "sha256=" + "0" * 64},
        ),
    ]
    assert [status for status, _ in answers] == [401, 401, 401]

    processes.stop_all()  # flushes and closes every log
    texts = {p.name: p.read_text(errors="replace") for p in sorted(logs.iterdir())}
    texts["worker.log"] = (setup.tmp / "worker.log").read_text(errors="replace")
    texts["answers"] = json.dumps(answers)
    texts["metrics"] = _get(f"http://127.0.0.1:{port}/metrics")
    for name in ("refused", "failing", "unreachable", "good"):
        texts[f"dlq-{name}"] = json.dumps(dead_letters(name))
    texts["dlq-events"] = "\n".join(
        v.decode(errors="replace") for v in consume_all(bootstrap, setup.dlq)
    )
    texts["command lines"] = _command_lines(processes)

    # the failures happened, so their messages are among what was searched
    assert "rejected a request" in texts["receiver-good.log"]
    assert "command exited with 3" in texts["receiver-failing.log"]
    assert "failed" in texts["dispatcher-unreachable.log"]
    assert any("HTTP 401" in t for t in [texts["dlq-refused"]])
    assert "not a CloudEvent" in texts["dlq-good"]
    leaks = {
        (where, form)
        for where, text in texts.items()
        for form, value in forms.items()
        if value in text
    }
    record_figures(
        "secrets",
        {
            "texts_searched": len(texts),
            "bytes_searched": sum(len(t) for t in texts.values()),
            "log_lines": sum(t.count("\n") for t in texts.values()),
            "leaks": sorted(f"{w} ({f})" for w, f in leaks),
        },
    )
    assert not leaks, f"the secret appears in: {sorted(leaks)}"


def up(port: int) -> bool:
    return received(port) >= 0


def _command_lines(processes: Processes) -> str:
    """What ``ps`` shows of the processes (their argv): a secret must never be passed there."""
    return "\n".join(str(proc.args) for proc in processes.procs)
