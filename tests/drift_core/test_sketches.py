"""Sketch algebra (merge, bytes) as properties, batch APIs, pickling and bad input."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import drift_core as dc

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
values_arrays = hnp.arrays(np.float64, st.integers(0, 400), elements=floats)
categories = st.lists(st.one_of(st.none(), st.sampled_from("abcdefg"), st.text(max_size=4)))

_REF = dc.NumericReference.build(np.random.default_rng(1).normal(size=5_000), bins=256)
_DISCRETE = dc.NumericReference.build(np.arange(50, dtype=float) % 7)
_CAT = dc.CategoricalReference.build([*list("aaaabbbcc"), "d", "e", None], max_categories=3)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(values_arrays, st.integers(0, 400), st.sampled_from([_REF, _DISCRETE]))
def test_numeric_merge_of_halves_equals_whole(x: np.ndarray, cut: int, ref: object) -> None:
    assert isinstance(ref, dc.NumericReference)
    cut = min(cut, len(x))
    whole, a, b = dc.NumericSketch(ref), dc.NumericSketch(ref), dc.NumericSketch(ref)
    whole.update(x)
    a.update(x[:cut])
    b.update(x[cut:])
    a.merge(b)
    assert np.array_equal(a.slots, whole.slots)
    assert (a.n, a.missing, a.infinite) == (whole.n, whole.missing, whole.infinite)
    assert a.min == whole.min or (np.isinf(a.min) and np.isinf(whole.min))
    assert a.max == whole.max or (np.isinf(a.max) and np.isinf(whole.max))
    # float sums are not associative: equal up to rounding relative to the magnitudes
    finite = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        scale = float(np.sum(np.abs(finite))) if finite.size else 0.0
    assert abs(a.sum - whole.sum) <= 1e-12 * scale or not np.isfinite(scale)


@PROPS
@given(values_arrays)
def test_numeric_counts_match_searchsorted(x: np.ndarray) -> None:
    sk = dc.NumericSketch(_REF)
    sk.update(x)
    finite_or_inf = x[~np.isnan(x)]
    expected = np.bincount(
        np.searchsorted(_REF.edges, finite_or_inf, side="left"), minlength=len(_REF.edges) + 1
    )
    assert np.array_equal(sk.counts, expected)
    assert sk.missing == int(np.isnan(x).sum())


@PROPS
@given(values_arrays)
def test_numeric_bytes_round_trip(x: np.ndarray) -> None:
    sk = dc.NumericSketch(_REF)
    sk.update(x)
    back = dc.NumericSketch.from_bytes(sk.to_bytes(), _REF)
    assert back == sk
    assert pickle.loads(pickle.dumps(sk)) == sk


@PROPS
@given(categories, categories)
def test_categorical_merge_and_round_trip(a: list[str | None], b: list[str | None]) -> None:
    whole, left, right = (dc.CategoricalSketch(_CAT) for _ in range(3))
    whole.update(a + b)
    left.update(a)
    right.update(b)
    left.merge(right)
    assert left == whole
    assert whole.n + whole.missing == len(a) + len(b)
    assert dc.CategoricalSketch.from_bytes(whole.to_bytes(), _CAT) == whole
    assert pickle.loads(pickle.dumps(whole)) == whole


@PROPS
@given(values_arrays, st.integers(0, 400))
def test_quantile_merge_of_halves_equals_whole(x: np.ndarray, cut: int) -> None:
    cut = min(cut, len(x))
    whole, a, b = dc.QuantileSketch(), dc.QuantileSketch(), dc.QuantileSketch()
    whole.update(x)
    a.update(x[:cut])
    b.update(x[cut:])
    a.merge(b)
    assert (a.count, a.missing, a.infinite) == (whole.count, whole.missing, whole.infinite)
    for q in (0.0, 0.5, 0.99, 1.0):
        assert a.quantile(q) == whole.quantile(q) or (
            np.isnan(a.quantile(q)) and np.isnan(whole.quantile(q))
        )
    assert dc.QuantileSketch.from_bytes(whole.to_bytes()).quantile(0.5) == whole.quantile(0.5) or (
        whole.count == 0
    )


def _encoded() -> list[tuple[str, bytes, Callable[[bytes], object]]]:
    sk = dc.NumericSketch(_REF)
    sk.update(np.linspace(-3, 3, 1000))
    cs = dc.CategoricalSketch(_CAT)
    cs.update(["a", "zz", None])
    q = dc.QuantileSketch()
    q.update(np.arange(1.0, 100.0))
    return [
        ("numeric reference", _REF.to_bytes(), dc.NumericReference.from_bytes),
        ("categorical reference", _CAT.to_bytes(), dc.CategoricalReference.from_bytes),
        ("numeric sketch", sk.to_bytes(), lambda b: dc.NumericSketch.from_bytes(b, _REF)),
        ("categorical sketch", cs.to_bytes(), lambda b: dc.CategoricalSketch.from_bytes(b, _CAT)),
        ("quantile sketch", q.to_bytes(), dc.QuantileSketch.from_bytes),
    ]


@pytest.mark.parametrize(("name", "data", "decode"), _encoded(), ids=lambda v: str(v)[:20])
def test_truncated_and_corrupted_bytes_are_clear_errors(
    name: str, data: bytes, decode: Callable[[bytes], object]
) -> None:
    decode(data)  # the intact bytes decode
    for cut in range(len(data)):
        with pytest.raises(dc.DecodeError, match=r"truncated|ends early"):
            decode(data[:cut])
    rng = np.random.default_rng(0)
    for _ in range(300):
        corrupted = bytearray(data)
        i = int(rng.integers(len(data)))
        corrupted[i] ^= 1 << int(rng.integers(8))
        with pytest.raises(dc.DecodeError):
            decode(bytes(corrupted))
    other_version = bytearray(data)
    other_version[4] = 99
    with pytest.raises(dc.DecodeError, match="format version 99 is not supported"):
        decode(bytes(other_version))
    with pytest.raises(dc.DecodeError, match="not a driftline"):
        decode(b"PK\x03\x04" + data[4:])


@PROPS
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    for _, _, decode in _encoded():
        with pytest.raises(dc.DecodeError):
            decode(data)


def test_wrong_kind_of_bytes_is_named() -> None:
    with pytest.raises(dc.DecodeError, match="expected a numeric sketch, got a quantile sketch"):
        dc.NumericSketch.from_bytes(dc.QuantileSketch().to_bytes(), _REF)


def test_sketch_of_other_reference_is_refused(make_sample: Callable[..., np.ndarray]) -> None:
    other = dc.NumericReference.build(make_sample("normal", n=1_000))
    sk = dc.NumericSketch(_REF)
    with pytest.raises(dc.ReferenceMismatchError, match="made for reference"):
        dc.NumericSketch.from_bytes(sk.to_bytes(), other)
    with pytest.raises(dc.ReferenceMismatchError, match="different references"):
        sk.merge(dc.NumericSketch(other))
    with pytest.raises(dc.ReferenceMismatchError):
        dc.compare(other, sk)
    with pytest.raises(dc.InvalidInputError, match="pair"):
        dc.compare(_CAT, sk)
    q = dc.QuantileSketch(relative_accuracy=0.02)
    with pytest.raises(dc.ReferenceMismatchError, match="different parameters"):
        q.merge(dc.QuantileSketch())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([]), "empty"),
        (np.full(10, np.nan), "all 10 values are missing"),
        (np.array(["a", "b"]), "dtype <U1"),
        (np.zeros((3, 2)), "1-D"),
        ("not numbers", "dtype <U11"),
        ([1.0, object()], "numbers"),
    ],
)
def test_bad_reference_input_is_a_clear_error(values: object, message: str) -> None:
    with pytest.raises(dc.InvalidInputError, match=message):
        dc.NumericReference.build(values)  # type: ignore[arg-type]


def test_bad_parameters() -> None:
    x = np.arange(100.0)
    with pytest.raises(dc.InvalidInputError, match="bins must be between"):
        dc.NumericReference.build(x, bins=1)
    with pytest.raises(dc.InvalidInputError, match="must not exceed bins"):
        dc.NumericReference.build(x, bins=8, psi_bins=10)
    with pytest.raises(dc.InvalidInputError, match="max_categories"):
        dc.CategoricalReference.build(["a"], max_categories=0)
    with pytest.raises(dc.InvalidInputError, match="relative_accuracy"):
        dc.QuantileSketch(relative_accuracy=0.0)
    with pytest.raises(dc.InvalidInputError, match="not a single string"):
        dc.CategoricalReference.build("abc")
    with pytest.raises(dc.InvalidInputError, match="all 2 values are missing"):
        dc.CategoricalReference.build([None, float("nan")])


def test_accepted_input_types_are_converted() -> None:
    ints = dc.NumericReference.build(np.arange(100, dtype=np.int32))
    lists = dc.NumericReference.build(list(range(100)))
    with_none = dc.NumericReference.build([1.0, None, 3.0])
    assert ints == lists
    assert (with_none.n, with_none.missing) == (2, 1)
    sk = dc.NumericSketch(ints)
    sk.update(np.arange(100, dtype=np.float64)[::2])  # strided view: one copy
    sk.update([True, False])
    assert sk.n == 52
    cs = dc.CategoricalSketch(dc.CategoricalReference.build(["1", "2", "x"]))
    cs.update([1, 2.0, "x", float("nan"), None])  # numbers by str(); NaN missing
    assert (cs.n, cs.missing, cs.unseen) == (3, 2, 1)  # "2.0" was never seen


def test_infinities_are_values_in_outer_bins() -> None:
    ref = dc.NumericReference.build(np.arange(2000.0))
    sk = dc.NumericSketch(ref)
    sk.update(np.array([-np.inf, np.inf, np.inf]))
    assert sk.counts[0] == 1
    assert sk.counts[-1] == 2
    assert sk.infinite == 3
    assert np.isnan(sk.mean)
    got = dc.compare(ref, sk)
    assert 2 / 3 - got["ks_bound"] <= got["ks"] <= 2 / 3


def test_empty_window_gives_nan_figures() -> None:
    sk = dc.NumericSketch(_REF)
    sk.update([np.nan, np.nan])
    got = dc.compare(_REF, sk)
    assert got["n"] == 0
    assert got["missing_share"] == 1.0
    assert all(np.isnan(v) for v in (got["ks"], got["ks_pvalue"], got["psi"], got["wasserstein"]))


def test_batch_apis_equal_single_calls(rng: np.random.Generator) -> None:
    refs = [dc.NumericReference.build(rng.normal(j, 1 + j, size=3_000)) for j in range(6)]
    window = rng.normal(size=(777, 6)) * 2
    window[::50, 2] = np.nan
    many = [dc.NumericSketch(r) for r in refs]
    dc.update_many(many, window)  # C-contiguous: strided columns
    fortran = [dc.NumericSketch(r) for r in refs]
    dc.update_many(fortran, np.asfortranarray(window))
    single = []
    for j, r in enumerate(refs):
        s = dc.NumericSketch(r)
        s.update(window[:, j])
        single.append(s)
    assert many == single == fortran
    batch = dc.compare_many(list(zip(refs, many, strict=True)))
    assert batch == [dc.compare(r, s) for r, s in zip(refs, single, strict=True)]
    with pytest.raises(dc.InvalidInputError, match="3 columns but 6 sketches"):
        dc.update_many(many, window[:, :3])
    with pytest.raises(dc.InvalidInputError, match="appears twice"):
        dc.update_many([many[0], many[0]], window[:, :2])


def test_update_releases_the_gil(rng: np.random.Generator) -> None:
    big = rng.normal(size=30_000_000)
    sk = dc.NumericSketch(_REF)
    started, ticks = threading.Event(), []

    def work() -> None:
        started.set()
        sk.update(big)

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    while t.is_alive():
        ticks.append(1)  # only runs while the update is not holding the GIL
    t.join()
    assert sk.n == len(big)
    assert len(ticks) > 1_000


def test_references_pickle_through_their_own_format() -> None:
    blob = pickle.dumps(_REF)
    assert _REF.to_bytes() in blob
    assert pickle.loads(blob) == _REF
    assert pickle.loads(pickle.dumps(_CAT)) == _CAT
