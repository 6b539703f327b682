"""Shared fixtures: factories with keyword defaults."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections.abc import Callable

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)


@pytest.fixture
def make_sample(rng: np.random.Generator) -> Callable[..., np.ndarray]:
    """Samples of named shapes: normal, lognormal, cauchy, t2, poisson, mixture."""

    def make(shape: str = "normal", n: int = 10_000, shift: float = 0.0) -> np.ndarray:
        if shape == "normal":
            x = rng.normal(size=n)
        elif shape == "lognormal":
            x = rng.lognormal(size=n)
        elif shape == "cauchy":
            x = rng.standard_cauchy(size=n)
        elif shape == "t2":
            x = rng.standard_t(2, size=n)
        elif shape == "poisson":
            x = rng.poisson(3.0, size=n).astype(np.float64)
        elif shape == "mixture":
            pick = rng.random(n) < 0.3
            x = np.where(pick, rng.normal(5, 0.5, n), rng.normal(0, 1, n))
            x[rng.random(n) < 0.05] = 0.0  # an atom inside the continuous part
        else:
            raise ValueError(shape)
        return x + shift

    return make
