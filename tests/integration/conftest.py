"""Integration fixtures: the project's own local Kafka broker (never a mock, never skipped:
a broker that does not come up fails the session), workers as subprocesses, and helpers
that poll conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.localkafka import LocalKafka
from stream.profiles import ModelProfile

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    yield from local_broker("pytest")


def local_broker(name: str) -> Iterator[LocalKafka]:
    """A broker of the project's own on free ports, wiped afterwards (fixtures yield
    from it; the instance name keeps suites that run together apart)."""
    broker = LocalKafka(
        home=Path(os.environ.get("DRIFTLINE_KAFKA_HOME", REPO / ".kafka")),
        name=f"{name}-{os.getpid()}",
        port=free_port(),
        controller_port=free_port(),
    )
    broker.up()
    yield broker
    broker.down()
    broker.wipe()


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.2,
    status: Callable[[], Any] | None = None,
) -> Any:
    """Polls ``predicate`` until it returns something truthy; fails with ``what`` (and
    what ``status`` says at that moment) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(every)
    seen = f"; status: {status()}" if status is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")


@dataclass
class Setup:
    """One test's topics, group, configuration file and reference profile."""

    kafka: LocalKafka
    prefix: str
    config_path: Path
    profile: ModelProfile
    tmp: Path

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def reports(self) -> str:
        return f"{self.prefix}.reports"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts"

    @property
    def retrain(self) -> str:
        return f"{self.prefix}.retrain"


@pytest.fixture
def setup(kafka: LocalKafka, tmp_path: Path) -> Setup:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    rng = np.random.default_rng(11)
    n = 20_000
    profile = ModelProfile.build(
        "fraud",
        "3",
        {
            "amount": rng.lognormal(3, 0.5, n),
            "age": rng.normal(40, 10, n),
            "country": rng.choice(["DE", "FR", "NL"], n, p=[0.5, 0.3, 0.2]).tolist(),
        },
        prediction=rng.uniform(size=n),
    )
    ref = profile.save(tmp_path / "fraud.dlprofile")
    config = {
        "window": {"size": "10m", "lateness": "1m", "idle_close": "3s"},
        "kafka": {
            "bootstrap": kafka.bootstrap,
            "group": f"{prefix}-worker",
            "events_topic": f"{prefix}.events",
            "reports_topic": f"{prefix}.reports",
            "dlq_topic": f"{prefix}.dlq",
            "alerts_topic": f"{prefix}.alerts",
            "retrain_topic": f"{prefix}.retrain",
            "partitions": 4,
            "batch_size": 2000,
            "batch_within": 0.2,
        },
        "metrics": {"port": 0},
        "models": [{"name": "fraud", "reference": str(ref)}],
    }
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return Setup(kafka, prefix, path, profile, tmp_path)


@pytest.fixture
def start_worker(setup: Setup) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str = "w1", metrics_port: int = 0) -> subprocess.Popen[bytes]:
        # Faust reads these from the environment over the code's own settings
        skip = ("BROKER_", "TOPIC_", "APP_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        argv = [
            sys.executable,
            "-m",
            "stream.cli",
            "worker",
            "--config",
            str(setup.config_path),
            "--metrics-port",
            str(metrics_port),
            "--datadir",
            str(setup.tmp / f"{name}-data"),
            "--loglevel",
            os.environ.get("DRIFTLINE_TEST_LOGLEVEL", "warning"),
        ]
        with (setup.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Sends (key, value) messages with a plain aiokafka producer and waits for acks."""

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, linger_ms=5
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def consume_all(bootstrap: str, topic: str, timeout: float = 1.0) -> list[bytes]:
    """Every message currently in ``topic`` (reads from the start, own group)."""

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"reader-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        out: list[bytes] = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=int(timeout * 1000))
                if not batch:
                    return out
                for records in batch.values():
                    out.extend(r.value for r in records if r.value is not None)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def group_assignments(bootstrap: str, group: str) -> list[dict[str, set[int]]]:
    """Each member's assigned partitions by topic (empty while the group rebalances)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    async def run() -> list[dict[str, set[int]]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        groups = described[0].groups if described else []
        members = groups[0][5] if groups else []
        out = []
        for member in members:  # (id, client id, host, metadata, assignment)
            raw = member[4]
            decoded = ConsumerProtocolMemberAssignment.decode(raw) if raw else None
            out.append({t: set(ps) for t, ps in decoded.assignment} if decoded else {})
        return out

    return asyncio.run(run())


def group_state(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    """(members of the consumer group, messages of ``topic`` it has not committed yet)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    async def run() -> tuple[int, int]:
        from aiokafka.errors import KafkaError

        try:
            return await query()
        except KafkaError:  # the group does not exist yet
            return 0, -1

    async def query() -> tuple[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            described = await admin.describe_consumer_groups([group])
            # DescribeGroups: groups = [(error, id, state, protocol_type, protocol, members, ...)]
            groups = described[0].groups if described else []
            members = len(groups[0][5]) if groups else 0
            committed = await admin.list_consumer_group_offsets(group)
            # the topic's partitions from the broker: a fresh consumer's own metadata
            # knows no topic, and an empty set would make the lag always 0
            topics = await admin.describe_topics([topic])
            parts = {p["partition"] for t in topics if not t["error_code"] for p in t["partitions"]}
            tps = [TopicPartition(topic, p) for p in parts]
            ends = await consumer.end_offsets(tps) if tps else {}
            lag = sum(
                end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
                for tp, end in ends.items()
            )
            return members, lag
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(run())


def received(port: int) -> int:
    """Retrain events the reference receiver on ``port`` accepted (-1: not answering)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(json.loads(r.read())["received"])
    except OSError:
        return -1
