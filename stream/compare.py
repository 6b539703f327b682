"""``driftline compare REFERENCE CURRENT``: the one-shot batch check for scripts and CI.

Reads two tables (Parquet, CSV or NDJSON), profiles every column of the reference with
drift_core and compares the current data with it: KS, p-value and PSI for numeric columns,
chi-square, Jensen-Shannon and PSI for categorical ones. A column drifts when its PSI or
(numeric) KS exceeds the thresholds. Exit codes: 0 done (and no drift, with
``--fail-on-drift``), 1 drift found with ``--fail-on-drift``, 2 bad input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

import drift_core as dc
from stream.replay import ReplayError, scan


def compare_tables(
    reference: str | Path,
    current: str | Path,
    columns: Sequence[str] | None = None,
    psi_threshold: float = 0.2,
    ks_threshold: float = 0.15,
) -> dict[str, Any]:
    ref = scan([reference]).collect()
    cur = scan([current]).collect()
    wanted = list(columns) if columns else [c for c in ref.columns if c in cur.columns]
    for name in wanted:
        for frame, where in ((ref, reference), (cur, current)):
            if name not in frame.columns:
                raise ReplayError(
                    f"{where}: no column {name!r} (it has {', '.join(frame.columns)})"
                )
    if not wanted:
        raise ReplayError(f"{reference} and {current} have no column in common")
    results: dict[str, Any] = {}
    for name in wanted:
        r, c = ref[name], cur[name]
        try:
            if r.dtype.is_numeric():
                if not c.dtype.is_numeric():
                    raise ReplayError(
                        f"{current}: column {name!r} is {c.dtype} but numeric in {reference}"
                    )
                numeric = dc.NumericReference.build(r.cast(pl.Float64).to_numpy())
                sketch = dc.NumericSketch(numeric)
                sketch.update(c.cast(pl.Float64).to_numpy())
                raw: dict[str, Any] = dict(dc.compare(numeric, sketch))
            else:
                categorical = dc.CategoricalReference.build(r.cast(pl.String).to_list())
                cat_sketch = dc.CategoricalSketch(categorical)
                cat_sketch.update(c.cast(pl.String).to_list())
                raw = dict(dc.compare(categorical, cat_sketch))
        except dc.InvalidInputError as exc:
            raise ReplayError(f"column {name!r}: {exc}") from None
        figures: dict[str, Any] = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in raw.items()
        }
        psi, ks = figures.get("psi"), figures.get("ks")
        figures["drifted"] = bool(
            (psi is not None and psi > psi_threshold) or (ks is not None and ks > ks_threshold)
        )
        results[name] = figures
    drifted = [k for k, f in results.items() if f["drifted"]]
    return {
        "schema": "driftline.compare/v1",
        "reference": str(reference),
        "current": str(current),
        "thresholds": {"psi": psi_threshold, "ks": ks_threshold},
        "columns": results,
        "drifted": drifted,
        "share_drifted": len(drifted) / len(results),
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"{'column':24} {'kind':12} {'n':>8} {'ks':>7} {'p-value':>9} {'psi':>7}  verdict"]
    for name, f in result["columns"].items():
        ks = "-" if f.get("ks") is None else f"{f['ks']:.3f}"
        p = f.get("ks_pvalue", f.get("chi2_pvalue"))
        p_text = "-" if p is None else f"{p:.2e}"
        psi = "-" if f.get("psi") is None else f"{f['psi']:.3f}"
        verdict = "DRIFT" if f["drifted"] else "ok"
        lines.append(
            f"{name[:24]:24} {f['kind']:12} {f['n']:>8} {ks:>7} {p_text:>9} {psi:>7}  {verdict}"
        )
    lines.append(f"\n{len(result['drifted'])} of {len(result['columns'])} columns drifted")
    return "\n".join(lines)
