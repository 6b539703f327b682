"""drift_core: reference profiles, mergeable window sketches and drift statistics.

The heavy lifting is in the Rust extension ``drift_core._drift_core``; this package is its
Python face. Typical use::

    ref = NumericReference.build(training_values)      # once, from reference data
    sk = NumericSketch(ref)                            # one per feature and window
    sk.update(window_values)                           # NumPy arrays, NaN = missing
    figures = compare(ref, sk)                         # {"ks": ..., "psi": ..., ...}
"""

from drift_core import stats
from drift_core._drift_core import (
    FORMAT_VERSION,
    PSI_EPSILON,
    CategoricalReference,
    CategoricalSketch,
    EventDecoder,
    EventGroup,
    NumericReference,
    NumericSketch,
    QuantileSketch,
    chi2_homogeneity,
    compare,
    compare_many,
    js_distance,
    kolmogorov_sf,
    ks_pvalue,
    psi,
    two_proportion_pvalue,
    update_many,
)
from drift_core.errors import (
    DecodeError,
    DriftCoreError,
    DriftlineError,
    InvalidInputError,
    ReferenceMismatchError,
)

Reference = NumericReference | CategoricalReference
Sketch = NumericSketch | CategoricalSketch

__all__ = [
    "FORMAT_VERSION",
    "PSI_EPSILON",
    "CategoricalReference",
    "CategoricalSketch",
    "DecodeError",
    "DriftCoreError",
    "DriftlineError",
    "EventDecoder",
    "EventGroup",
    "InvalidInputError",
    "NumericReference",
    "NumericSketch",
    "QuantileSketch",
    "Reference",
    "ReferenceMismatchError",
    "Sketch",
    "chi2_homogeneity",
    "compare",
    "compare_many",
    "js_distance",
    "kolmogorov_sf",
    "ks_pvalue",
    "psi",
    "stats",
    "two_proportion_pvalue",
    "update_many",
]
