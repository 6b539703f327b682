"""Kafka with SASL_SSL (SCRAM-SHA-512) and TLS from a CA made here, and no plaintext client
listener: the serving hooks, ``replay --to-kafka``, the worker and the dispatcher, each
configured for it the way an operator would, carry events to window reports and a retrain
event to a webhook receiver; plaintext clients, a wrong password and a wrong CA are
refused; the password appears in no process log and no error message."""

from __future__ import annotations

import asyncio
import json
import logging
import os
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
from aiokafka.errors import KafkaError

from serving_hooks.publisher import AsyncPublisher, PublisherConfig, SyncPublisher
from stream.events import EVENT_SCHEMA
from stream.kafka_security import KafkaSecurity
from stream.localkafka import LocalKafka, SaslSsl
from stream.profiles import ModelProfile

from .certs import CA
from .conftest import REPO, free_port, received, wait_for

USER = "driftline"
# made per run, so that finding one in a log can only be a leak
PASSWORD = f"kafka-pw-{uuid.uuid4().hex}"
WRONG_PASSWORD = f"wrong-pw-{uuid.uuid4().hex}"
PASSWORD_ENV = "DRIFTLINE_TEST_KAFKA_PASSWORD"
WEBHOOK_SECRET = f"webhook-{uuid.uuid4().hex}"
WINDOW = 600_000


@dataclass
class Secure:
    broker: LocalKafka
    ca: Path  # signed the broker's certificate
    other_ca: Path  # a CA the broker's certificate does not come from

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def security(self, **over: Any) -> KafkaSecurity:
        settings: dict[str, Any] = {
            "protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "username": USER,
            "password_env": PASSWORD_ENV,
            "ssl_cafile": self.ca,
        }
        return KafkaSecurity(**{**settings, **over})

    def flags(self) -> list[str]:
        """The same settings as command-line flags (the password stays in the env)."""
        return [
            "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
            "--sasl-username", USER, "--sasl-password-env", PASSWORD_ENV,
            "--ssl-cafile", str(self.ca),
        ]  # fmt: skip


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    tls = tmp_path_factory.mktemp("tls")
    ca = CA.make(tls / "ca", "driftline-test-ca")
    other = CA.make(tls / "other", "another-ca")
    server = ca.issue(tls, "broker")
    broker = LocalKafka(
        home=Path(os.environ.get("DRIFTLINE_KAFKA_HOME", REPO / ".kafka")),
        name=f"pytest-sasl-{os.getpid()}",
        port=free_port(),
        controller_port=free_port(),
        sasl_ssl=SaslSsl(server.certfile, server.keyfile, ca.certfile, {USER: PASSWORD}),
    )
    broker.up()  # fails the module if the broker does not come up: never skipped
    yield Secure(broker, ca.certfile, other.certfile)
    broker.down()
    broker.wipe()


@pytest.fixture(autouse=True)
def password_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


# ---------------------------------------------------------------------- helpers


async def settle() -> None:
    """Lets closed TLS connections finish their close_notify round trip before the event
    loop ends (aiokafka does not wait for some), so no socket is left open."""
    await asyncio.sleep(0.1)


def consume(bootstrap: str, topic: str, security: KafkaSecurity) -> list[bytes]:
    """Every message currently in ``topic``, read with ``security``."""

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"reader-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **security.aiokafka_kwargs(),
        )
        await consumer.start()
        out: list[bytes] = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if not batch:
                    return out
                for records in batch.values():
                    out.extend(r.value for r in records if r.value is not None)
        finally:
            await consumer.stop()
            await settle()

    return asyncio.run(run())


class Processes:
    """driftline CLI subprocesses with their output in log files; stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        # Faust reads these from the environment over the code's own settings
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "TOPIC_", "APP_"))
        }
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**base, "DRIFTLINE_WEBHOOK_SECRET": WEBHOOK_SECRET, **(env or {})},
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def run(self, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """Runs one to its end: (exit code, output)."""
        proc = self.start(name, *args, env=env)
        code = proc.wait(timeout=120)
        return code, (self.tmp / f"{name}.log").read_text()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def assert_no_secret(where: str, text: str) -> None:
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in text, f"a Kafka password appears in {where}"


def window_events(model: str, start: int, n: int, shift: float, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "schema": EVENT_SCHEMA,
            "event_id": f"{model}-{start}-{i}",
            "model": model,
            "model_version": "3",
            "ts": start + i * (WINDOW // n),
            "features": {
                "amount": float(rng.lognormal(3 + shift, 0.5)),
                "country": str(rng.choice(["DE", "FR", "NL"], p=[0.5, 0.3, 0.2])),
            },
            "prediction": float(rng.uniform()),
            "latency_ms": 5.0,
            "status": "ok",
        }
        for i in range(n)
    ]


def record(pub: SyncPublisher | AsyncPublisher, events: list[dict[str, Any]]) -> None:
    for e in events:
        pub.record(
            e["model"], e["model_version"], e["features"], prediction=e["prediction"],
            latency_ms=e["latency_ms"], event_id=e["event_id"], ts_ms=e["ts"],
        )  # fmt: skip


# ---------------------------------------------------------------------- the flow


def test_hooks_replay_worker_and_dispatcher_work_over_sasl_ssl(
    secure: Secure, processes: Processes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every line the in-process clients log is checked too
    prefix = f"s{uuid.uuid4().hex[:10]}"
    topics = {
        name: f"{prefix}.{name}" for name in ("events", "reports", "dlq", "alerts", "retrain")
    }
    rng = np.random.default_rng(5)
    n_ref = 20_000
    profile = ModelProfile.build(
        "fraud",
        "3",
        {
            "amount": rng.lognormal(3, 0.5, n_ref),
            "country": rng.choice(["DE", "FR", "NL"], n_ref, p=[0.5, 0.3, 0.2]).tolist(),
        },
        prediction=rng.uniform(size=n_ref),
    )
    reference = profile.save(tmp_path / "fraud.dlprofile")
    config = {
        "window": {"size": "10m", "lateness": "1m", "idle_close": "3s"},
        "kafka": {
            "bootstrap": secure.bootstrap,
            "group": f"{prefix}-worker",
            **{f"{name}_topic": topic for name, topic in topics.items()},
            "partitions": 4,
            "batch_size": 2000,
            "batch_within": 0.2,
            # the username comes from the environment below, the password from its variable
            "security": {
                "protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "password_env": PASSWORD_ENV,
                "ssl_cafile": str(secure.ca),
            },
        },
        "metrics": {"port": 0},
        "models": [{"name": "fraud", "reference": str(reference)}],
    }
    config_path = tmp_path / "monitor.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert PASSWORD not in config_path.read_text()

    worker = processes.start(
        "worker", "worker", "--config", str(config_path), "--metrics-port", "0",
        "--datadir", str(tmp_path / "worker-data"), "--loglevel", "debug",
        env={"DRIFTLINE_KAFKA__SECURITY__USERNAME": USER},
    )  # fmt: skip
    port = free_port()
    receiver = processes.start(
        "receiver", "receiver", "--port", str(port), "--seen-file", str(tmp_path / "seen")
    )
    dispatcher = processes.start(
        "dispatcher", "dispatcher", "--bootstrap", secure.bootstrap,
        "--url", f"http://127.0.0.1:{port}/retrain", "--topic", topics["retrain"],
        "--dlq-topic", f"{topics['retrain']}.dlq", "--group", f"{prefix}-dispatcher",
        "--base-delay", "0.2", "--max-delay", "1", "--max-attempts", "1000",
        *secure.flags(),
    )  # fmt: skip

    now = int(time.time() * 1000) - 2 * 3_600_000
    t0 = now - now % WINDOW
    n = 1_000
    steady = window_events("fraud", t0, n, 0.0, seed=1)
    shifted = window_events("fraud", t0 + WINDOW, n, 0.8, seed=2)
    shifted_again = window_events("fraud", t0 + 2 * WINDOW, n, 0.8, seed=3)
    hook_config = PublisherConfig(
        bootstrap=secure.bootstrap,
        topic=topics["events"],
        linger_ms=20,
        security=secure.security(),
    )

    # first window: the threaded serving hook
    sync_pub = SyncPublisher(hook_config)
    record(sync_pub, steady)
    sync_pub.close()  # flushes
    assert sync_pub.metrics.sent._value.get() == n
    assert sync_pub.metrics.errors._value.get() == 0

    # second: the asyncio serving hook
    async def publish_async() -> AsyncPublisher:
        pub = AsyncPublisher(hook_config)
        await pub.start()
        record(pub, shifted)
        await pub.close()
        await settle()
        return pub

    async_pub = asyncio.run(publish_async())
    assert async_pub.metrics.sent._value.get() == n
    assert async_pub.metrics.errors._value.get() == 0

    # third: replay --to-kafka from a file, configured by flags
    ndjson = tmp_path / "third.ndjson"
    rows = [
        {k: v for k, v in e.items() if k not in ("schema", "features")} | e["features"]
        for e in shifted_again
    ]
    ndjson.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, replay_out = processes.run(
        "replay", "replay", str(ndjson), "--to-kafka", topics["events"],
        "--bootstrap", secure.bootstrap, "--batch", "100", *secure.flags(),
    )  # fmt: skip
    assert code == 0, replay_out
    assert f"published {n:,} events" in replay_out

    def three_reports() -> list[dict[str, Any]] | None:
        assert worker.poll() is None, status()
        got = [
            json.loads(v) for v in consume(secure.bootstrap, topics["reports"], secure.security())
        ]
        return got if len(got) >= 3 else None

    def status() -> str:
        return f"worker exit {worker.poll()}: {(tmp_path / 'worker.log').read_text()[-3000:]}"

    got = wait_for(three_reports, 120, "3 window reports", status=status)
    reports = sorted(got, key=lambda r: r["window_start_ms"])
    assert [r["rows"] for r in reports] == [n, n, n]  # nothing lost or doubled
    assert [r["window_start_ms"] for r in reports] == [t0, t0 + WINDOW, t0 + 2 * WINDOW]
    assert reports[0]["features"]["amount"]["psi"] < 0.1
    assert reports[1]["features"]["amount"]["psi"] > 0.2
    assert reports[2]["features"]["amount"]["psi"] > 0.2

    # two drifted windows in a row: a retrain event, through the dispatcher to the receiver
    wait_for(lambda: received(port) >= 1, 90, "the retrain event at the receiver", status=status)
    retrain = [
        json.loads(v) for v in consume(secure.bootstrap, topics["retrain"], secure.security())
    ]
    assert retrain
    assert all(e["type"] == "io.driftline.retrain.requested" for e in retrain)
    wait_for(lambda: received(port) == len(retrain), 60, "every retrain event at the receiver")
    assert sorted((tmp_path / "seen").read_text().split()) == sorted(e["id"] for e in retrain)
    assert consume(secure.bootstrap, topics["dlq"], secure.security()) == []
    assert worker.poll() is None
    assert dispatcher.poll() is None
    assert receiver.poll() is None

    # the secret is nowhere: the processes' logs, the broker's, this process' log records
    processes.stop()
    for log in processes.logs:
        assert_no_secret(log.name, log.read_text())
    assert "SASL_SSL" in (tmp_path / "dispatcher.log").read_text()  # settings are logged...
    assert "password=$" + PASSWORD_ENV in (tmp_path / "dispatcher.log").read_text()  # ...named
    broker_log = secure.broker.log_file.read_text()
    assert_no_secret("broker.out", broker_log)
    broker_secret = (secure.broker.instance_dir / "broker.secret").read_text().strip()
    assert broker_secret not in broker_log
    assert_no_secret("the test's log records", caplog.text)


# ---------------------------------------------------------------------- refusals


async def produce_one(bootstrap: str, **client: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **client)
    try:
        await asyncio.wait_for(producer.start(), 30)
        await asyncio.wait_for(producer.send_and_wait("security.probe", b"x"), 30)
    finally:
        await producer.stop()
        await settle()


Client = Callable[[Secure], tuple[str, dict[str, Any]]]
REFUSED: dict[str, tuple[Client, str]] = {
    # the only client listener speaks TLS: a plaintext client is cut off
    "plaintext": (lambda s: (s.bootstrap, {}), "closed"),
    # the controller listener is plaintext but serves no client requests
    "plaintext to the controller port": (
        lambda s: (f"127.0.0.1:{s.broker.controller_port}", {}),
        "Unable to request metadata",
    ),
    "SASL without TLS": (
        lambda s: (s.bootstrap, s.security(protocol="SASL_PLAINTEXT", ssl_cafile=None)
                   .aiokafka_kwargs()),
        "closed",
    ),
    "TLS without SASL": (
        lambda s: (s.bootstrap, s.security(protocol="SSL", username=None).aiokafka_kwargs()),
        "closed",
    ),
    "a wrong password": (
        lambda s: (s.bootstrap, s.security().aiokafka_kwargs({PASSWORD_ENV: WRONG_PASSWORD})),
        "SaslAuthenticationFailed",
    ),
    "an unknown user": (
        lambda s: (s.bootstrap, s.security(username="mallory").aiokafka_kwargs()),
        "SaslAuthenticationFailed",
    ),
    "TLS with another CA": (
        lambda s: (s.bootstrap, s.security(ssl_cafile=s.other_ca).aiokafka_kwargs()),
        "CERTIFICATE_VERIFY_FAILED",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(secure: Secure, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, reason = REFUSED[case]
    bootstrap, kwargs = client(secure)
    with pytest.raises(KafkaError) as refused:
        asyncio.run(produce_one(bootstrap, **kwargs))
    text = f"{refused.value!r} {refused.value}\n{caplog.text}"
    assert reason in text
    assert_no_secret("the error and the client's log", text)


def test_the_right_settings_are_accepted(secure: Secure) -> None:
    """The counterpart of the refusals: the same client with the right settings gets in."""
    asyncio.run(produce_one(secure.bootstrap, **secure.security().aiokafka_kwargs()))


def test_a_hook_with_a_wrong_password_drops_nothing_silently_and_leaks_nothing(
    secure: Secure, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(PASSWORD_ENV, WRONG_PASSWORD)
    pub = SyncPublisher(
        PublisherConfig(
            bootstrap=secure.bootstrap,
            topic="security.hook",
            security=secure.security(),
            retry_backoff_s=0.2,
            max_backoff_s=0.5,
            close_timeout_s=2,
        )
    )
    try:
        pub.record("fraud", "3", {"amount": 1.0})
        wait_for(lambda: pub.metrics.errors._value.get() >= 2, 30, "failed connection attempts")
        assert pub.metrics.sent._value.get() == 0
        assert pub.queued == 1  # kept for when the credentials are fixed
    finally:
        pub.close()
    assert "SaslAuthenticationFailed" in caplog.text
    assert_no_secret("the hook's log", caplog.text)


def test_the_commands_refuse_bad_credentials_and_say_why_without_the_secret(
    secure: Secure, processes: Processes, tmp_path: Path
) -> None:
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap": secure.bootstrap,
            "group": f"g{uuid.uuid4().hex[:8]}",
            "security": {
                "protocol": "SASL_SSL",
                "username": USER,
                "password_env": PASSWORD_ENV,
                "ssl_cafile": str(secure.ca),
            },
        },
        "metrics": {"port": 0},
        "models": [{"name": "m", "reference": "unused.dlprofile"}],
    }
    good = tmp_path / "monitor.yaml"
    good.write_text(yaml.safe_dump(config))
    wrong_env = {PASSWORD_ENV: WRONG_PASSWORD}
    outputs: dict[str, str] = {}

    # a wrong password: the worker and the dispatcher stop, naming the reason
    code, outputs["worker"] = processes.run(
        "worker", "worker", "--config", str(good), "--metrics-port", "0", env=wrong_env
    )
    assert code != 0
    assert "SaslAuthenticationFailed" in outputs["worker"]
    code, outputs["dispatcher"] = processes.run(
        "dispatcher", "dispatcher", "--bootstrap", secure.bootstrap, "--url",
        "http://127.0.0.1:9/never", "--topic", "security.retrain", *secure.flags(), env=wrong_env,
    )  # fmt: skip
    assert code != 0
    assert "SaslAuthenticationFailed" in outputs["dispatcher"]

    # no password at all: a clear message, before any connection
    code, outputs["replay"] = processes.run(
        "replay", "replay", str(tmp_path / "none.ndjson"), "--to-kafka", "security.replay",
        "--bootstrap", secure.bootstrap, *secure.flags(), env={PASSWORD_ENV: ""},
    )  # fmt: skip
    assert code == 2
    assert f"read from ${PASSWORD_ENV}, which is empty or unset" in outputs["replay"]

    # a password written into the configuration is refused, and not repeated
    config["kafka"]["security"]["password"] = PASSWORD
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text(yaml.safe_dump(config))
    code, outputs["config"] = processes.run("config", "worker", "--config", str(leaky))
    assert code == 2
    assert "name that variable with `password_env`" in outputs["config"]

    # plaintext flags against the SASL_SSL listener: refused
    code, outputs["plaintext"] = processes.run(
        "plaintext", "dispatcher", "--bootstrap", secure.bootstrap, "--url",
        "http://127.0.0.1:9/never", "--topic", "security.retrain",
    )  # fmt: skip
    assert code != 0

    for name, text in outputs.items():
        assert_no_secret(f"the output of {name}", text)
