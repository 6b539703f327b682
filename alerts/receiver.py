"""A reference webhook receiver for retrain events, for orchestrators to copy.

It verifies the signature and the timestamp window, drops duplicate event ids (kept in a
file, so a restart does not forget them), and runs a configured command for each new
event with the CloudEvent JSON on its standard input (no shell involved)::

    driftline receiver --port 8787 --secret-env DRIFTLINE_WEBHOOK_SECRET \\
        --command mlflow run . -e retrain

Responses: 200 (done or duplicate), 401 (signature or timestamp), 400 (not a retrain
event), 500 (the command failed: the dispatcher will retry).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from alerts.cloudevents import RETRAIN_TYPE
from alerts.signing import DEFAULT_TOLERANCE_S, SignatureError, verify

log = logging.getLogger("driftline.receiver")


class Receiver:
    def __init__(
        self,
        secret: bytes,
        command: Sequence[str] | None = None,
        seen_file: Path | None = None,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
    ) -> None:
        self._secret = secret
        self.command = list(command or [])
        self.seen_file = seen_file
        self.tolerance_s = tolerance_s
        self.seen: set[str] = set()
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        if seen_file is not None and seen_file.exists():
            self.seen = set(seen_file.read_text().split())
        self._lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/retrain", self.handle)
        app.router.add_get("/healthz", self.health)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "received": len(self.received)})

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(self._secret, request.headers, body, self.tolerance_s)
        except SignatureError as exc:
            self.rejected += 1
            log.warning("rejected a request: %s", exc)
            return web.json_response({"error": str(exc)}, status=401)
        try:
            event = json.loads(body)
            event_id = str(event["id"])
            if event.get("type") != RETRAIN_TYPE:
                raise ValueError(f"type is {event.get('type')!r}, expected {RETRAIN_TYPE!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"not a retrain event: {exc}"}, status=400)
        async with self._lock:  # one event at a time: duplicates cannot race
            if event_id in self.seen:
                return web.json_response({"id": event_id, "status": "duplicate"})
            if self.command and not await self._run(body):
                return web.json_response({"id": event_id, "status": "command failed"}, status=500)
            self.seen.add(event_id)
            self.received.append(event)
            if self.seen_file is not None:
                with self.seen_file.open("a") as f:
                    f.write(event_id + "\n")
        log.info("retrain event %s accepted for %s", event_id, event.get("subject"))
        return web.json_response({"id": event_id, "status": "accepted"})

    async def _run(self, body: bytes) -> bool:
        # the command has no use for the webhook secret: it gets the environment without
        # it, and its error output is logged with the secret blotted out all the same
        secret = self._secret.decode(errors="replace")
        env = {k: v for k, v in os.environ.items() if v != secret}
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, err = await proc.communicate(body)
        if proc.returncode != 0:
            text = err.decode(errors="replace").replace(secret, "[secret]")
            log.error("command exited with %s: %s", proc.returncode, text[-500:])
        return proc.returncode == 0


def serve(receiver: Receiver, host: str, port: int) -> None:
    web.run_app(receiver.app(), host=host, port=port, print=None)
