"""PSI, chi-square, Jensen-Shannon, Wasserstein, missing-share test and quantiles
against independent NumPy / SciPy computations."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

import drift_core as dc


def numpy_psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    e = np.maximum(expected / expected.sum(), eps)
    a = np.maximum(actual / actual.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


@pytest.mark.parametrize("shape", ["normal", "lognormal", "poisson", "mixture"])
@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_psi_equals_numpy_on_same_bins(
    make_sample: Callable[..., np.ndarray], shape: str, shift: float
) -> None:
    reference = make_sample(shape, n=30_000)
    current = make_sample(shape, n=4_000, shift=shift)
    ref = dc.NumericReference.build(reference)
    sk = dc.NumericSketch(ref)
    sk.update(current)
    edges = ref.psi_edges
    assert np.all(np.diff(edges) > 0)
    # bins (e[j-1], e[j]] with open outer bins: searchsorted side="left"
    exp = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=len(edges) + 1)
    act = np.bincount(np.searchsorted(edges, current, side="left"), minlength=len(edges) + 1)
    assert np.array_equal(ref.psi_counts, exp)
    assert dc.compare(ref, sk)["psi"] == pytest.approx(numpy_psi(exp, act), abs=1e-9)
    assert dc.psi(exp.tolist(), act.tolist()) == pytest.approx(numpy_psi(exp, act), abs=1e-12)


def test_psi_bins_are_reference_deciles(make_sample: Callable[..., np.ndarray]) -> None:
    reference = make_sample("normal", n=100_000)
    ref = dc.NumericReference.build(reference)
    assert len(ref.psi_edges) == 9
    shares = ref.psi_counts / ref.n
    np.testing.assert_allclose(shares, 0.1, atol=1e-4)


def test_chi2_and_js_against_scipy(rng: np.random.Generator) -> None:
    cats = np.array(["a", "b", "c", "d", "e", "f"])
    reference = rng.choice(cats, size=20_000, p=[0.3, 0.25, 0.2, 0.15, 0.07, 0.03])
    current = rng.choice(
        np.append(cats, "new"), size=3_000, p=[0.25, 0.25, 0.2, 0.15, 0.07, 0.03, 0.05]
    )
    ref = dc.CategoricalReference.build(reference.tolist(), max_categories=4)
    sk = dc.CategoricalSketch(ref)
    sk.update(current.tolist())
    got = dc.compare(ref, sk)
    # independent bucketing: the 4 tracked categories, everything else in "other"
    tracked = ref.categories
    assert tracked == ["a", "b", "c", "d"]

    def bucket(values: np.ndarray) -> np.ndarray:
        counts = [np.sum(values == c) for c in tracked]
        return np.array([*counts, len(values) - sum(counts)])

    r, w = bucket(reference), bucket(current)
    chi2, p, dof, _ = stats.chi2_contingency(np.vstack([r, w]), correction=False)
    assert got["chi2"] == pytest.approx(chi2, rel=1e-9)
    assert got["chi2_dof"] == dof
    assert got["chi2_pvalue"] == pytest.approx(p, rel=1e-6, abs=1e-300)
    assert got["js"] == pytest.approx(jensenshannon(r / r.sum(), w / w.sum(), base=2), abs=1e-12)
    assert got["psi"] == pytest.approx(numpy_psi(r, w), abs=1e-12)
    assert got["unseen_share"] == pytest.approx(np.mean(current == "new"), abs=1e-12)


@pytest.mark.parametrize("dof", [1, 3, 30, 500])
def test_chi2_pvalue_tail_against_scipy(dof: int) -> None:
    # a 2 x (dof + 1) table built to a range of statistics
    for scale in [0.0, 0.5, 1.0, 3.0, 10.0]:
        a = np.full(dof + 1, 1000)
        b = np.full(dof + 1, 1000)
        b[0] += int(scale * 40 * np.sqrt(dof))
        stat, p, d, _ = stats.chi2_contingency(np.vstack([a, b]), correction=False)
        got = dc.chi2_homogeneity(a.tolist(), b.tolist())
        assert got[0] == pytest.approx(stat, rel=1e-9, abs=1e-12)
        assert got[1] == d
        assert got[2] == pytest.approx(p, rel=1e-8, abs=1e-15)


def test_missing_share_test_equals_2x2_chi_square() -> None:
    for k1, n1, k2, n2 in [(10, 1000, 30, 1000), (0, 500, 5, 500), (100, 10_000, 12, 800)]:
        table = np.array([[k1, n1 - k1], [k2, n2 - k2]])
        _, p, _, _ = stats.chi2_contingency(table, correction=False)
        assert dc.two_proportion_pvalue(k1, n1, k2, n2) == pytest.approx(p, rel=1e-9)


def test_missing_values_are_counted_and_tested(make_sample: Callable[..., np.ndarray]) -> None:
    reference = make_sample("normal", n=10_000)
    reference[:100] = np.nan
    ref = dc.NumericReference.build(reference)
    assert (ref.n, ref.missing) == (9_900, 100)
    current = make_sample("normal", n=1_000)
    current[:200] = np.nan
    sk = dc.NumericSketch(ref)
    sk.update(current)
    got = dc.compare(ref, sk)
    assert (got["n"], got["missing"]) == (800, 200)
    assert got["missing_share"] == pytest.approx(0.2)
    assert got["reference_missing_share"] == pytest.approx(0.01)
    assert got["missing_pvalue"] < 1e-10


def wasserstein_bound(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    """Largest error of the trapezoidal estimate: sum over intervals of width times the
    mass of both samples in the interval (the CDF difference moves by less inside it)."""
    lo = min(reference.min(), current.min())
    hi = max(reference.max(), current.max())
    points = np.concatenate([[lo], edges, [hi]])
    bound = 0.0
    for a, b in itertools.pairwise(points):
        p = np.mean((reference >= a) & (reference <= b))
        q = np.mean((current >= a) & (current <= b))
        bound += (b - a) * (p + q)
    return bound


@pytest.mark.parametrize("shape", ["normal", "lognormal", "mixture"])
def test_wasserstein_within_bound_of_scipy(
    make_sample: Callable[..., np.ndarray], shape: str
) -> None:
    reference = make_sample(shape, n=20_000)
    current = make_sample(shape, n=3_000, shift=0.4)
    ref = dc.NumericReference.build(reference)
    sk = dc.NumericSketch(ref)
    sk.update(current)
    got = dc.compare(ref, sk)
    exact = stats.wasserstein_distance(reference, current)
    assert abs(got["wasserstein"] - exact) <= wasserstein_bound(reference, current, ref.edges)
    assert got["wasserstein"] == pytest.approx(exact, rel=0.02)
    assert got["wasserstein_norm"] == pytest.approx(got["wasserstein"] / reference.std())


def test_moments(make_sample: Callable[..., np.ndarray]) -> None:
    ref = dc.NumericReference.build(make_sample("normal", n=1_000))
    x = make_sample("lognormal", n=12_345)
    x[::100] = np.nan
    x[5] = np.inf
    sk = dc.NumericSketch(ref)
    sk.update(x)
    finite = x[np.isfinite(x)]
    assert sk.n == np.sum(~np.isnan(x))
    assert sk.missing == np.sum(np.isnan(x))
    assert sk.infinite == 1
    assert sk.min == pytest.approx(finite.min())
    assert sk.max == np.inf
    assert sk.sum == pytest.approx(finite.sum(), rel=1e-12)
    assert sk.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert sk.std == pytest.approx(finite.std(), rel=1e-9)
    assert np.isnan(dc.compare(ref, sk)["wasserstein"])  # documented: NaN with ±inf


@pytest.mark.parametrize(("alpha", "max_bins"), [(0.01, 2048), (0.002, 8192)])
def test_quantile_sketch_relative_error_on_lognormal(
    rng: np.random.Generator, alpha: float, max_bins: int
) -> None:
    x = rng.lognormal(3.0, 1.5, size=200_000)
    q = dc.QuantileSketch(relative_accuracy=alpha, max_bins=max_bins)
    q.update(x)
    for p in [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]:
        exact = np.quantile(x, p, method="lower")
        assert abs(q.quantile(p) - exact) <= alpha * exact * (1 + 1e-9), p
    assert q.count == len(x)
    assert q.sum == pytest.approx(x.sum(), rel=1e-12)


def test_quantile_sketch_collapses_low_buckets_only(rng: np.random.Generator) -> None:
    # too few buckets for the range: the lowest ones are folded, the upper quantiles
    # (latency p50 / p95 / p99) keep their guarantee and memory stays bounded
    x = rng.lognormal(3.0, 3.0, size=100_000)
    q = dc.QuantileSketch(relative_accuracy=0.01, max_bins=1000)
    q.update(x)
    for p in [0.5, 0.95, 0.99]:
        exact = np.quantile(x, p, method="lower")
        assert abs(q.quantile(p) - exact) <= 0.01 * exact * (1 + 1e-9)
    assert len(q.to_bytes()) < 1000 * 4
    # the range needed ~1300 buckets, so the lowest quantile was folded
    assert q.quantile(0.0) > np.min(x) * 1.01


def test_quantile_sketch_handles_signs_zero_and_specials(rng: np.random.Generator) -> None:
    x = np.concatenate([rng.normal(size=10_000), np.zeros(100), [np.nan, np.inf, -np.inf]])
    q = dc.QuantileSketch()
    q.update(x)
    assert (q.count, q.missing, q.infinite) == (10_100, 1, 2)
    finite = x[np.isfinite(x)]
    for p in [0.01, 0.3, 0.5, 0.7, 0.99]:
        exact = np.quantile(finite, p, method="lower")
        assert abs(q.quantile(p) - exact) <= 0.01 * abs(exact) + 1e-12
    assert np.isnan(dc.QuantileSketch().quantile(0.5))
    with pytest.raises(dc.InvalidInputError, match=r"quantile must be in \[0, 1\]"):
        q.quantile(1.5)
