"""Type stubs of the Rust extension. Documentation of every public name lives here."""

from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypedDict, final, overload

import numpy as np
import numpy.typing as npt

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
    "ReferenceMismatchError",
    "chi2_homogeneity",
    "compare",
    "compare_many",
    "js_distance",
    "kolmogorov_sf",
    "ks_pvalue",
    "psi",
    "two_proportion_pvalue",
    "update_many",
]

FORMAT_VERSION: int
"""Version of the binary format written by every ``to_bytes``."""

PSI_EPSILON: float
"""Floor applied to bin shares in PSI (1e-4) so empty bins give a finite figure."""

class DriftlineError(Exception):
    """Root of every driftline error."""

class DriftCoreError(DriftlineError):
    """An error raised by drift_core."""

class InvalidInputError(DriftCoreError):
    """Values or parameters drift_core cannot use (empty, all missing, wrong type, out of range)."""

class ReferenceMismatchError(DriftCoreError):
    """A sketch used with a reference (or merged with a sketch) it was not made for."""

class DecodeError(DriftCoreError):
    """Bytes that are not a valid profile or sketch of this format version."""

ArrayLike = npt.ArrayLike | Sequence[float | None]

@final
class NumericReference:
    """Profile of a numeric feature's reference distribution.

    Holds ``bins`` reference-quantile edges with the exact reference count in each bin
    ``(e[j-1], e[j]]`` (outer bins open-ended), so KS is evaluated on exact CDFs at the
    edges: the binned KS is at most the exact two-sample KS and short of it by at most
    ``ks_bound`` (the largest reference share strictly inside one bin: ~1/bins for
    continuous data, 0 when the data has at most ``bins`` distinct values, each of which
    then becomes an edge). PSI uses ``psi_bins`` reference-quantile bins, a subset of the
    edges; ties collapse duplicate edges. NaN is missing; ±inf are ordinary values in the
    outer bins but are left out of the mean and standard deviation.
    """

    @staticmethod
    def build(values: ArrayLike, bins: int = 1024, psi_bins: int = 10) -> NumericReference:
        """Builds a profile. Numbers only (bool, int, float; None or NaN = missing).

        Raises InvalidInputError on empty or all-missing input, non-numeric dtypes,
        more than one dimension, ``bins`` outside [2, 65536] or ``psi_bins > bins``.
        """
    @staticmethod
    def from_bytes(data: bytes) -> NumericReference:
        """Decodes ``to_bytes`` output; DecodeError on truncated, corrupted or foreign bytes."""
    def to_bytes(self) -> bytes:
        """Versioned, checksummed binary form."""
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    @property
    def kind(self) -> Literal["numeric"]: ...
    @property
    def bins(self) -> int:
        """Requested KS resolution."""
    @property
    def psi_bins(self) -> int:
        """Requested number of PSI bins."""
    @property
    def edges(self) -> npt.NDArray[np.float64]:
        """Sorted distinct bin edges (len = number of bins - 1)."""
    @property
    def counts(self) -> npt.NDArray[np.uint64]:
        """Reference count per bin."""
    @property
    def slots(self) -> npt.NDArray[np.uint64]:
        """Reference count per slot: inside bin j, at edge j, ..., above every edge."""
    @property
    def psi_edges(self) -> npt.NDArray[np.float64]: ...
    @property
    def psi_counts(self) -> npt.NDArray[np.uint64]: ...
    @property
    def n(self) -> int:
        """Non-missing reference values."""
    @property
    def missing(self) -> int: ...
    @property
    def ks_bound(self) -> float:
        """Largest amount by which the binned KS can fall short of the exact KS."""
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...
    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the profile; sketches carry it."""
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class CategoricalReference:
    """Profile of a categorical feature's reference distribution.

    Tracks the ``max_categories`` most frequent categories (ties by name) and folds the
    rest into an "other" bucket; remembers the other categories by 64-bit hash (up to
    65,536 of them) so windows can count values never seen in the reference.
    """

    @staticmethod
    def build(values: Iterable[object], max_categories: int = 100) -> CategoricalReference:
        """Builds a profile from categories: str, None/NaN = missing, anything else by str()."""
    @staticmethod
    def from_bytes(data: bytes) -> CategoricalReference: ...
    def to_bytes(self) -> bytes: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    @property
    def kind(self) -> Literal["categorical"]: ...
    @property
    def categories(self) -> list[str]:
        """Tracked categories, most frequent first."""
    @property
    def counts(self) -> npt.NDArray[np.uint64]:
        """Count per tracked category, then the "other" count."""
    @property
    def n(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def other_truncated(self) -> bool:
        """True when more untracked categories existed than could be remembered."""
    @property
    def fingerprint(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class NumericSketch:
    """One window's values of one numeric feature, counted in its reference's bins.

    Mergeable (``merge``) and serialisable (``to_bytes``; about 1-2 KiB at 1024 bins).
    """

    def __new__(cls, reference: NumericReference) -> NumericSketch: ...
    def update(self, values: ArrayLike) -> None:
        """Adds values (zero-copy for contiguous float64; GIL released on large arrays)."""
    def merge(self, other: NumericSketch) -> None:
        """Adds another sketch of the same reference (ReferenceMismatchError otherwise)."""
    def copy(self) -> NumericSketch: ...
    @property
    def reference(self) -> NumericReference: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes, reference: NumericReference) -> NumericSketch:
        """Decodes a sketch; ReferenceMismatchError if it was made for another reference."""
    def __reduce__(self) -> tuple[Any, tuple[bytes, NumericReference]]: ...
    @property
    def kind(self) -> Literal["numeric"]: ...
    @property
    def counts(self) -> npt.NDArray[np.uint64]:
        """Count per bin (e[j-1], e[j]]."""
    @property
    def slots(self) -> npt.NDArray[np.uint64]:
        """Count per slot: inside bin j, at edge j, ..., above every edge."""
    @property
    def n(self) -> int:
        """Non-missing values counted."""
    @property
    def missing(self) -> int: ...
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def sum(self) -> float:
        """Sum of the finite values."""
    @property
    def sum_sq(self) -> float: ...
    @property
    def infinite(self) -> int: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float:
        """Population standard deviation of the finite values."""
    def __eq__(self, value: object, /) -> bool: ...

@final
class CategoricalSketch:
    """One window's values of one categorical feature, in its reference's buckets.

    ``max_categories + 2`` counters whatever the window's cardinality.
    """

    def __new__(cls, reference: CategoricalReference) -> CategoricalSketch: ...
    def update(self, values: Iterable[object]) -> None:
        """Adds categories (str; None/NaN = missing; others by str()). All or nothing."""
    def merge(self, other: CategoricalSketch) -> None: ...
    def copy(self) -> CategoricalSketch: ...
    @property
    def reference(self) -> CategoricalReference: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes, reference: CategoricalReference) -> CategoricalSketch: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes, CategoricalReference]]: ...
    @property
    def kind(self) -> Literal["categorical"]: ...
    @property
    def counts(self) -> npt.NDArray[np.uint64]:
        """Count per tracked category, then other-known, then never-seen."""
    @property
    def n(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def unseen(self) -> int:
        """Values of categories never seen in the reference."""
    def __eq__(self, value: object, /) -> bool: ...

#: (numbers, strings, n_numbers, n_strings, n_present, absent): float64 with NaN where a
#: row has no number; the strings (None where a row has none), or None if the column has
#: none; the rows without the key
EventColumn = tuple[
    npt.NDArray[np.float64], list[str | None] | None, int, int, int, npt.NDArray[np.uint32]
]

@final
class EventDecoder:
    """Decodes JSON prediction events (single events and batch envelopes) into columns
    per (model, version). It accepts only input it is sure of; anything else is left to
    the caller as a rejected message or event span."""

    def __new__(
        cls,
        event_schema: str,
        batch_schema: str,
        *,
        max_message_bytes: int,
        max_events: int,
        max_features: int,
        max_string_chars: int,
        min_ts_ms: int,
        max_future_ms: int | None = None,
    ) -> EventDecoder: ...
    def decode(
        self, messages: Sequence[bytes], now_ms: int | None = None
    ) -> tuple[list[EventGroup], list[tuple[int, int, int]]]:
        """(groups, rejected): accepted events as columns per (model, version), and
        (message index, start, end) of what the caller must decode itself (-1, -1: the
        whole message)."""
    def spans(self, message: bytes) -> list[tuple[int, int]]:
        """(start, end) of each event of a message: its envelope's items, or the whole
        message for a single event; empty for anything else."""

@final
class EventGroup:
    """The events of one (model, version) from one decode call, in arrival order."""

    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def message(self) -> npt.NDArray[np.uint32]:
        """Index of the message each row came from."""
    @property
    def seq(self) -> npt.NDArray[np.uint32]:
        """Position of each row among all accepted events of the call."""
    @property
    def item(self) -> npt.NDArray[np.uint32]:
        """Position of each row's event in its message (0 for a single event)."""
    @property
    def ts(self) -> npt.NDArray[np.int64]:
        """Event time in epoch ms (0 for rows listed in ``ts_text``)."""
    @property
    def ts_text(self) -> list[tuple[int, str]]:
        """(row, text) of event times given as text, for the caller to parse."""
    @property
    def event_id(self) -> list[str]: ...
    @property
    def latency(self) -> npt.NDArray[np.float64]: ...
    @property
    def error(self) -> npt.NDArray[np.bool_]: ...
    @property
    def prediction(self) -> EventColumn: ...
    @property
    def features(self) -> dict[str, EventColumn]: ...

@final
class QuantileSketch:
    """DDSketch: ``quantile(q)`` is within ``relative_accuracy * |x|`` of x, the exact
    value at rank ``floor(q * (count - 1))`` (NumPy ``method="lower"``), unless more than
    ``max_bins`` buckets per sign were needed (a dynamic range above 1e17 at defaults).
    NaN is missing; ±inf are counted in ``infinite`` and left out. Merging is exact.
    """

    def __new__(cls, relative_accuracy: float = 0.01, max_bins: int = 2048) -> QuantileSketch: ...
    def update(self, values: ArrayLike) -> None: ...
    def merge(self, other: QuantileSketch) -> None: ...
    def copy(self) -> QuantileSketch: ...
    def quantile(self, q: float) -> float:
        """Quantile for q in [0, 1]; NaN when empty."""
    def quantiles(self, qs: Sequence[float]) -> list[float]: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> QuantileSketch: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    @property
    def relative_accuracy(self) -> float: ...
    @property
    def max_bins(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def infinite(self) -> int: ...
    @property
    def sum(self) -> float: ...
    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    def __eq__(self, value: object, /) -> bool: ...

class NumericFigures(TypedDict):
    """Figures of a numeric feature in one window (NaN where the window has no values)."""

    kind: Literal["numeric"]
    n: int
    missing: int
    missing_share: float
    reference_missing_share: float
    missing_pvalue: float
    ks: float
    ks_pvalue: float
    ks_bound: float
    psi: float
    wasserstein: float
    wasserstein_norm: float
    mean: float
    std: float
    min: float
    max: float
    reference_mean: float
    reference_std: float

class CategoricalFigures(TypedDict):
    """Figures of a categorical feature in one window."""

    kind: Literal["categorical"]
    n: int
    missing: int
    missing_share: float
    reference_missing_share: float
    missing_pvalue: float
    chi2: float
    chi2_dof: int
    chi2_pvalue: float
    js: float
    psi: float
    unseen_share: float

Figures = NumericFigures | CategoricalFigures

@overload
def compare(reference: NumericReference, sketch: NumericSketch) -> NumericFigures: ...
@overload
def compare(reference: CategoricalReference, sketch: CategoricalSketch) -> CategoricalFigures: ...
@overload
def compare(
    reference: NumericReference | CategoricalReference,
    sketch: NumericSketch | CategoricalSketch,
) -> Figures:
    """Compares one window sketch with its reference.

    Numeric: KS statistic and asymptotic p-value, PSI, Wasserstein-1 (NaN when either side
    holds ±inf), missing-share test. Categorical: chi-square homogeneity test, Jensen-
    Shannon distance (base 2), PSI over the buckets, unseen share, missing-share test.
    """

def compare_many(
    pairs: Sequence[
        tuple[NumericReference, NumericSketch] | tuple[CategoricalReference, CategoricalSketch]
    ],
) -> list[Figures]:
    """``compare`` for many pairs in one call, computed without the GIL."""

def update_many(sketches: Sequence[NumericSketch], matrix: ArrayLike) -> None:
    """Updates ``sketches[j]`` with column j of a (rows, features) numeric matrix."""

def kolmogorov_sf(n: int, x: float) -> float:
    """P(D_n >= x) for the one-sample two-sided Kolmogorov distribution."""

def ks_pvalue(statistic: float, n1: int, n2: int) -> float:
    """Two-sample KS p-value as SciPy's ``ks_2samp(method="asymp")``: within 1e-3 of it;
    below 1e-7 a tail approximation (within 20% down to 1e-30 at n >= 1000, conservative
    otherwise). Well under a microsecond at any n."""

def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """PSI = sum((a - e) ln(a / e)) over count shares floored at PSI_EPSILON."""

def js_distance(p: Sequence[int], q: Sequence[int]) -> float:
    """Jensen-Shannon distance (base 2) between two count vectors."""

def chi2_homogeneity(a: Sequence[int], b: Sequence[int]) -> tuple[float, int, float]:
    """Chi-square homogeneity test of two count vectors: (statistic, dof, p-value)."""

def two_proportion_pvalue(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided pooled two-proportion z-test p-value."""
