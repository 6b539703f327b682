"""Reference profiles of a model version: one drift_core reference per feature, plus the
prediction's, stored in a checksummed container of our own (never pickle).

Container layout::

    magic "DLPF" | u16 format version | u32 header length | header (JSON, UTF-8)
    | blobs (each a drift_core reference's own bytes) | u32 CRC-32 of everything before

The header lists model, version, creation time and, per entry, name, kind, offset and
length; JSON is the only thing parsed outside drift_core's own decoders.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

import drift_core as dc
from stream.errors import StreamError

MAGIC = b"DLPF"
FORMAT_VERSION = 1
Kind = Literal["numeric", "categorical"]
Reference = dc.NumericReference | dc.CategoricalReference
PREDICTION = "__prediction__"


class ProfileError(StreamError):
    """A profile file that is missing, corrupt, or of another format version."""


def infer_kind(values: Sequence[object] | np.ndarray) -> Kind:
    """Numbers (and missing) are numeric; anything with a string in it is categorical."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind in "biuf":
        return "numeric"
    for v in arr:
        if isinstance(v, str):
            return "categorical"
    return "numeric"


def build_reference(values: Sequence[object] | np.ndarray, kind: Kind) -> Reference:
    if kind == "numeric":
        return dc.NumericReference.build(
            np.asarray(values, dtype=np.float64)
            if not isinstance(values, np.ndarray) or values.dtype.kind in "biufO"
            else values
        )
    return dc.CategoricalReference.build(list(values))


@dataclass
class ModelProfile:
    """References of one model version, by feature name."""

    model: str
    model_version: str
    features: dict[str, Reference]
    prediction: Reference | None = None
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    #: where the profile came from when a registry supplied it (model_uri, run_id,
    #: reference_uri); not part of the stored bytes
    origin: dict[str, str] | None = field(default=None, compare=False)
    #: the model's quality on the reference (validation) data when it had labels:
    #: task, threshold, labelled and the figures (accuracy, auc, mae, …)
    quality: dict[str, Any] | None = None

    @classmethod
    def build(
        cls,
        model: str,
        model_version: str,
        columns: Mapping[str, Sequence[object] | np.ndarray],
        prediction: Sequence[object] | np.ndarray | None = None,
        kinds: Mapping[str, Kind] | None = None,
    ) -> ModelProfile:
        """Profiles every column (kinds inferred unless given) and the predictions."""
        kinds = dict(kinds or {})
        features: dict[str, Reference] = {}
        for name, values in columns.items():
            kind = kinds.get(name) or infer_kind(values)
            try:
                features[name] = build_reference(values, kind)
            except dc.InvalidInputError as exc:
                raise ProfileError(f"feature {name!r}: {exc}") from exc
        pred = None
        if prediction is not None:
            pred = build_reference(prediction, infer_kind(prediction))
        return cls(model, str(model_version), features, pred)

    def kind(self, feature: str) -> Kind:
        ref = self.features[feature]
        return "numeric" if isinstance(ref, dc.NumericReference) else "categorical"

    @property
    def identity(self) -> str:
        """Stable id of the profile's content (the references' fingerprints)."""
        parts = [f"{k}:{r.fingerprint}" for k, r in sorted(self.features.items())]
        if self.prediction is not None:
            parts.append(f"{PREDICTION}:{self.prediction.fingerprint}")
        return f"{zlib.crc32('|'.join(parts).encode()):08x}"

    def to_bytes(self) -> bytes:
        entries = list(self.features.items())
        if self.prediction is not None:
            entries.append((PREDICTION, self.prediction))
        blobs: list[bytes] = []
        meta = []
        offset = 0
        for name, ref in entries:
            blob = ref.to_bytes()
            meta.append({"name": name, "kind": ref.kind, "offset": offset, "length": len(blob)})
            blobs.append(blob)
            offset += len(blob)
        header = json.dumps(
            {
                "model": self.model,
                "model_version": self.model_version,
                "created_ms": self.created_ms,
                "entries": meta,
                **({"quality": self.quality} if self.quality else {}),
            },
            separators=(",", ":"),
        ).encode()
        body = MAGIC + struct.pack("<HI", FORMAT_VERSION, len(header)) + header + b"".join(blobs)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "profile") -> ModelProfile:
        if len(data) < 14 or data[:4] != MAGIC:
            raise ProfileError(f"{source}: not a driftline profile (bad magic or truncated)")
        (crc,) = struct.unpack("<I", data[-4:])
        if zlib.crc32(data[:-4]) != crc:
            raise ProfileError(f"{source}: checksum mismatch, the file is corrupted")
        version, header_len = struct.unpack("<HI", data[4:10])
        if version != FORMAT_VERSION:
            raise ProfileError(
                f"{source}: profile format version {version} is not supported "
                f"(this build reads {FORMAT_VERSION}); rebuild the profile"
            )
        try:
            header = json.loads(data[10 : 10 + header_len])
            blobs = data[10 + header_len : -4]
            features: dict[str, Reference] = {}
            prediction: Reference | None = None
            for entry in header["entries"]:
                blob = blobs[entry["offset"] : entry["offset"] + entry["length"]]
                decoder = (
                    dc.NumericReference.from_bytes
                    if entry["kind"] == "numeric"
                    else dc.CategoricalReference.from_bytes
                )
                ref = decoder(blob)
                if entry["name"] == PREDICTION:
                    prediction = ref
                else:
                    features[str(entry["name"])] = ref
            return cls(
                str(header["model"]),
                str(header["model_version"]),
                features,
                prediction,
                int(header["created_ms"]),
                quality=_quality(header.get("quality")),
            )
        # deep nesting in the header: RecursionError; created_ms Infinity: OverflowError
        except (
            KeyError,
            TypeError,
            ValueError,
            OverflowError,
            RecursionError,
            dc.DecodeError,
        ) as exc:
            raise ProfileError(f"{source}: malformed profile: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from exc
        return cls.from_bytes(data, str(path))


def _quality(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("task") not in ("binary", "regression", "multiclass"):
        raise ValueError("the reference quality is not a mapping with a known task")
    figures = {k: v for k, v in raw.items() if k not in ("task",)}
    if not all(v is None or isinstance(v, int | float) for v in figures.values()):
        raise ValueError("the reference quality figures are not numbers")
    return dict(raw)
