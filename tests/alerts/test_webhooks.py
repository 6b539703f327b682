"""Signatures, the reference receiver (a real server on 127.0.0.1) and backoff."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from alerts.dispatcher import backoff
from alerts.receiver import Receiver
from alerts.signing import SignatureError, sign, signed_headers, verify

SECRET = b"s3cr3t-for-tests"


def event(i: int = 1) -> bytes:
    return json.dumps(
        {"specversion": "1.0", "type": "io.driftline.retrain.requested", "id": f"ev-{i}",
         "source": "test", "subject": "fraud", "data": {"model": "fraud"}}
    ).encode()  # fmt: skip


def test_signature_round_trip_and_rejections() -> None:
    body = event()
    headers = signed_headers(SECRET, body, "ev-1", now=1_000_000)
    verify(SECRET, headers, body, now=1_000_100)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, headers, body.replace(b"fraud", b"churn"), now=1_000_100)
    with pytest.raises(SignatureError, match="does not match"):
        verify(b"other", headers, body, now=1_000_100)
    with pytest.raises(SignatureError, match="outside the 300 s window"):
        verify(SECRET, headers, body, now=1_000_000 + 301)
    with pytest.raises(SignatureError, match="missing"):
        verify(SECRET, {}, body)
    assert sign(SECRET, 1, b"x") != sign(SECRET, 2, b"x")  # the timestamp is signed too
    assert SECRET.decode() not in json.dumps(headers)


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff(a, 0.5, 10.0, rng) for a in range(12) for _ in range(50)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert max(backoff(1, 0.5, 10.0, rng) for _ in range(200)) <= 1.0
    assert len({round(d, 6) for d in delays}) > 500


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, await r.json()


def test_receiver_verifies_deduplicates_and_runs_the_command(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"
    receiver = Receiver(SECRET, [sys.executable, "-c", script], seen_file=tmp_path / "seen")

    async def scenario() -> list[tuple[int, str]]:
        runner = web.AppRunner(receiver.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/retrain"
        results = []
        try:
            for body, headers in [
                (event(1), signed_headers(SECRET, event(1), "ev-1")),
                (event(1), signed_headers(SECRET, event(1), "ev-1")),  # redelivery
                (event(2), signed_headers(SECRET, event(1), "ev-2")),  # signature of another body
                (event(3), signed_headers(SECRET, event(3), "ev-3", now=time.time() - 3600)),
                (
                    b'{"id": "x", "type": "other"}',
                    signed_headers(SECRET, b'{"id": "x", "type": "other"}', "x"),
                ),
            ]:
                status, doc = await _post(url, body, headers)
                results.append((status, doc.get("status") or doc.get("error", "")))
        finally:
            await runner.cleanup()
        return results

    results = asyncio.run(scenario())
    assert [s for s, _ in results] == [200, 200, 401, 401, 400]
    assert results[0][1] == "accepted"
    assert results[1][1] == "duplicate"
    assert "window" in results[3][1]
    ran = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["id"] for e in ran] == ["ev-1"]  # the command ran once
    # a restarted receiver still knows the id
    assert "ev-1" in Receiver(SECRET, seen_file=tmp_path / "seen").seen
