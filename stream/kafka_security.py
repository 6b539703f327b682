"""How driftline's Kafka clients authenticate and encrypt: one model for every client.

The worker (Faust app and admin client), the dispatcher, the serving hooks and ``replay
--to-kafka`` all take a :class:`KafkaSecurity` and turn it into their client's keyword
arguments here, so they cannot drift apart. The SASL password is never part of the
settings: they name the environment variable that holds it (``password_env``), which is
read when a client is made, so no configuration file, command line, ``repr`` or log line
can carry it::

    kafka:
      security:
        protocol: SASL_SSL
        sasl_mechanism: SCRAM-SHA-512
        username: driftline
        password_env: DRIFTLINE_KAFKA_PASSWORD   # the default
        ssl_cafile: /etc/driftline/kafka-ca.pem  # default: the system's CAs
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stream.configfile import describe
from stream.errors import StreamError

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
DEFAULT_PASSWORD_ENV = "DRIFTLINE_KAFKA_PASSWORD"


class KafkaSecurityError(StreamError):
    """Kafka security settings that cannot be used; the message says which and why
    (never with the password in it)."""


class KafkaSecurity(BaseModel):
    """Protocol, SASL identity and TLS trust of a Kafka client (default: plaintext)."""

    # pydantic repeats the input in its errors: not here, it may hold a password by mistake
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    protocol: Protocol = Field(default="PLAINTEXT", description="Kafka's security.protocol")
    sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    username: str | None = Field(default=None, description="SASL user")
    password_env: str = Field(
        default=DEFAULT_PASSWORD_ENV,
        min_length=1,
        description="environment variable holding the SASL password (never the password)",
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA certificates (PEM) to trust; default: the system's"
    )
    ssl_certfile: Path | None = Field(default=None, description="client certificate (PEM)")
    ssl_keyfile: Path | None = Field(default=None, description="its private key (PEM)")
    ssl_check_hostname: bool = Field(
        default=True, description="check the broker's name against its certificate"
    )

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and any(
            k in data for k in ("password", "sasl_password", "sasl_plain_password")
        ):
            # the value is not repeated: error messages end up in logs
            raise ValueError(
                "a password is never written in the settings: put it in an environment "
                "variable and name that variable with `password_env`"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        if self.sasl and not self.username:
            raise ValueError(f"protocol {self.protocol} needs a username")
        if not self.sasl and self.username:
            raise ValueError(
                f"username is set but protocol {self.protocol} does not authenticate with "
                "SASL: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = [
            name
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if getattr(self, name) is not None
        ]
        if tls_files and not self.tls:
            raise ValueError(
                f"{', '.join(tls_files)} set but protocol {self.protocol} does not use TLS: "
                "use SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        return self

    def __repr__(self) -> str:
        # nothing here is secret (the password stays in its environment variable); the
        # password is named, never shown
        parts = [f"protocol={self.protocol}"]
        if self.sasl:
            parts.append(f"{self.sasl_mechanism} user={self.username!r}")
            parts.append(f"password=${self.password_env}")
        if self.tls:
            parts.append(f"ca={str(self.ssl_cafile) if self.ssl_cafile else 'system'}")
            if self.ssl_certfile is not None:
                parts.append(f"cert={self.ssl_certfile}")
            if not self.ssl_check_hostname:
                parts.append("check_hostname=False")
        return f"KafkaSecurity({', '.join(parts)})"

    __str__ = __repr__

    def password(self, environ: Mapping[str, str] | None = None) -> str:
        """The SASL password, read from ``password_env`` now."""
        value = (os.environ if environ is None else environ).get(self.password_env, "")
        if not value:
            raise KafkaSecurityError(
                f"the Kafka SASL password of user {self.username!r} is read from "
                f"${self.password_env}, which is empty or unset (it is never taken from "
                "a configuration file or the command line)"
            )
        return value

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None without TLS): the CA file or the system's CAs,
        the client certificate if any, hostname checks unless turned off."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
            )
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(
                f"{name}={path}"
                for name, path in (
                    ("ssl_cafile", self.ssl_cafile),
                    ("ssl_certfile", self.ssl_certfile),
                    ("ssl_keyfile", self.ssl_keyfile),
                )
                if path is not None
            )
            raise KafkaSecurityError(
                f"cannot load the Kafka TLS files ({files or 'system CAs'}): {exc}"
            ) from None
        if not self.ssl_check_hostname:
            context.check_hostname = False
        return context

    def aiokafka_kwargs(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            hide_sasl_payloads()
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password(environ)
        return kwargs

    def faust_credentials(self, environ: Mapping[str, str] | None = None) -> Any:
        """``broker_credentials=`` for faust.App: SASLCredentials (with a TLS context for
        SASL_SSL), SSLCredentials, or None for plaintext."""
        import faust

        if self.sasl:
            hide_sasl_payloads()
            return faust.SASLCredentials(
                username=self.username,
                password=self.password(environ),
                ssl_context=self.ssl_context(),  # None: SASL_PLAINTEXT
                mechanism=self.sasl_mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


class _HideSaslPayloads(logging.Filter):
    """aiokafka logs every request and response at DEBUG, SASL ones with their bytes: with
    PLAIN those hold the password. Such arguments are replaced before any handler sees
    the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_sasl_payload(a) for a in args):
            record.args = tuple(
                f"{type(a).__name__}(<hidden>)" if _is_sasl_payload(a) else a for a in args
            )
        return True


def _is_sasl_payload(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticate")


def hide_sasl_payloads() -> None:
    """Installs the filter on aiokafka's connection logger (once)."""
    logger = logging.getLogger("aiokafka.conn")
    if not any(isinstance(f, _HideSaslPayloads) for f in logger.filters):
        logger.addFilter(_HideSaslPayloads())


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--security-protocol`` ... flags of the commands that talk to Kafka."""
    group = parser.add_argument_group("Kafka security")
    group.add_argument(
        "--security-protocol",
        choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        default="PLAINTEXT",
    )
    group.add_argument(
        "--sasl-mechanism",
        choices=["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"],
        default="SCRAM-SHA-512",
    )
    group.add_argument("--sasl-username")
    group.add_argument(
        "--sasl-password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="NAME",
        help="environment variable holding the SASL password (default: %(default)s)",
    )
    group.add_argument("--ssl-cafile", help="CA certificates to trust (PEM; default: system)")
    group.add_argument("--ssl-certfile", help="client certificate (PEM)")
    group.add_argument("--ssl-keyfile", help="client private key (PEM)")
    group.add_argument(
        "--no-ssl-check-hostname",
        dest="ssl_check_hostname",
        action="store_false",
        help="do not check the broker's name against its certificate",
    )


def from_arguments(args: argparse.Namespace) -> KafkaSecurity:
    """The settings given by :func:`add_arguments`' flags."""
    try:
        return KafkaSecurity(
            protocol=args.security_protocol,
            sasl_mechanism=args.sasl_mechanism,
            username=args.sasl_username,
            password_env=args.sasl_password_env,
            ssl_cafile=args.ssl_cafile,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            ssl_check_hostname=args.ssl_check_hostname,
        )
    except ValidationError as exc:
        raise KafkaSecurityError(describe(exc, "invalid Kafka security flags:")) from None
