"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, from Maven Central jars.

Used by ``driftline kafka up|down|status``, the integration tests, CI and the demo. There
is no Docker here: the broker is the ``kafka_2.13`` jar and its runtime dependencies,
fetched once with Maven into ``<home>/libs`` and run with the machine's Java.

Layout under ``home`` (default ``.kafka``, or ``$DRIFTLINE_KAFKA_HOME``)::

    libs/                 jars shared by every instance
    <name>/server.properties, log4j.properties, broker.out, broker.pid, data/
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stream.errors import StreamError

KAFKA_VERSION = "3.9.1"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


class BrokerError(StreamError):
    """The local broker could not be fetched, started, reached or stopped."""


def default_home() -> Path:
    return Path(os.environ.get("DRIFTLINE_KAFKA_HOME", ".kafka")).resolve()


@dataclass
class LocalKafka:
    """One broker instance: ``home/name`` holds its configuration, data and logs."""

    home: Path = field(default_factory=default_home)
    name: str = "default"
    port: int = 9092
    controller_port: int = 9093
    partitions: int = 4
    heap: str = "1g"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def instance_dir(self) -> Path:
        return self.home / self.name

    @property
    def pid_file(self) -> Path:
        return self.instance_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.instance_dir / "broker.out"

    # ------------------------------------------------------------------ jars

    def fetch(self) -> Path:
        """Copies the broker jars into ``libs`` with Maven (once; cached in ~/.m2)."""
        stamp = self.libs / f".kafka-{KAFKA_VERSION}"
        if stamp.exists():
            return self.libs
        for tool in ("java", "mvn"):
            if shutil.which(tool) is None:
                raise BrokerError(
                    f"`{tool}` is not on PATH: the local broker needs Java 17 and Maven "
                    "(Debian: apt-get install -y openjdk-17-jre-headless maven)"
                )
        self.libs.mkdir(parents=True, exist_ok=True)
        with resources.as_file(resources.files("stream.broker") / "pom.xml") as pom:
            cmd = [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(pom),
                f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={self.libs}",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-2000:]
            raise BrokerError(f"Maven could not fetch the Kafka {KAFKA_VERSION} jars:\n{tail}")
        stamp.touch()
        return self.libs

    # ------------------------------------------------------------------ config

    def _write_config(self) -> Path:
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        data = self.instance_dir / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": str(self.partitions),
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": str(self.partitions),
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": str(self.partitions),
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": "33554432",
            "auto.create.topics.enable": "true",
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        path = self.instance_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = resources.files("stream.broker") / "log4j.properties"
        (self.instance_dir / "log4j.properties").write_text(log4j.read_text())
        return path

    def _java(self, *args: str, jvm: tuple[str, ...] = ("-Xmx256m",)) -> list[str]:
        return [
            "java",
            *jvm,
            f"-Dlog4j.configuration=file:{self.instance_dir / 'log4j.properties'}",
            "-cp",
            f"{self.libs}/*",
            *args,
        ]

    def _format(self, config: Path) -> None:
        if (self.instance_dir / "data" / "meta.properties").exists():
            return
        # the storage tool wants a URL-safe base64 UUID
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        done = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                # `=`: a URL-safe base64 id may start with "-", which argparse would
                # take for an option
                f"--cluster-id={cluster_id}",
                "-c",
                str(config),
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{done.stdout}{done.stderr}")

    # ------------------------------------------------------------------ lifecycle

    def pid(self) -> int | None:
        """The broker's pid if it is running."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def up(self, timeout: float = _READY_TIMEOUT_S) -> None:
        """Fetches, formats and starts the broker; returns once metadata answers."""
        if self.pid() is not None and self.is_ready():
            return
        self.fetch()
        config = self._write_config()
        self._format(config)
        jvm = ("-Xms256m", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true")
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                self._java("kafka.Kafka", str(config), jvm=jvm),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `driftline kafka up`; Ctrl-C does not reach it
            )
        self._proc = proc
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{self._tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.down()
        raise BrokerError(
            f"the broker did not answer metadata requests on {self.bootstrap} within "
            f"{timeout:.0f} s; last lines of {self.log_file}:\n{self._tail()}"
        )

    def down(self, timeout: float = _STOP_TIMEOUT_S, kill: bool = False) -> None:
        """Stops the broker: SIGTERM (controlled shutdown), SIGKILL after ``timeout``."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        if self._proc is not None and self._proc.pid == pid:
            self._proc.wait()
            self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def is_ready(self) -> bool:
        """Whether the broker answers a metadata request (not just a TCP connect)."""
        return asyncio.run(_metadata_answers(self.bootstrap))

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "running": pid is not None,
            "ready": pid is not None and self.is_ready(),
            "pid": pid,
            "bootstrap": self.bootstrap,
            "home": str(self.instance_dir),
            "kafka_version": KAFKA_VERSION,
        }

    def wipe(self) -> None:
        """Removes this instance's data (the broker must be down)."""
        if self.pid() is not None:
            raise BrokerError("stop the broker before wiping its data")
        shutil.rmtree(self.instance_dir, ignore_errors=True)

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _metadata_answers(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    # a refused connection while the broker starts is expected, not worth a log line
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=4)
        return bool(client.cluster.brokers())
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        quiet.setLevel(level)
