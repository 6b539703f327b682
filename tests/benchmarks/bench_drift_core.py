"""drift_core benchmarks: each figure is printed next to a NumPy/SciPy baseline run in the
same process on the same data, as a ratio. Not a test: it asserts nothing.

    python tests/benchmarks/bench_drift_core.py            # full size (10M values)
    python tests/benchmarks/bench_drift_core.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import os

# NumPy's BLAS threads spin on a 2-core machine and steal time from both sides.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy import stats

import drift_core as dc


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest wall time of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_update(n: int, repeat: int) -> None:
    rng = np.random.default_rng(1)
    shapes = {
        "normal": (rng.normal(size=1_000_000), rng.normal(0.1, 1.1, size=n)),
        "lognormal": (rng.lognormal(size=1_000_000), rng.lognormal(0.1, 1.1, size=n)),
        "cauchy": (rng.standard_cauchy(size=1_000_000), rng.standard_cauchy(size=n)),
    }
    print(f"\n== sketch update: {n:,} float64 values into 1024 reference-quantile bins ==")
    header = (
        f"{'data':10} {'drift_core':>12} {'searchsorted':>13} {'histogram':>11} "
        f"{'np.sum':>11} {'vs best numpy':>14} {'of sum rate':>12}"
    )
    print(header + "   (M values/s)")
    for name, (ref_values, x) in shapes.items():
        ref = dc.NumericReference.build(ref_values)
        edges = ref.edges
        sk = dc.NumericSketch(ref)

        def ours(sk: dc.NumericSketch = sk, x: np.ndarray = x) -> None:
            sk.update(x)

        def searchsorted(edges: np.ndarray = edges, x: np.ndarray = x) -> None:
            np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)

        def histogram(edges: np.ndarray = edges, x: np.ndarray = x) -> None:
            np.histogram(x, bins=edges)

        # same bins as searchsorted: a correctness check before timing
        expected = np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
        check = dc.NumericSketch(ref)
        check.update(x)
        assert np.array_equal(check.counts, expected), "bin counts differ from NumPy"

        t_ours = best_of(ours, repeat)
        t_ss = best_of(searchsorted, repeat)
        t_hist = best_of(histogram, repeat)
        t_sum = best_of(x.sum, repeat)

        def rate(t: float) -> float:
            return n / t / 1e6

        print(
            f"{name:10} {rate(t_ours):12.0f} {rate(t_ss):13.0f} {rate(t_hist):11.0f} "
            f"{rate(t_sum):11.0f} {min(t_ss, t_hist) / t_ours:13.1f}x "
            f"{t_sum / t_ours:11.0%}"
        )


def bench_window(features: int, rows: int, ref_rows: int, repeat: int, scipy_repeat: int) -> None:
    rng = np.random.default_rng(2)
    ref_raw = rng.normal(size=(ref_rows, features)) * rng.uniform(0.5, 2, features)
    window = rng.normal(0.05, 1.0, size=(rows, features)) * rng.uniform(0.5, 2, features)
    refs = [dc.NumericReference.build(ref_raw[:, j]) for j in range(features)]
    ref_cols = [np.ascontiguousarray(ref_raw[:, j]) for j in range(features)]
    win_cols = [np.ascontiguousarray(window[:, j]) for j in range(features)]

    def ours() -> list[dc._drift_core.Figures]:
        sketches = [dc.NumericSketch(r) for r in refs]
        dc.update_many(sketches, window)
        return dc.compare_many(list(zip(refs, sketches, strict=True)))

    # the stream engine creates a window's sketches when the window opens; this variant
    # times only what happens to the data: updates and the comparison
    opened = [[dc.NumericSketch(r) for r in refs] for _ in range(repeat)]

    def update_and_compare() -> None:
        sketches = opened.pop()
        dc.update_many(sketches, window)
        dc.compare_many(list(zip(refs, sketches, strict=True)))

    def scipy_loop() -> list[float]:
        return [
            stats.ks_2samp(a, b, method="asymp").statistic
            for a, b in zip(ref_cols, win_cols, strict=True)
        ]

    got = ours()
    exact = scipy_loop()
    worst = max(
        abs(g["ks"] - e) - g["ks_bound"]
        for g, e in zip(got, exact, strict=True)
        if g["kind"] == "numeric"
    )
    assert worst <= 1e-12, "binned KS outside its stated bound"
    t_ours = best_of(ours, repeat)
    t_data = best_of(update_and_compare, repeat)
    t_scipy = best_of(scipy_loop, scipy_repeat)
    print(
        f"\n== window report: {features} features x {rows} rows (reference {ref_rows} rows), "
        f"best of {repeat} (SciPy: of {scipy_repeat}) ==\n"
        f"scipy ks_2samp(method='asymp') loop on raw samples (KS only): {t_scipy * 1e3:8.2f} ms\n"
        f"drift_core, new sketches + update_many + compare_many:        {t_ours * 1e3:8.2f} ms"
        f"  {t_scipy / t_ours:5.0f}x\n"
        f"drift_core, update_many + compare_many (sketches opened):     {t_data * 1e3:8.2f} ms"
        f"  {t_scipy / t_data:5.0f}x\n"
        "(compare_many: KS + bound + p-value, PSI, Wasserstein, moments, missing-share test)"
    )


def bench_pvalue(calls: int) -> None:
    print("\n== KS p-value per call (two-sample, reference n1 = 100000) ==")
    print(f"{'window n2':>10} {'drift_core us':>14} {'scipy us':>9} {'ratio':>8} {'|diff|':>10}")
    n1 = 100_000
    for n2 in (50, 1_000, 10_000, 100_000):
        en = round(n1 * n2 / (n1 + n2))
        d = 1.2 / np.sqrt(en)  # a p-value near 0.1
        t0 = time.perf_counter()
        for _ in range(calls):
            ours = dc.ks_pvalue(d, n1, n2)
        t_ours = (time.perf_counter() - t0) / calls
        k = max(3, calls // 100)
        t0 = time.perf_counter()
        for _ in range(k):
            theirs = float(stats.kstwo.sf(d, en))
        t_scipy = (time.perf_counter() - t0) / k
        print(
            f"{n2:>10} {t_ours * 1e6:14.2f} {t_scipy * 1e6:9.1f} "
            f"{t_scipy / t_ours:7.0f}x {abs(ours - theirs):10.1e}"
        )


def bench_bytes() -> None:
    rng = np.random.default_rng(3)
    ref = dc.NumericReference.build(rng.normal(size=200_000))
    print(f"\n== bytes per numeric sketch ({len(ref.counts)} bins) ==")
    for n in (1_000, 100_000, 10_000_000):
        sk = dc.NumericSketch(ref)
        sk.update(rng.normal(size=n))
        print(f"{n:>12,} values: {len(sk.to_bytes()):6,} bytes")
    cat = dc.CategoricalReference.build([f"c{i % 150}" for i in range(10_000)])
    cs = dc.CategoricalSketch(cat)
    cs.update([f"c{i}" for i in range(100_000)])
    print(f"categorical (100 tracked, 100k distinct in window): {len(cs.to_bytes()):,} bytes")
    q = dc.QuantileSketch()
    q.update(rng.lognormal(3, 1, size=1_000_000))
    print(f"quantile sketch (1M lognormal latencies, alpha 1%): {len(q.to_bytes()):,} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = ap.parse_args()
    if args.quick:
        bench_update(1_000_000, 3)
        bench_window(200, 1000, 10_000, 3, 1)
        bench_pvalue(2_000)
    else:
        bench_update(10_000_000, 5)
        # the reference is profiled once; ks_2samp re-sorts it on every call. A window
        # report takes milliseconds: the best of 20 sees through other jobs on the machine
        bench_window(1000, 1000, 10_000, 20, 2)
        bench_window(1000, 1000, 50_000, 20, 1)
        bench_pvalue(20_000)
    bench_bytes()


if __name__ == "__main__":
    main()
