"""docker-compose.yml and what it mounts, checked without a Docker engine: Debian's
docker-compose validates and resolves the file, promtool checks the Prometheus config."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO

SECRETS = {"DRIFTLINE_WEBHOOK_SECRET": "compose-test-secret", "GRAFANA_ADMIN_PASSWORD": "pw-test"}


def compose(
    *args: str, env: dict[str, str] | None = None, env_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing (Debian: apt-get install docker-compose)"
    options = ["--env-file", str(env_file)] if env_file is not None else []
    return subprocess.run(
        [exe, *options, "-f", "docker-compose.yml", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def clean_env() -> dict[str, str]:
    """The environment without any of the compose file's own variables."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DRIFTLINE_", "GRAFANA_", "KAFKA_", "COMPOSE_"))
    }


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def resolved(tmp_path: Path, secrets: dict[str, str]) -> dict[str, Any]:
    """The services as docker-compose resolves them with only ``secrets`` set."""
    env_file = tmp_path / "test.env"  # a developer's own .env stays out of it
    env_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    result = compose("config", env=clean_env(), env_file=env_file)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def secrets_of(services: dict[str, Any]) -> list[str]:
    return [
        services["dispatcher"]["environment"]["DRIFTLINE_WEBHOOK_SECRET"],
        services["receiver"]["environment"]["DRIFTLINE_WEBHOOK_SECRET"],
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"],
    ]


def test_secrets_come_only_from_the_environment(tmp_path: Path) -> None:
    with_secrets = resolved(tmp_path, SECRETS)
    assert secrets_of(with_secrets) == [
        SECRETS["DRIFTLINE_WEBHOOK_SECRET"],
        SECRETS["DRIFTLINE_WEBHOOK_SECRET"],
        SECRETS["GRAFANA_ADMIN_PASSWORD"],
    ]
    # no default written in the file: unset means empty, and the services refuse to start
    assert secrets_of(resolved(tmp_path, {})) == ["", "", ""]
    assert "GF_SECURITY_ADMIN_PASSWORD" in " ".join(with_secrets["grafana"]["entrypoint"])


def test_services_scale_and_mount_what_the_repository_ships(tmp_path: Path) -> None:
    services = resolved(tmp_path, SECRETS)
    assert {"kafka", "worker", "dispatcher", "receiver", "prometheus", "grafana", "mlflow"} <= set(
        services
    )
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow:")
    worker = services["worker"]
    # `--scale worker=N`: no fixed name, no host port
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["build"]["context"] == str(REPO)

    def mounts(service: str) -> dict[str, str]:
        """target -> source of the service's bind mounts of repository files."""
        out = {}
        for volume in services[service].get("volumes", []):
            if ":" not in volume:
                continue  # an anonymous volume: only a target
            source, target = volume.split(":")[:2]  # docker-compose 1.29 prints short syntax
            if source.startswith("/"):
                assert Path(source).exists(), f"{service} mounts {source}, which does not exist"
                out[target] = source
        return out

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(
        REPO / "deploy/prometheus/prometheus.yml"
    )
    grafana = mounts("grafana")
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/driftline.yaml").read_text()
    )["providers"][0]
    dashboards = Path(grafana[provider["options"]["path"]])
    assert (dashboards / "driftline.json").exists()
    assert Path(grafana["/etc/grafana/provisioning"]) == REPO / "deploy/grafana/provisioning"
    config = Path(mounts("worker")["/etc/driftline"]) / "monitor.yaml"
    assert config.exists()
    assert f"/etc/driftline/{config.name}" in services["worker"]["command"]
    # the worker's data dir (pending predictions, RocksDB) is a volume of each replica's
    # own: anonymous, not a bind mount or a named volume the replicas would share
    command = services["worker"]["command"]
    datadir = command[command.index("--datadir") + 1]
    assert datadir in worker["volumes"], f"the worker's --datadir {datadir} is not a volume"


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian: apt-get install prometheus)"
    result = subprocess.run(
        [promtool, "check", "config", "deploy/prometheus/prometheus.yml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
