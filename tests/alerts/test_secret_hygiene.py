"""The webhook secret stays with the code that verifies signatures: the receiver's
command does not inherit it, and a failing command's output is logged without it; the
dispatcher's settings never print it."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from alerts.dispatcher import DispatcherSettings
from alerts.receiver import Receiver
from alerts.signing import signed_headers

SECRET = "hygiene-secret-5b1e9d"
BODY = json.dumps(
    {"specversion": "1.0", "type": "io.driftline.retrain.requested", "id": "ev-h",
     "source": "test", "subject": "fraud", "data": {}}
).encode()  # fmt: skip


async def _deliver(receiver: Receiver) -> int:
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        headers = signed_headers(SECRET.encode(), BODY, "ev-h")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{port}/retrain", data=BODY, headers=headers) as r,
        ):
            return r.status
    finally:
        await runner.cleanup()


def test_the_command_runs_without_the_secret_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLINE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DRIFTLINE_UNRELATED", "kept")
    seen = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"
    assert asyncio.run(_deliver(Receiver(SECRET.encode(), [sys.executable, "-c", script]))) == 200
    env = json.loads(seen.read_text())
    assert "DRIFTLINE_WEBHOOK_SECRET" not in env
    assert env["DRIFTLINE_UNRELATED"] == "kept"
    assert SECRET not in seen.read_text()


def test_a_failing_commands_output_is_logged_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DRIFTLINE_WEBHOOK_SECRET", SECRET)
    # the command knows the secret some other way, prints it and fails
    script = f"import sys; sys.stderr.write('token={SECRET} rejected'); sys.exit(4)"
    with caplog.at_level(logging.INFO, logger="driftline.receiver"):
        status = asyncio.run(_deliver(Receiver(SECRET.encode(), [sys.executable, "-c", script])))
    assert status == 500
    assert "command exited with 4: token=[secret] rejected" in caplog.text
    assert SECRET not in caplog.text


def test_dispatcher_settings_never_print_the_secret() -> None:
    settings = DispatcherSettings("127.0.0.1:9092", ["http://x/retrain"], SECRET.encode())
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in f"{settings!r} {settings}"
