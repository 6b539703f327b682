"""Profile files: round trip, identity, and clear errors for bad files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import drift_core as dc
from stream.profiles import ModelProfile, ProfileError, infer_kind


def test_round_trip(tmp_path: Path, make_profile: Callable[..., ModelProfile]) -> None:
    profile = make_profile()
    path = profile.save(tmp_path / "fraud.dlprofile")
    back = ModelProfile.load(path)
    assert back.model == "fraud"
    assert back.model_version == "3"
    assert back.features == profile.features
    assert back.prediction == profile.prediction
    assert back.identity == profile.identity
    assert back.kind("amount") == "numeric"
    assert back.kind("country") == "categorical"
    assert make_profile(seed=1).identity != profile.identity


def test_kind_inference() -> None:
    assert infer_kind(np.arange(3.0)) == "numeric"
    assert infer_kind([1, None, 2.5]) == "numeric"
    assert infer_kind(["a", None]) == "categorical"


def test_bad_files_are_clear_errors(
    tmp_path: Path, make_profile: Callable[..., ModelProfile]
) -> None:
    data = make_profile().to_bytes()
    with pytest.raises(ProfileError, match="cannot read profile"):
        ModelProfile.load(tmp_path / "missing.dlprofile")
    with pytest.raises(ProfileError, match="not a driftline profile"):
        ModelProfile.from_bytes(b"PK\x03\x04" + data[4:])
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    with pytest.raises(ProfileError, match="checksum mismatch"):
        ModelProfile.from_bytes(bytes(corrupted))
    with pytest.raises(ProfileError, match=r"checksum mismatch|not a driftline"):
        ModelProfile.from_bytes(data[:-10])


def test_empty_column_names_the_feature() -> None:
    with pytest.raises(ProfileError, match=r"feature .age.*all 3 values are missing"):
        ModelProfile.build("m", "1", {"age": [None, None, None]})
    assert isinstance(
        ModelProfile.build("m", "1", {"x": [1.0, 2.0]}).features["x"], dc.NumericReference
    )
