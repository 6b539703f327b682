"""Values serving code hands over, as the event contract accepts them."""

from __future__ import annotations

import datetime
import decimal
import enum
import math

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from serving_hooks._values import clean, clean_features


class Country(enum.StrEnum):
    DE = "DE"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 1.5),
        (3, 3),
        ("DE", "DE"),
        (None, None),
        (True, 1),
        (False, 0),
        (np.float64(2.5), 2.5),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7),
        (np.bool_(True), 1),
        (np.str_("FR"), "FR"),
        (Country.DE, "DE"),
        (Level.HIGH, 3),
        (decimal.Decimal("12.25"), 12.25),
        (pd.NA, None),
        (pd.NaT, None),
        ([1, 2], None),
        ({"nested": 1}, None),
        (np.array([1.0, 2.0]), None),
        (datetime.date(2026, 11, 23), "2026-11-23"),
    ],
)
def test_clean(value: object, expected: object) -> None:
    got = clean(value)
    assert got == expected
    assert type(got) is type(expected)


def test_clean_keeps_nan_which_is_sent_as_null() -> None:
    got = clean(np.float64("nan"))
    assert isinstance(got, float)
    assert math.isnan(got)


def test_clean_features_leaves_containers_out_and_keeps_missing() -> None:
    features = {
        "amount": np.float64(12.5),
        "foreign": True,
        "country": Country.DE,
        "age": None,
        "tags": ["a", "b"],
        "address": {"city": "Berlin"},
        "score": pd.NA,
    }
    assert clean_features(features) == {
        "amount": 12.5,
        "foreign": 1,
        "country": "DE",
        "age": None,
        "score": None,
    }
