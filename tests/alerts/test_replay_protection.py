"""Replay protection of signed webhook deliveries: a captured delivery is accepted only
within the timestamp tolerance (and then acted on once), re-stamping it breaks the
signature, forgeries are refused, and no header value makes the receiver fail with
anything but a 401."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from alerts.receiver import Receiver
from alerts.signing import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE,
    TIMESTAMP,
    SignatureError,
    sign,
    signed_headers,
    verify,
)
from tests.fuzzing import fuzz_settings

SECRET = b"replay-test-secret-7f3a"
T0 = 1_795_341_600  # when the delivery was captured (unix seconds)
BODY = json.dumps(
    {"specversion": "1.0", "type": "io.driftline.retrain.requested", "id": "ev-replay",
     "source": "test", "subject": "fraud", "data": {"model": "fraud"}}
).encode()  # fmt: skip
CAPTURED = signed_headers(SECRET, BODY, "ev-replay", now=T0)


@pytest.mark.parametrize(
    "delay", [0, 1, 120, DEFAULT_TOLERANCE_S, -1, -DEFAULT_TOLERANCE_S]
)  # negative: the sender's clock is ahead
def test_a_replay_within_the_tolerance_verifies(delay: int) -> None:
    verify(SECRET, CAPTURED, BODY, now=T0 + delay)


@pytest.mark.parametrize(
    "delay", [DEFAULT_TOLERANCE_S + 1, 3_600, 86_400 * 365, -DEFAULT_TOLERANCE_S - 1, -T0]
)
def test_a_replay_outside_the_tolerance_is_refused(delay: int) -> None:
    with pytest.raises(SignatureError, match=f"outside the {DEFAULT_TOLERANCE_S} s window"):
        verify(SECRET, CAPTURED, BODY, now=T0 + delay)


def test_the_tolerance_is_configurable() -> None:
    verify(SECRET, CAPTURED, BODY, tolerance_s=10, now=T0 + 10)
    with pytest.raises(SignatureError, match="outside the 10 s window"):
        verify(SECRET, CAPTURED, BODY, tolerance_s=10, now=T0 + 11)


def test_restamping_a_captured_delivery_breaks_its_signature() -> None:
    """The timestamp is signed: moving it into the window invalidates the signature."""
    later = T0 + 3_600
    restamped = {**CAPTURED, TIMESTAMP: str(later)}
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, restamped, BODY, now=later)


def _hmac(key: bytes, message: bytes) -> str:
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        ("another secret", _hmac(b"guessed-secret", f"{T0}.".encode() + BODY)),
        ("body only, no timestamp", _hmac(SECRET, BODY)),
        ("no separator", _hmac(SECRET, str(T0).encode() + BODY)),
        ("another body", sign(SECRET, T0, BODY.replace(b"fraud", b"churn"))),
        ("random hex", "sha256=" + "ab" * 32),
        ("upper-case hex", CAPTURED[SIGNATURE].upper()),
        ("another algorithm", CAPTURED[SIGNATURE].replace("sha256=", "sha1=")),
        ("bare hex", CAPTURED[SIGNATURE].removeprefix("sha256=")),
        ("prefix only", "sha256="),
        ("truncated", CAPTURED[SIGNATURE][:-2]),
        ("non-ASCII", "sha256=" + "é" * 64),
    ],
)
def test_forged_signatures_are_refused(name: str, signature: str) -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, {**CAPTURED, SIGNATURE: signature}, BODY, now=T0)


@pytest.mark.parametrize(
    "stamp",
    ["", " ", "-1", f"+{T0}", f" {T0}", f"{T0}.0", "1.7e9", f"{T0:_}", "٣" * 10, "9" * 400, "nan"],
)
def test_malformed_timestamps_are_refused(stamp: str) -> None:
    with pytest.raises(SignatureError):
        verify(SECRET, {**CAPTURED, TIMESTAMP: stamp}, BODY, now=T0)


@fuzz_settings(500, 20_000)
@given(
    signature=st.text(max_size=80) | st.just(CAPTURED[SIGNATURE]),
    stamp=st.text(max_size=30) | st.integers().map(str) | st.just(CAPTURED[TIMESTAMP]),
    body=st.binary(max_size=64) | st.just(BODY),
)
def test_any_header_values_give_a_verdict_and_nothing_else(
    signature: str, stamp: str, body: bytes
) -> None:
    try:
        verify(SECRET, {SIGNATURE: signature, TIMESTAMP: stamp}, body, now=T0)
    except SignatureError:
        return
    assert (signature, stamp, body) == (CAPTURED[SIGNATURE], CAPTURED[TIMESTAMP], BODY)


# ------------------------------------------------------------------ the receiver, served


async def _serve(receiver: Receiver, scenario: Callable[[str], Awaitable[Any]]) -> Any:
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await scenario(f"http://127.0.0.1:{port}/retrain")
    finally:
        await runner.cleanup()


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        doc = await r.json()
        return r.status, str(doc.get("status") or doc.get("error"))


def test_the_receiver_acts_once_on_replays_and_refuses_stale_or_forged_ones(
    tmp_path: Path,
) -> None:
    ran = tmp_path / "ran"
    script = f"import sys; open({str(ran)!r}, 'a').write(sys.stdin.read() + '\\n')"
    receiver = Receiver(SECRET, [sys.executable, "-c", script], seen_file=tmp_path / "seen")
    now = time.time()
    fresh = signed_headers(SECRET, BODY, "ev-replay", now=now)
    stale = signed_headers(SECRET, BODY, "ev-replay", now=now - DEFAULT_TOLERANCE_S - 60)
    edge = signed_headers(SECRET, BODY, "ev-replay", now=now - DEFAULT_TOLERANCE_S + 60)
    deliveries = [
        ("first delivery", fresh, 200, "accepted"),
        ("replayed at once", fresh, 200, "duplicate"),
        ("replayed, captured 4 min ago", edge, 200, "duplicate"),
        ("replayed, captured 6 min ago", stale, 401, "window"),
        ("stale, re-stamped", {**stale, TIMESTAMP: fresh[TIMESTAMP]}, 401, "does not match"),
        ("forged signature", {**fresh, SIGNATURE: "sha256=" + "0" * 64}, 401, "does not match"),
        ("non-ASCII signature", {**fresh, SIGNATURE: "sha256=ü"}, 401, "does not match"),
        ("huge timestamp", {**fresh, TIMESTAMP: "9" * 400}, 401, "not an integer"),
    ]

    async def scenario(url: str) -> list[tuple[int, str]]:
        return [await _post(url, BODY, headers) for _, headers, _, _ in deliveries]

    results = asyncio.run(_serve(receiver, scenario))
    for (what, _, status, text), (got_status, got_text) in zip(deliveries, results, strict=True):
        assert got_status == status, (what, got_status, got_text)
        assert text in got_text, (what, got_text)
    assert [json.loads(line)["id"] for line in ran.read_text().splitlines()] == ["ev-replay"]
    assert receiver.rejected == 5
