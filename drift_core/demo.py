"""A first look at drift_core: profile a reference, feed windows, print the figures.

    python -m drift_core.demo

Builds reference profiles of a small synthetic credit model's features, then streams
six hourly windows through window sketches; from the fourth window on, ``amount`` shifts
and a new ``country`` appears. Each window is compared with the reference in one batch
call and the figures that breach the default thresholds (PSI > 0.2, KS > 0.15) are
flagged.
"""

from __future__ import annotations

import time

import numpy as np

import drift_core as dc
from drift_core import stats

PSI_THRESHOLD = 0.2
KS_THRESHOLD = 0.15
COUNTRIES = ["DE", "FR", "NL", "IT", "ES"]


def make_rows(rng: np.random.Generator, n: int, drift: bool) -> dict[str, np.ndarray]:
    amount = rng.lognormal(3.0 + (0.6 if drift else 0.0), 0.8, n)
    age = rng.normal(41, 12, n).round()
    age[rng.random(n) < 0.02] = np.nan  # missing ages
    p = [0.4, 0.25, 0.15, 0.12, 0.08]
    country = rng.choice(COUNTRIES, size=n, p=p).astype(object)
    if drift:
        country[rng.random(n) < 0.15] = "PL"  # a market the model never saw
    score = 1 / (1 + np.exp(-(amount / 40 - 1.5)))
    return {"amount": amount, "age": age, "country": country, "score": score}


def main() -> None:
    rng = np.random.default_rng(7)
    training = make_rows(rng, 200_000, drift=False)
    t0 = time.perf_counter()
    references: dict[str, dc.NumericReference | dc.CategoricalReference] = {
        "amount": dc.NumericReference.build(training["amount"]),
        "age": dc.NumericReference.build(training["age"]),
        "country": dc.CategoricalReference.build(training["country"].tolist()),
        "score": dc.NumericReference.build(training["score"]),
    }
    print(f"reference profiles built from 200,000 rows in {time.perf_counter() - t0:.2f} s")
    for name, ref in references.items():
        print(f"  {name:8} {ref!r}  ({len(ref.to_bytes()):,} bytes)")

    print("\np-value: KS for numeric features, chi-square for categorical ones")
    print(f"{'window':>6}  {'feature':8} {'n':>6} {'ks':>7} {'p-value':>9} {'psi':>7}  flag")
    for hour in range(6):
        drift = hour >= 3
        rows = make_rows(rng, 20_000, drift)
        sketches: dict[str, dc.NumericSketch | dc.CategoricalSketch] = {}
        for name, ref in references.items():
            if isinstance(ref, dc.NumericReference):
                num = dc.NumericSketch(ref)
                # events arrive in micro-batches; sketches merge them
                for part in np.array_split(rows[name], 4):
                    num.update(part)
                sketches[name] = num
            else:
                cat = dc.CategoricalSketch(ref)
                cat.update(rows[name].tolist())
                sketches[name] = cat
        pairs = [(references[k], sketches[k]) for k in references]
        for name, figures in zip(references, dc.compare_many(pairs), strict=True):  # type: ignore[arg-type]
            breaches = []
            if stats.breached("psi", figures["psi"], PSI_THRESHOLD):
                breaches.append("psi")
            if figures["kind"] == "numeric":
                ks, pvalue = f"{figures['ks']:7.3f}", figures["ks_pvalue"]
                if stats.breached("ks", figures["ks"], KS_THRESHOLD):
                    breaches.append("ks")
            else:
                ks, pvalue = "      -", figures["chi2_pvalue"]
            flag = ("DRIFT " + ",".join(breaches)) if breaches else ""
            print(
                f"{hour:>6}  {name:8} {figures['n']:>6} {ks} {pvalue:9.2e} "
                f"{figures['psi']:7.3f}  {flag}"
            )
        latency = dc.QuantileSketch()
        latency.update(rng.lognormal(2.5 + (0.5 if drift else 0.0), 0.5, 20_000))
        p50, p95, p99 = latency.quantiles([0.5, 0.95, 0.99])
        print(f"{'':6}  latency ms p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f}")


if __name__ == "__main__":
    main()
