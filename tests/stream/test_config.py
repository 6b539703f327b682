"""The monitor configuration: the documented example loads, mistakes say where and what."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stream.config import ConfigError, ReferenceStore, load_config
from stream.configfile import parse_duration
from stream.profiles import ModelProfile

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(text)
    return path


def test_the_documented_example_is_valid() -> None:
    config = load_config(REPO / "docs" / "monitor.example.yaml", env=False)
    assert config.window.size == 3_600_000
    assert config.window.lateness == 300_000
    assert [m.name for m in config.models] == ["churn", "fraud"]
    assert config.models[0].mlflow is not None
    assert config.models[0].mlflow.alias == "champion"
    assert config.outcomes.ttl == 7 * 86_400_000
    assert config.models[1].task == "binary"
    assert config.limits.limits().max_future_ms == 3_600_000


@pytest.mark.parametrize(
    ("value", "ms"),
    [("250ms", 250), ("30s", 30_000), ("1.5m", 90_000), ("2h", 7_200_000), (42, 42)],
)
def test_durations(value: object, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []", "models: List should have at least 1 item"),
        ("models: [{name: m}]", "model 'm' needs `reference`, `versions` or `mlflow`"),
        (
            "window: {size: soon}\nmodels: [{name: m, reference: r}]",
            "window.size: 'soon' is not a duration",
        ),
        (
            "window: {size: 1m, hop: 2m}\nmodels: [{name: m, reference: r}]",
            "hop must be positive and at most",
        ),
        (
            "kafka: {partitions: 0}\nmodels: [{name: m, reference: r}]",
            "kafka.partitions: Input should be greater than or equal to 1",
        ),
        (
            "colour: blue\nmodels: [{name: m, reference: r}]",
            "colour: Extra inputs are not permitted",
        ),
        ("models: [{name: m, reference: r}, {name: m, reference: r}]", "repeated: m"),
        ("models: [{name: m, reference: r, features: {x: text}}]", "models.0.features.x"),
        ("- a\n- b", "the top level must be a mapping"),
        ("models: [", "is not valid YAML"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_config(write(tmp_path, text), env=False)
    assert "monitor.yaml" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read monitor configuration"):
        load_config(tmp_path / "nope.yaml")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_KAFKA__BOOTSTRAP", "10.0.0.5:9092")
    monkeypatch.setenv("DRIFTLINE_WINDOW__SIZE", "5m")
    config = load_config(write(tmp_path, "models: [{name: m, reference: r}]"))
    assert config.kafka.bootstrap == "10.0.0.5:9092"
    assert config.window.size == 300_000


def test_reference_store_resolves_versions_and_narrows_features(
    tmp_path: Path, make_profile: Callable[..., ModelProfile]
) -> None:
    make_profile().save(tmp_path / "all.dlprofile")
    make_profile(model_version="4", seed=3).save(tmp_path / "v4.dlprofile")
    config = load_config(
        write(
            tmp_path,
            "models:\n"
            "  - {name: fraud, reference: all.dlprofile, versions: {'4': v4.dlprofile},"
            " features: {amount: numeric}}\n"
            "  - {name: broken, reference: missing.dlprofile}\n"
            "  - {name: wrong, reference: all.dlprofile, features: {amount: categorical}}\n",
        ),
        env=False,
    )
    store = ReferenceStore(config)
    v3, v4 = store("fraud", "3"), store("fraud", "4")
    assert v3 is not None
    assert v4 is not None
    assert list(v3.features) == ["amount"]
    assert v3.identity != v4.identity
    assert store("unknown", "1") is None
    assert store("broken", "1") is None
    assert "cannot read profile" in store.errors[("broken", "1")]
    assert store("wrong", "1") is None
    assert "another kind" in store.errors[("wrong", "1")]
