"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, from Maven Central jars.

Used by ``driftline kafka up|down|status``, the integration tests, CI and the demo. There
is no Docker here: the broker is the ``kafka_2.13`` jar and its runtime dependencies,
fetched once with Maven into ``<home>/libs`` and run with the machine's Java.

Layout under ``home`` (default ``.kafka``, or ``$DRIFTLINE_KAFKA_HOME``)::

    libs/                 jars shared by every instance
    <name>/server.properties, log4j.properties, broker.out, broker.pid, data/

With ``sasl_ssl`` set, the client listener is SASL_SSL (TLS with the given certificate,
SCRAM-SHA-512 users created when the storage is formatted) and there is no plaintext
client listener; the KRaft controller listener stays plaintext on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stream.errors import StreamError

KAFKA_VERSION = "3.9.1"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
_SCRAM_ITERATIONS = 8192
_SCRAM_NAME = re.compile(r"[A-Za-z0-9._-]+")


class BrokerError(StreamError):
    """The local broker could not be fetched, started, reached or stopped."""


def default_home() -> Path:
    return Path(os.environ.get("DRIFTLINE_KAFKA_HOME", ".kafka")).resolve()


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL client listener in place of the plaintext one.

    ``certfile`` is the broker's certificate chain and ``keyfile`` its unencrypted private
    key (PEM), for the name 127.0.0.1; ``cafile`` is the CA that signed it, which the
    broker trusts for its own connections. ``users`` (name -> password) become SCRAM-SHA-512
    credentials when the storage is formatted (first start only: wipe to change them);
    they are passed salted, never as the password, and never shown by ``repr``.
    """

    certfile: Path
    keyfile: Path
    cafile: Path
    users: Mapping[str, str] = field(repr=False)

    MECHANISM = "SCRAM-SHA-512"
    BROKER_USER = "driftline-broker"


@dataclass
class LocalKafka:
    """One broker instance: ``home/name`` holds its configuration, data and logs."""

    home: Path = field(default_factory=default_home)
    name: str = "default"
    port: int = 9092
    controller_port: int = 9093
    partitions: int = 4
    heap: str = "1g"
    sasl_ssl: SaslSsl | None = None
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
        if self.sasl_ssl is not None:
            props.update(self._sasl_ssl_props(self.sasl_ssl))
        path = self.instance_dir / "server.properties"
        _write_private(path, "".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = resources.files("stream.broker") / "log4j.properties"
        (self.instance_dir / "log4j.properties").write_text(log4j.read_text())
        return path

    def _sasl_ssl_props(self, tls: SaslSsl) -> dict[str, str]:
        # Kafka's PEM key store: the private key, then the certificate chain, in one file
        keystore = self.instance_dir / "broker-keystore.pem"
        _write_private(keystore, tls.keyfile.read_text() + tls.certfile.read_text())
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{SaslSsl.BROKER_USER}" password="{self._broker_password()}";'
        )
        return {
            "listeners": (
                f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": SaslSsl.MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SaslSsl.MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.cafile.resolve()),
            "ssl.client.auth": "none",
            "ssl.endpoint.identification.algorithm": "https",
        }

    def _broker_password(self) -> str:
        """The broker's own SCRAM password (its inter-broker connections and the readiness
        check): made at the first start and kept, readable by its owner only."""
        path = self.instance_dir / "broker.secret"
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def _scram_args(self) -> list[str]:
        if self.sasl_ssl is None:
            return []
        users = {**self.sasl_ssl.users, SaslSsl.BROKER_USER: self._broker_password()}
        args = []
        for name, password in users.items():
            if not _SCRAM_NAME.fullmatch(name) or not password:
                raise BrokerError(
                    f"SCRAM user {name!r}: names are letters, digits, '.', '_' and '-', "
                    "and the password must not be empty"
                )
            # salted here, so the password itself is not on the storage tool's command line
            salt = secrets.token_bytes(32)
            salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _SCRAM_ITERATIONS)
            args.append(
                f"--add-scram={SaslSsl.MECHANISM}=[name={name},iterations={_SCRAM_ITERATIONS},"
                f'salt="{base64.b64encode(salt).decode()}",'
                f'saltedpassword="{base64.b64encode(salted).decode()}"]'
            )
        return args

    def _client_kwargs(self) -> dict[str, object]:
        """aiokafka settings to reach this broker: plaintext, or SASL_SSL as the broker."""
        if self.sasl_ssl is None:
            return {}
        import ssl

        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl.create_default_context(cafile=str(self.sasl_ssl.cafile)),
            "sasl_mechanism": SaslSsl.MECHANISM,
            "sasl_plain_username": SaslSsl.BROKER_USER,
            "sasl_plain_password": self._broker_password(),
        }

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
                *self._scram_args(),
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
        if self.sasl_ssl is not None and not self._tls_answers():
            return False
        return asyncio.run(_metadata_answers(self.bootstrap, self._client_kwargs()))

    def _tls_answers(self) -> bool:
        """Whether the listener completes a TLS handshake. A starting broker accepts
        connections before it handles them, and a client that gives up on a TLS handshake
        mid-way (aiokafka's timeout) leaves its socket open: so this one, on a socket of
        our own, comes first."""
        import socket
        import ssl

        assert self.sasl_ssl is not None
        context = ssl.create_default_context(cafile=str(self.sasl_ssl.cafile))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=3) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except OSError:  # refused, timed out, or TLS failed
            return False

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {
            "running": pid is not None,
            "ready": pid is not None and self.is_ready(),
            "pid": pid,
            "bootstrap": self.bootstrap,
            "security": "SASL_SSL" if self.sasl_ssl is not None else "PLAINTEXT",
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


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only (it may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


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


async def _metadata_answers(bootstrap: str, client_kwargs: Mapping[str, object]) -> bool:
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    # a refused connection while the broker starts is expected, not worth a log line
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **client_kwargs)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=4)
        return bool(client.cluster.brokers())
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        if "ssl_context" in client_kwargs:
            # aiokafka closes its bootstrap connection without waiting; a TLS one is only
            # released after a close_notify round trip, which must happen before the loop
            # ends, or its socket is left open
            await asyncio.sleep(0.1)
        quiet.setLevel(level)
