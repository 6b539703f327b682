"""Fault-suite fixtures: the integration suite's real broker and workers, plus helpers to
read a worker's metrics, scan its log for crashes and produce hostile messages.

``make faults`` runs this directory; ``DRIFTLINE_FAULTS_SCALE=full`` runs it at full size.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from stream.localkafka import LocalKafka
from tests.integration.conftest import local_broker, setup, start_worker

__all__ = ["kafka", "setup", "start_worker"]  # setup and start_worker: the integration suite's


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """The fault suite's own broker (the integration suite's fixture, under another
    instance name, so that both suites can run in one session)."""
    yield from local_broker("pytest-faults")


#: what a worker log shows when something crashed: a traceback, or Faust restarting an
#: agent whose code raised
CRASH = re.compile(r"Traceback|[Cc]rashed|CRITICAL|Fatal Python error")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on a worker's /metrics page, by (name, sorted labels); {} if down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def crashes(log: Path) -> list[str]:
    """Lines of a worker log that tell of a crash."""
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if CRASH.search(line)]


def produce_raw(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]
) -> None:
    """Like the integration suite's ``produce``, but values may be None (tombstones) and
    messages up to 4 MiB go out; batched sends keep a million messages quick."""

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            max_request_size=4 * 1024 * 1024,
            linger_ms=20,
            max_batch_size=1 << 20,
            acks="all",
        )
        await producer.start()
        try:
            pending = []
            for key, value in messages:
                pending.append(await producer.send(topic, value=value, key=key))
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    asyncio.run(run())


class Processes:
    """Subprocesses a test starts; stopped (SIGTERM, then SIGKILL) when it ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(
        self, *args: str, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``python -m stream.cli ARGS`` with stdout and stderr into ``log``."""
        skip = ("BROKER_", "TOPIC_", "APP_")  # Faust reads these over the code's settings
        base = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop_all()


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``: (the group's committed offset or -1, the end offset)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    async def run() -> dict[int, tuple[int, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            topics = await admin.describe_topics([topic])
            tps = [TopicPartition(topic, p["partition"]) for t in topics for p in t["partitions"]]
            ends = await consumer.end_offsets(tps)
            return {
                tp.partition: (committed[tp].offset if tp in committed else -1, end)
                for tp, end in sorted(ends.items())
            }
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(run())


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Prints the figures; appends them to $DRIFTLINE_FAULTS_FIGURES when set."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(line)
    target = os.environ.get("DRIFTLINE_FAULTS_FIGURES")
    if target:
        with Path(target).open("a") as f:
            f.write(line + "\n")
