"""KS statistic and p-value against SciPy on raw samples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

import drift_core as dc

SHAPES = ["normal", "lognormal", "cauchy", "t2", "poisson", "mixture"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("shift", "window"), [(0.0, 500), (0.05, 5_000), (0.5, 2_000)])
def test_binned_ks_within_stated_bound_of_scipy(
    make_sample: Callable[..., np.ndarray], shape: str, shift: float, window: int
) -> None:
    reference = make_sample(shape, n=20_000)
    current = make_sample(shape, n=window, shift=shift)
    ref = dc.NumericReference.build(reference)
    sketch = dc.NumericSketch(ref)
    sketch.update(current)
    got = dc.compare(ref, sketch)
    exact = stats.ks_2samp(reference, current, method="asymp").statistic
    # the binned statistic never exceeds the exact one and falls short by at most ks_bound
    assert got["ks"] <= exact + 1e-12
    assert exact - got["ks"] <= got["ks_bound"] + 1e-12
    # and the bound itself is what the module promises: at most the reference's worst case
    assert got["ks_bound"] <= ref.ks_bound + 1e-12
    assert ref.ks_bound <= 1.0 / 1024 + 1.0 / ref.n


def test_discrete_reference_gives_exact_ks(make_sample: Callable[..., np.ndarray]) -> None:
    reference = make_sample("poisson", n=50_000)
    current = make_sample("poisson", n=3_000) + (np.arange(3_000) % 3 == 0)
    ref = dc.NumericReference.build(reference)
    assert ref.ks_bound == 0.0
    sketch = dc.NumericSketch(ref)
    sketch.update(current)
    got = dc.compare(ref, sketch)
    exact = stats.ks_2samp(reference, current, method="asymp").statistic
    assert got["ks"] == pytest.approx(exact, abs=1e-12)
    assert got["ks_bound"] == 0.0


@pytest.mark.parametrize("n1", [20, 100, 1_000, 100_000])
@pytest.mark.parametrize("n2", [15, 30, 500, 10_000, 1_000_000])
def test_pvalue_within_1e3_of_scipy_asymptotic(n1: int, n2: int) -> None:
    en = round(n1 * n2 / (n1 + n2))
    for d in np.concatenate([np.linspace(0.001, 0.999, 120), [0.5 / en, 1.0 / en, 1 - 1 / en]]):
        ours = dc.ks_pvalue(float(d), n1, n2)
        # SciPy's ks_2samp(method="asymp") is kstwo.sf(d, round(n1 n2 / (n1 + n2)))
        theirs = float(stats.kstwo.sf(d, en))
        assert abs(ours - theirs) <= 1e-3, (d, ours, theirs)


def test_pvalue_matches_ks_2samp_on_raw_samples(make_sample: Callable[..., np.ndarray]) -> None:
    a = make_sample("normal", n=3_000)
    b = make_sample("normal", n=700, shift=0.1)
    res = stats.ks_2samp(a, b, method="asymp")
    assert dc.ks_pvalue(float(res.statistic), 3_000, 700) == pytest.approx(res.pvalue, abs=1e-3)


@pytest.mark.parametrize("n", [20, 100, 1_000, 18_182])
def test_far_tail_pvalue_keeps_its_magnitude(n: int) -> None:
    for d in np.linspace(0.05, 0.9, 60):
        exact = float(stats.kstwo.sf(d, n))
        ours = dc.kolmogorov_sf(n, float(d))
        if 1e-300 < exact < 1e-8:
            # never reports a stronger signal than the exact distribution, up to 10%
            assert 0.9 * exact <= ours <= 1e-7, (d, exact, ours)
            if n >= 1_000 and exact > 1e-30:
                assert ours == pytest.approx(exact, rel=0.2, abs=0.0)


def test_small_samples_use_exact_distribution() -> None:
    for n in range(1, 15):
        for d in np.linspace(0.01, 0.99, 50):
            assert dc.kolmogorov_sf(n, float(d)) == pytest.approx(
                float(stats.kstwo.sf(d, n)), abs=1e-9
            )


def test_compare_reports_pvalue_of_its_statistic(make_sample: Callable[..., np.ndarray]) -> None:
    ref = dc.NumericReference.build(make_sample("normal", n=5_000))
    sk = dc.NumericSketch(ref)
    sk.update(make_sample("normal", n=800, shift=0.4))
    got = dc.compare(ref, sk)
    assert got["ks_pvalue"] == dc.ks_pvalue(got["ks"], ref.n, sk.n)
    assert got["ks_pvalue"] < 1e-3  # a 0.4 sd shift on 800 rows is clearly detected


def test_kolmogorov_edges() -> None:
    assert dc.kolmogorov_sf(10, 0.0) == 1.0
    assert dc.kolmogorov_sf(10, 1.0) == 0.0
    assert np.isnan(dc.ks_pvalue(0.1, 0, 10))
