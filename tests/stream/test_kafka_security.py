"""The Kafka security settings: what each client gets, what is refused, and that the
password never shows (the real broker is in tests/integration/test_security.py)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

from alerts.dispatcher import DispatcherSettings
from serving_hooks.publisher import PublisherConfig
from stream.cli import build_parser
from stream.config import ConfigError, load_config
from stream.kafka_security import KafkaSecurity, KafkaSecurityError, from_arguments
from tests.integration.certs import CA

SECRET = "not-to-be-seen-4711"
ENV = {"KAFKA_PW": SECRET}


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return CA.make(tmp_path_factory.mktemp("ca"), "test-ca").certfile


def sasl_ssl(cafile: Path, **over: object) -> KafkaSecurity:
    settings: dict[str, object] = {
        "protocol": "SASL_SSL",
        "username": "driftline",
        "password_env": "KAFKA_PW",
        "ssl_cafile": cafile,
    }
    return KafkaSecurity.model_validate({**settings, **over})


def test_the_default_is_plaintext() -> None:
    security = KafkaSecurity()
    assert security.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None


def test_sasl_ssl_gives_every_client_the_same_settings(cafile: Path) -> None:
    security = sasl_ssl(cafile)
    kwargs = security.aiokafka_kwargs(ENV)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "driftline",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the CA file, not the system's

    credentials = security.faust_credentials(ENV)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.password == SECRET
    assert credentials.ssl_context is not None
    assert SECRET not in repr(credentials)


def test_sasl_plaintext_and_ssl(cafile: Path) -> None:
    plain = sasl_ssl(cafile, protocol="SASL_PLAINTEXT", ssl_cafile=None, sasl_mechanism="PLAIN")
    assert "ssl_context" not in plain.aiokafka_kwargs(ENV)
    credentials = plain.faust_credentials(ENV)
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert credentials.mechanism.value == "PLAIN"

    tls = KafkaSecurity(protocol="SSL", ssl_cafile=cafile, ssl_check_hostname=False)
    kwargs = tls.aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SSL"
    assert not kwargs["ssl_context"].check_hostname
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still verified
    assert isinstance(tls.faust_credentials(), faust.SSLCredentials)


def test_the_password_comes_only_from_its_variable(
    cafile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    security = sasl_ssl(cafile)
    monkeypatch.delenv("KAFKA_PW", raising=False)
    with pytest.raises(KafkaSecurityError, match=r"read from \$KAFKA_PW, which is empty or unset"):
        security.aiokafka_kwargs()
    monkeypatch.setenv("KAFKA_PW", SECRET)
    assert security.aiokafka_kwargs()["sasl_plain_password"] == SECRET
    # nothing of it in what gets printed or logged
    for text in (repr(security), str(security), repr(PublisherConfig(security=security))):
        assert SECRET not in text
        assert "$KAFKA_PW" in text
    settings = DispatcherSettings("b:9092", ["http://x"], b"webhook", security=security)
    assert SECRET not in repr(settings)
    assert "SASL_SSL" in repr(settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"protocol": "SASL_SSL"}, "protocol SASL_SSL needs a username"),
        ({"username": "u"}, "protocol PLAINTEXT does not authenticate with SASL"),
        ({"protocol": "SASL_PLAINTEXT", "username": "u", "ssl_cafile": "c"}, "not use TLS"),
        ({"protocol": "SSL", "ssl_keyfile": "k.pem"}, "ssl_keyfile needs ssl_certfile"),
        ({"protocol": "TLS"}, "Input should be 'PLAINTEXT', 'SSL'"),
        ({"protocol": "SASL_SSL", "username": "u", "password": SECRET}, "name that variable"),
        ({"sasl_plain_password": SECRET}, "never written in the settings"),
    ],
)  # fmt: skip
def test_mistakes_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        KafkaSecurity.model_validate(settings)
    assert SECRET not in str(refused.value)


def test_unreadable_tls_files_say_which(tmp_path: Path) -> None:
    security = KafkaSecurity(protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(KafkaSecurityError, match=r"missing\.pem"):
        security.aiokafka_kwargs()


def test_the_monitor_configuration_takes_a_security_section(
    cafile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "kafka:\n"
        "  security:\n"
        "    protocol: SASL_SSL\n"
        "    password_env: KAFKA_PW\n"
        f"    ssl_cafile: {cafile}\n"
        "models: [{name: m, reference: r}]\n"
    )
    monkeypatch.setenv("DRIFTLINE_KAFKA__SECURITY__USERNAME", "from-env")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SECURITY__SSL_CHECK_HOSTNAME", "false")
    security = load_config(path).kafka.security
    assert security.protocol == "SASL_SSL"
    assert security.username == "from-env"
    assert security.sasl_mechanism == "SCRAM-SHA-256"
    assert security.ssl_check_hostname is False
    assert security.ssl_cafile == cafile
    # without the username from the environment, the file alone is incomplete
    monkeypatch.delenv("DRIFTLINE_KAFKA__SECURITY__USERNAME")
    with pytest.raises(ConfigError, match=r"kafka\.security: protocol SASL_SSL needs a username"):
        load_config(path)


def test_a_password_in_the_configuration_is_refused_and_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text("models: [{name: m, reference: r}]\n")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SECURITY__PASSWORD", SECRET)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "kafka.security: a password is never written in the settings" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_command_line_flags(cafile: Path) -> None:
    args = build_parser().parse_args(
        ["dispatcher", "--url", "http://x", "--security-protocol", "SASL_SSL",
         "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "u",
         "--sasl-password-env", "KAFKA_PW", "--ssl-cafile", str(cafile),
         "--no-ssl-check-hostname"]
    )  # fmt: skip
    assert from_arguments(args) == KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        username="u",
        password_env="KAFKA_PW",
        ssl_cafile=cafile,
        ssl_check_hostname=False,
    )
    plain = build_parser().parse_args(["replay", "x.parquet", "--to-kafka", "t"])
    assert from_arguments(plain) == KafkaSecurity()
    wrong = build_parser().parse_args(["replay", "x", "--sasl-username", "u"])
    with pytest.raises(KafkaSecurityError, match="invalid Kafka security flags"):
        from_arguments(wrong)


def test_sasl_payloads_never_reach_the_log(cafile: Path, caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka logs requests at DEBUG; a PLAIN authentication request holds the password."""
    caplog.set_level(logging.DEBUG)
    sasl_ssl(cafile, sasl_mechanism="PLAIN").aiokafka_kwargs(ENV)  # installs the filter
    request = SaslAuthenticateRequest_v1(sasl_auth_bytes=f"u\0u\0{SECRET}".encode())
    assert SECRET in repr(request)  # what aiokafka would print
    # exactly aiokafka.conn's call
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 9093, 4, request)
    assert "SaslAuthenticateRequest_v1(<hidden>)" in caplog.text
    assert SECRET not in caplog.text
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 9093, 5, "other")
    assert "other" in caplog.text  # everything else goes through unchanged
