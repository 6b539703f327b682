"""Fuzzing every decoder of serialised state: the five drift_core kinds (``from_bytes``)
and the reference profile container (``stream.profiles``).

Whatever the bytes, a decoder returns a working object or raises the documented error
(``DecodeError``; a sketch decoded against another reference: ``ReferenceMismatchError``;
profiles: ``ProfileError``); never another exception, never a Rust panic, never a hang.
An object a decoder accepts must then work: its bytes round-trip, and updating,
merging, comparing and quantiles raise at most a documented ``DriftlineError``.
"""

from __future__ import annotations

import contextlib
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import drift_core as dc
from stream.profiles import MAGIC, ModelProfile, ProfileError
from tests.fuzzing import fuzz_settings, watchdog_fixture

_watchdog = watchdog_fixture(600)

HEADER = 12  # magic 4, version 2, kind 1, reserved 1, payload length 4
TRAILER = 4  # CRC-32

_rng = np.random.default_rng(7)
VALUES = np.concatenate([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300], _rng.normal(size=300)])
NREF = dc.NumericReference.build(_rng.normal(size=2_000), bins=32, psi_bins=5)
DREF = dc.NumericReference.build(np.arange(60, dtype=np.float64) % 7, bins=16, psi_bins=4)
CREF = dc.CategoricalReference.build([*"aaaabbbccd", "e", "é", None], max_categories=3)
MODEST = np.delete(VALUES[:60], 5)  # both signs, zero, NaN, ±inf; no 1e300
CATEGORIES: list[str | None] = ["a", "b", "c", "zz", None, "é", ""]


def _numeric_sketch(ref: dc.NumericReference, values: np.ndarray) -> dc.NumericSketch:
    sk = dc.NumericSketch(ref)
    sk.update(values)
    return sk


def _categorical_sketch(values: list[str | None]) -> dc.CategoricalSketch:
    sk = dc.CategoricalSketch(CREF)
    sk.update(values)
    return sk


def _quantiles(values: np.ndarray, alpha: float = 0.01, max_bins: int = 2048) -> dc.QuantileSketch:
    sk = dc.QuantileSketch(alpha, max_bins)
    sk.update(values)
    return sk


# ------------------------------------------------------------------ what a decoder must do


def exercise_numeric_reference(ref: dc.NumericReference) -> None:
    assert dc.NumericReference.from_bytes(ref.to_bytes()).to_bytes() == ref.to_bytes()
    sk = dc.NumericSketch(ref)
    sk.update(VALUES)
    dc.compare(ref, sk)
    dc.compare(ref, dc.NumericSketch(ref))
    _ = (ref.edges, ref.counts, ref.psi_counts, ref.mean, ref.std, ref.ks_bound, ref.fingerprint)


def exercise_categorical_reference(ref: dc.CategoricalReference) -> None:
    assert dc.CategoricalReference.from_bytes(ref.to_bytes()).to_bytes() == ref.to_bytes()
    sk = dc.CategoricalSketch(ref)
    sk.update([*CATEGORIES, *ref.categories])
    dc.compare(ref, sk)
    dc.compare(ref, dc.CategoricalSketch(ref))
    _ = (ref.counts, ref.n, ref.missing, ref.fingerprint)


def exercise_numeric_sketch(sk: dc.NumericSketch) -> None:
    assert dc.NumericSketch.from_bytes(sk.to_bytes(), NREF).to_bytes() == sk.to_bytes()
    dc.compare(NREF, sk)
    copy = sk.copy()
    copy.merge(sk)
    copy.update(VALUES)
    fresh = _numeric_sketch(NREF, VALUES)
    fresh.merge(sk)
    dc.compare(NREF, fresh)
    _ = (sk.counts, sk.n, sk.mean, sk.std, sk.min, sk.max)


def exercise_categorical_sketch(sk: dc.CategoricalSketch) -> None:
    assert dc.CategoricalSketch.from_bytes(sk.to_bytes(), CREF).to_bytes() == sk.to_bytes()
    dc.compare(CREF, sk)
    copy = sk.copy()
    copy.merge(sk)
    copy.update(CATEGORIES)
    dc.compare(CREF, copy)
    _ = (sk.counts, sk.n, sk.missing, sk.unseen)


def exercise_quantile_sketch(sk: dc.QuantileSketch) -> None:
    # MODEST, not VALUES: at a tiny relative accuracy a store spanning 1e-3..1e300 has
    # millions of buckets before it collapses; slow, but what the caller asked for
    assert dc.QuantileSketch.from_bytes(sk.to_bytes()).to_bytes() == sk.to_bytes()
    sk.quantiles([0.0, 0.5, 0.95, 0.99, 1.0])
    for other in (_quantiles(MODEST), _quantiles(MODEST, sk.relative_accuracy, sk.max_bins)):
        try:
            other.merge(sk)
        except dc.ReferenceMismatchError:
            continue  # other parameters: refused, as documented
        other.quantiles([0.0, 0.5, 1.0])
    copy = sk.copy()
    copy.update(MODEST)
    copy.quantiles([0.0, 0.5, 0.99, 1.0])
    _ = (sk.count, sk.sum, sk.min, sk.max)


@dataclass(frozen=True)
class Decoder:
    name: str
    decode: Callable[[bytes], Any]
    refuses: tuple[type[Exception], ...]
    exercise: Callable[[Any], None]
    seeds: tuple[bytes, ...]


DECODERS = [
    Decoder(
        "numeric reference",
        dc.NumericReference.from_bytes,
        (dc.DecodeError,),
        exercise_numeric_reference,
        (NREF.to_bytes(), DREF.to_bytes()),
    ),
    Decoder(
        "categorical reference",
        dc.CategoricalReference.from_bytes,
        (dc.DecodeError,),
        exercise_categorical_reference,
        (CREF.to_bytes(),),
    ),
    Decoder(
        "numeric sketch",
        lambda b: dc.NumericSketch.from_bytes(b, NREF),
        (dc.DecodeError, dc.ReferenceMismatchError),
        exercise_numeric_sketch,
        (_numeric_sketch(NREF, VALUES).to_bytes(), dc.NumericSketch(NREF).to_bytes()),
    ),
    Decoder(
        "categorical sketch",
        lambda b: dc.CategoricalSketch.from_bytes(b, CREF),
        (dc.DecodeError, dc.ReferenceMismatchError),
        exercise_categorical_sketch,
        (_categorical_sketch(CATEGORIES).to_bytes(), dc.CategoricalSketch(CREF).to_bytes()),
    ),
    Decoder(
        "quantile sketch",
        dc.QuantileSketch.from_bytes,
        (dc.DecodeError,),
        exercise_quantile_sketch,
        (
            _quantiles(MODEST[:40]).to_bytes(),
            _quantiles(VALUES, 0.01, 64).to_bytes(),  # 1e300 too: collapsed buckets
            _quantiles(VALUES * 1e6, 0.05, 8).to_bytes(),
            dc.QuantileSketch().to_bytes(),
        ),
    ),
]
ALL_SEEDS = [seed for d in DECODERS for seed in d.seeds]
decoders = st.sampled_from(DECODERS)


def attempt(decoder: Decoder, data: bytes) -> bool:
    """Decodes; a refusal must be a documented error. True if the bytes were accepted
    (and the object then worked)."""
    try:
        obj = decoder.decode(data)
    except decoder.refuses:
        return False
    with contextlib.suppress(dc.DriftlineError):  # e.g. merging quantile sketches
        decoder.exercise(obj)  # of other parameters
    return True


# ------------------------------------------------------------------ mutations


def reseal(body: bytes) -> bytes:
    """An envelope around ``body`` (header + payload, trailer dropped) with the length
    field and the checksum made right again, so decoding gets past both."""
    payload_len = max(0, len(body) - HEADER)
    fixed = body[:8].ljust(8, b"\0") + struct.pack("<I", payload_len) + body[HEADER:]
    return fixed + struct.pack("<I", zlib.crc32(fixed))


INTERESTING_8 = [
    struct.pack("<d", v)
    for v in (float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e308, -1e308, 5e-324)
] + [struct.pack("<q", v) for v in (-1, 2**63 - 1, -(2**63))]
INTERESTING_4 = [struct.pack("<I", v) for v in (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)]
INTERESTING_VARINTS = [b"\x00", b"\x7f", b"\xff\x7f", b"\xff" * 9 + b"\x01", b"\xff" * 10, b"\x80"]


@st.composite
def damaged(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid encoding with its payload damaged, then resealed (length and checksum
    right again): bytes the decoder's own field checks have to refuse or survive."""
    body = bytearray(seed[:-TRAILER])
    for _ in range(draw(st.integers(1, 4))):
        end = max(HEADER, len(body) - 1)
        # fields start at 4-byte multiples near the start, and the last ones are f64s
        at = draw(
            st.integers(HEADER, end)
            | st.integers(0, 8).map(lambda k: HEADER + 4 * k)
            | st.integers(1, 4).map(lambda k: max(HEADER, len(body) - 8 * k))
        )
        kind = draw(
            st.sampled_from(["flip", "byte", "word8", "word4", "varint", "cut", "insert", "delete"])
        )
        if kind == "flip" and at < len(body):
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif kind == "word8":
            body[at : at + 8] = draw(st.sampled_from(INTERESTING_8))
        elif kind == "word4":
            body[at : at + 4] = draw(st.sampled_from(INTERESTING_4))
        elif kind == "varint":
            body[at : at + draw(st.integers(0, 3))] = draw(st.sampled_from(INTERESTING_VARINTS))
        elif kind == "cut":
            del body[at:]
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 16))]
    if draw(st.booleans()) and len(body) > 6:  # another kind byte, or another version
        body[draw(st.sampled_from([4, 6]))] = draw(st.integers(0, 6))
    return reseal(bytes(body))


# ------------------------------------------------------------------ properties


@fuzz_settings(1_000, 50_000)
@given(decoder=decoders, data=st.binary(max_size=512))
@example(decoder=DECODERS[0], data=b"")
@example(decoder=DECODERS[4], data=b"DLFT\x01\x00\x05\x00" + b"\xff" * 8)
def test_arbitrary_bytes_are_refused(decoder: Decoder, data: bytes) -> None:
    assert not attempt(decoder, data)  # 1 in 2^32 passes the checksum by chance


@fuzz_settings(500, 20_000)
@given(decoder=decoders, data=st.data())
def test_any_single_bit_flip_or_truncation_is_refused(
    decoder: Decoder, data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(decoder.seeds))
    at = data.draw(st.integers(0, len(seed) - 1))
    flipped = bytearray(seed)
    flipped[at] ^= 1 << data.draw(st.integers(0, 7))
    assert not attempt(decoder, bytes(flipped))  # CRC-32 detects every 1-bit error
    assert not attempt(decoder, seed[:at])
    wrong_length = bytearray(seed)
    wrong_length[8:12] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    if bytes(wrong_length) != seed:
        assert not attempt(decoder, bytes(wrong_length))


@fuzz_settings(1_000, 50_000)
@given(decoder=decoders, data=st.data())
def test_damaged_payloads_are_refused_or_work(decoder: Decoder, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(ALL_SEEDS))  # other kinds too: must be refused
    attempt(decoder, data.draw(damaged(seed)))


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.name)
def test_every_position_overwritten_with_edge_values(decoder: Decoder) -> None:
    """A sweep rather than a sample: at every payload offset of every seed, each edge
    value (NaN, ±inf, extreme integers, overlong varints) written over the bytes there,
    resealed. Counts of accepted results are not asserted; surviving them is."""
    accepted = 0
    for seed in decoder.seeds:
        body = seed[:-TRAILER]
        for at in range(HEADER, len(body)):
            for value in (*INTERESTING_8, *INTERESTING_4, *INTERESTING_VARINTS):
                accepted += attempt(decoder, reseal(body[:at] + value + body[at + len(value) :]))
    assert accepted >= 0


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.name)
def test_valid_encodings_work_and_other_kinds_are_refused(decoder: Decoder) -> None:
    for seed in ALL_SEEDS:
        assert attempt(decoder, seed) == (seed in decoder.seeds)


# ------------------------------------------------------------------ profile container

PROFILE = ModelProfile.build(
    "fraud",
    "3",
    {
        "amount": _rng.lognormal(3, 0.5, 500),
        "country": _rng.choice(["DE", "FR", "NL"], 500).tolist(),
    },
    prediction=_rng.uniform(size=500),
)
PROFILE_BYTES = PROFILE.to_bytes()
_HEADER_LEN = struct.unpack("<I", PROFILE_BYTES[6:10])[0]
PROFILE_HEADER = json.loads(PROFILE_BYTES[10 : 10 + _HEADER_LEN])
PROFILE_BLOBS = PROFILE_BYTES[10 + _HEADER_LEN : -4]


def container(header: bytes, blobs: bytes = PROFILE_BLOBS, version: int = 1) -> bytes:
    body = MAGIC + struct.pack("<HI", version, len(header)) + header + blobs
    return body + struct.pack("<I", zlib.crc32(body))


def load_profile(data: bytes) -> bool:
    """True if accepted (and the profile then works), False if refused with ProfileError."""
    try:
        profile = ModelProfile.from_bytes(data, "fuzz")
    except ProfileError:
        return False
    again = ModelProfile.from_bytes(profile.to_bytes())
    assert again.identity == profile.identity
    for name, ref in profile.features.items():
        sk: dc.NumericSketch | dc.CategoricalSketch
        if isinstance(ref, dc.NumericReference):
            sk = dc.NumericSketch(ref)
            sk.update(VALUES)
        else:
            sk = dc.CategoricalSketch(ref)
            sk.update(CATEGORIES)
        assert profile.kind(name) in ("numeric", "categorical")
        dc.compare(ref, sk)
    return True


def test_the_seed_profile_loads() -> None:
    assert load_profile(PROFILE_BYTES)
    assert load_profile(container(json.dumps(PROFILE_HEADER).encode()))


@fuzz_settings(1_000, 50_000)
@given(data=st.binary(max_size=512))
@example(data=b"")
@example(data=MAGIC + b"\x01\x00" + b"\xff" * 12)
def test_profile_arbitrary_bytes(data: bytes) -> None:
    assert not load_profile(data)


@fuzz_settings(300, 10_000)
@given(data=st.data())
def test_profile_bit_flips_and_truncations_are_refused(data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(PROFILE_BYTES) - 1))
    flipped = bytearray(PROFILE_BYTES)
    flipped[at] ^= 1 << data.draw(st.integers(0, 7))
    assert not load_profile(bytes(flipped))
    assert not load_profile(PROFILE_BYTES[:at])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and ±inf too: Python's json writes and reads them
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
entry_fields = st.sampled_from(["name", "kind", "offset", "length"])
header_fields = st.sampled_from(["model", "model_version", "created_ms", "entries"])


@st.composite
def profile_headers(draw: st.DrawFn) -> bytes:
    """The seed's header with fields replaced by arbitrary JSON, entries dropped,
    duplicated or pointed elsewhere; or deeply nested JSON; or not JSON at all."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        depth = draw(st.sampled_from([100, 10_000, 100_000]))
        return b'{"entries":' + b"[" * depth + b"]" * depth + b"}"
    if choice == 1:
        return draw(st.binary(max_size=64))
    header = json.loads(json.dumps(PROFILE_HEADER))
    entries = header["entries"]
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.integers(0, 5))
        if what == 0:
            header[draw(header_fields)] = draw(json_values)
        elif what == 1 and entries:
            entries[draw(st.integers(0, len(entries) - 1))][draw(entry_fields)] = draw(json_values)
        elif what == 2 and entries:
            entry = entries[draw(st.integers(0, len(entries) - 1))]
            entry[draw(st.sampled_from(["offset", "length"]))] = draw(
                st.integers(-(2**40), 2**40) | st.integers(-64, len(PROFILE_BLOBS) + 64)
            )
        elif what == 3 and entries:
            entries.append(dict(entries[draw(st.integers(0, len(entries) - 1))]))
        elif what == 4 and entries:
            del entries[draw(st.integers(0, len(entries) - 1))]
        elif what == 5 and entries:
            entries[draw(st.integers(0, len(entries) - 1))].pop(draw(entry_fields), None)
    return json.dumps(header).encode()


@fuzz_settings(1_000, 50_000)
@given(header=profile_headers(), version=st.sampled_from([1, 1, 1, 0, 2, 65535]))
def test_profile_hostile_headers(header: bytes, version: int) -> None:
    load_profile(container(header, version=version))


@fuzz_settings(500, 20_000)
@given(data=st.data())
def test_profile_hostile_blobs_and_header_lengths(data: st.DataObject) -> None:
    header = json.dumps(PROFILE_HEADER).encode()
    blobs = bytearray(PROFILE_BLOBS)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(blobs) - 1))
        blobs[at] = data.draw(st.integers(0, 255))
    body = bytearray(container(header, bytes(blobs))[:-4])
    if data.draw(st.booleans()):  # a header length that points elsewhere
        body[6:10] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    load_profile(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))
