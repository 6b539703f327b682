"""Outcomes: late ground truth joined to the predictions it is about.

- ``driftline.outcome/v1`` (on ``driftline.outcomes``, keyed by model like the events)::

      {"schema": "driftline.outcome/v1", "event_id": "…", "model": "fraud",
       "label": 1, "ts": "2026-11-23T10:00:00Z"}

  ``label``: 0/1 or true/false (binary models), a number (regression) or a string
  (multi-class); ``ts`` (optional) is when the label became known.
- :class:`PendingPredictions`: the predictions waiting for their label, by (model,
  event_id): prediction, model version and event time, ~30 bytes each in a RocksDB store
  (``rocksdict``, raw bytes only, never pickle) with a time to live. A joined prediction
  leaves a small marker so a duplicated outcome is recognised as such.
- :class:`QualityState`: mergeable quality counts of one window (confusion counts at a
  threshold and per-class score histograms for binary models, absolute and squared error
  sums for regression, correct counts for multi-class), from which accuracy, precision,
  recall, F1, ROC AUC, MAE and RMSE follow.
- :class:`QualityBook`: the states of every model's recent windows, attributed by the
  prediction's event time (so a window's quality fills in as labels arrive), and
  ``driftline.quality/v1`` reports with the share of labelled predictions and the drops
  against the reference quality stored in the profile.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from stream.engine import iso
from stream.events import Invalid, parse_ts
from stream.windows import WindowSpec

OUTCOME_SCHEMA = "driftline.outcome/v1"
QUALITY_SCHEMA = "driftline.quality/v1"
Task = Literal["binary", "regression", "multiclass"]
TASKS: tuple[Task, ...] = ("binary", "regression", "multiclass")
#: score histogram bins per class (binary models): ROC AUC is exact for scores binned to
#: 1/BINS; on raw scores the error is at most half the share of (positive, negative)
#: pairs that share a bin
BINS = 200
MAX_OUTCOME_BYTES = 16_384
#: memtable size of the pending-predictions store
WRITE_BUFFER_BYTES = 16 << 20

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Wire(msgspec.Struct, frozen=True):
    schema: Literal["driftline.outcome/v1"]
    event_id: _Id
    model: _Id
    label: bool | float | Annotated[str, msgspec.Meta(max_length=256)]
    ts: int | float | str | None = None


_decoder = msgspec.json.Decoder(_Wire)


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: str
    model: str
    label: float | str
    ts: int | None


def decode_outcome(raw: bytes) -> Outcome | Invalid:
    """One outcome message, or why it is not one (the DLQ reason)."""
    if len(raw) > MAX_OUTCOME_BYTES:
        return Invalid("too_large", f"{len(raw)} bytes > {MAX_OUTCOME_BYTES}", raw)
    try:
        wire = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return Invalid("schema_violation", str(exc), raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return Invalid("invalid_json", str(exc), raw)
    label: float | str
    if isinstance(wire.label, bool):
        label = float(wire.label)
    elif isinstance(wire.label, float):
        if not math.isfinite(wire.label):
            return Invalid("not_finite", f"label {wire.label} is not finite", raw)
        label = wire.label
    else:
        label = wire.label
    ts = None
    if wire.ts is not None:
        try:
            ts = parse_ts(wire.ts)
        except (ValueError, OverflowError) as exc:
            return Invalid("bad_timestamp", str(exc), raw)
    return Outcome(wire.event_id, wire.model, label, ts)


def encode_outcome(outcome: Outcome) -> bytes:
    body: dict[str, Any] = {
        "schema": OUTCOME_SCHEMA,
        "event_id": outcome.event_id,
        "model": outcome.model,
        "label": outcome.label,
    }
    if outcome.ts is not None:
        body["ts"] = outcome.ts
    return msgspec.json.encode(body)


# --- pending predictions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    model_version: str
    ts: int
    prediction: float | str | None


_HEAD = struct.Struct("<BBq")  # joined flag, prediction kind, event time
_F64 = struct.Struct("<d")
_NUMBER, _TEXT, _NONE = 0, 1, 2


def _key(model: str, event_id: str) -> bytes:
    # 12 bytes of BLAKE2b: a collision among 10^9 pending predictions has odds ~1e-11
    return hashlib.blake2b(f"{model}\0{event_id}".encode(), digest_size=12).digest()


def _pack(p: Pending, joined: bool = False) -> bytes:
    version = p.model_version.encode()[:255]
    if isinstance(p.prediction, str):
        tail = p.prediction.encode()[:1024]
        return _HEAD.pack(joined, _TEXT, p.ts) + bytes([len(version)]) + version + tail
    if p.prediction is None:
        return _HEAD.pack(joined, _NONE, p.ts) + bytes([len(version)]) + version
    return (
        _HEAD.pack(joined, _NUMBER, p.ts)
        + bytes([len(version)])
        + version
        + _F64.pack(float(p.prediction))
    )


def _unpack(value: bytes) -> tuple[bool, Pending]:
    joined, kind, ts = _HEAD.unpack_from(value)
    n = value[_HEAD.size]
    start = _HEAD.size + 1
    version = value[start : start + n].decode()
    rest = value[start + n :]
    prediction: float | str | None
    if kind == _NUMBER:
        prediction = _F64.unpack(rest)[0]
    elif kind == _TEXT:
        prediction = rest.decode()
    else:
        prediction = None
    return bool(joined), Pending(version, ts, prediction)


#: a chunk of the pending-predictions log: magic, then (12-byte key, u16 length, value) rows
_CHUNK_MAGIC = b"DLP\x01"
#: largest chunk written: a batch's rows are split into pieces of at most this size
CHUNK_BYTES = 1 << 20
_U16 = struct.Struct("<H")


def _applied_key(partition: int) -> bytes:
    """The store's key of the log offset it has applied up to for a partition (13 bytes:
    never a prediction's 12-byte key)."""
    return b"\xff" * 9 + partition.to_bytes(4, "little")


def encode_chunks(rows: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Rows of the store as log records of at most ``CHUNK_BYTES`` each."""
    chunks: list[bytes] = []
    parts: list[bytes] = [_CHUNK_MAGIC]
    size = len(_CHUNK_MAGIC)
    for key, value in rows:
        row = key + _U16.pack(len(value)) + value
        if size + len(row) > CHUNK_BYTES and len(parts) > 1:
            chunks.append(b"".join(parts))
            parts, size = [_CHUNK_MAGIC], len(_CHUNK_MAGIC)
        parts.append(row)
        size += len(row)
    if len(parts) > 1:
        chunks.append(b"".join(parts))
    return chunks


def decode_chunk(chunk: bytes) -> list[tuple[bytes, bytes]]:
    """The rows of one log record; ValueError if it is not one."""
    if not chunk.startswith(_CHUNK_MAGIC):
        raise ValueError("not a pending-predictions chunk")
    rows = []
    at, n = len(_CHUNK_MAGIC), len(chunk)
    while at < n:
        if at + 14 > n:
            raise ValueError(f"chunk truncated at byte {at}")
        key = chunk[at : at + 12]
        (length,) = _U16.unpack_from(chunk, at + 12)
        at += 14
        if at + length > n or length < _HEAD.size + 1:
            raise ValueError(f"chunk row at byte {at} is cut or too short")
        rows.append((key, chunk[at : at + length]))
        at += length
    return rows


class PendingPredictions:
    """Predictions waiting for their outcome: RocksDB under ``path`` (a dict when None).

    Entries older than ``ttl_ms`` of event time (against the newest event time seen for
    the model) are expired: an outcome for them is reported as ``expired``; RocksDB's own
    TTL (wall clock, with a day's margin) reclaims the space."""

    def __init__(self, path: Path | None, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.path = path
        self._versions: dict[str, bytes] = {}
        self._mem: dict[bytes, bytes] | None = None
        self._db: Any = None
        if path is None:
            self._mem = {}
        else:
            from rocksdict import AccessType, Options, Rdict

            path.mkdir(parents=True, exist_ok=True)
            options = Options(raw_mode=True)
            options.create_if_missing(True)
            # RocksDB's 64 MiB memtable is a ~100 MB sawtooth in the worker's RSS at 20k
            # predictions/s; 16 MiB flushes every ~10 s there, with small SST files
            # that compaction merges
            options.set_write_buffer_size(WRITE_BUFFER_BYTES)
            ttl_s = max(1, ttl_ms // 1000 + 86_400)
            self._db = Rdict(str(path), options, access_type=AccessType.with_ttl(ttl_s))

    def put_many(self, items: Iterable[tuple[str, str, Pending]]) -> list[tuple[bytes, bytes]]:
        """Adds (model, event_id, pending) entries; returns the rows written."""
        rows = [(_key(model, event_id), _pack(pending)) for model, event_id, pending in items]
        self._write(rows)
        return rows

    def put_events(self, events: Iterable[Any]) -> list[tuple[bytes, bytes]]:
        """Adds the predictions of decoded events (``stream.events.Event``): the worker's
        hot path, packed without intermediate objects; returns the rows written (for the
        store's log)."""
        head, f64, version = _HEAD.pack, _F64.pack, self._version
        rows: list[tuple[bytes, bytes]] = []
        for e in events:
            p = e.prediction
            if p is None:
                continue
            v = version(e.model_version)
            if isinstance(p, str):
                value = head(0, _TEXT, e.ts) + v + p.encode()[:1024]
            else:
                value = head(0, _NUMBER, e.ts) + v + f64(p)
            rows.append((_key(e.model, e.event_id), value))
        self._write(rows)
        return rows

    def put_columns(self, model: str, group: Any, rows: np.ndarray) -> list[tuple[bytes, bytes]]:
        """Adds the predictions of decoded columns (a ``drift_core.EventGroup``) at
        ``rows``: the worker's hot path; returns the rows written (for the store's log)."""
        v = self._version(group.version)
        numbers, strings, n_numbers, n_strings, _, _ = group.prediction
        if not n_numbers and not n_strings:
            return []
        head, f64, blake2b = _HEAD.pack, _F64.pack, hashlib.blake2b
        prefix = f"{model}\0".encode()
        ids = group.event_id
        ts = group.ts[rows].tolist()
        picked = rows.tolist()
        out: list[tuple[bytes, bytes]] = []
        if not n_strings:  # numbers (or none) only
            values = numbers[rows].tolist()
            for i, t, x in zip(picked, ts, values, strict=True):
                if x == x:  # NaN: no prediction
                    key = blake2b(prefix + ids[i].encode(), digest_size=12).digest()
                    out.append((key, head(0, _NUMBER, t) + v + f64(x)))
        else:
            assert strings is not None
            for i, t in zip(picked, ts, strict=True):
                text = strings[i]
                if text is not None:
                    value = head(0, _TEXT, t) + v + text.encode()[:1024]
                elif numbers[i] == numbers[i]:
                    value = head(0, _NUMBER, t) + v + f64(float(numbers[i]))
                else:
                    continue
                key = blake2b(prefix + ids[i].encode(), digest_size=12).digest()
                out.append((key, value))
        self._write(out)
        return out

    def _version(self, version: str) -> bytes:
        """A model version as stored in a row: its length, then at most 255 bytes."""
        v = self._versions.get(version)
        if v is None:
            raw = version.encode()[:255]
            v = self._versions[version] = bytes([len(raw)]) + raw
        return v

    def _write(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        if self._mem is not None:
            self._mem.update(rows)
        elif rows:
            from rocksdict import WriteBatch

            batch = WriteBatch(raw_mode=True)
            for k, value in rows:
                batch.put(k, value)
            self._db.write(batch)

    def applied(self, partition: int) -> int:
        """The log offset this store has applied up to for ``partition`` (0: none)."""
        key = _applied_key(partition)
        value = self._mem.get(key) if self._mem is not None else self._db.get(key)
        return int.from_bytes(value, "little") if value else 0

    def _applied_row(self, partition: int, offset: int) -> tuple[bytes, bytes]:
        return _applied_key(partition), offset.to_bytes(8, "little")

    def apply_chunk(self, partition: int, offset: int, chunk: bytes) -> int:
        """Applies a log record (rows and the offset after it, in one write); returns
        its rows, or -1 for a record that is not a chunk (skipped)."""
        try:
            rows = decode_chunk(chunk)
        except ValueError:
            rows, n = [], -1
        else:
            n = len(rows)
        self._write([*rows, self._applied_row(partition, offset + 1)])
        return n

    def advance(self, partition: int, offset: int) -> None:
        """Records that the store holds the log record at ``offset`` (one this worker
        wrote), when it directly follows what the store applied before."""
        if self.applied(partition) == offset:
            self._write([self._applied_row(partition, offset + 1)])

    def find(
        self, model: str, event_id: str, newest_ts: int | None
    ) -> tuple[Literal["joined", "duplicate", "expired", "unknown_event"], Pending | None]:
        """The prediction an outcome is about, or why there is none to join."""
        key = _key(model, event_id)
        value = self._mem.get(key) if self._mem is not None else self._db.get(key)
        if value is None:
            return "unknown_event", None
        joined, pending = _unpack(value)
        if joined:
            return "duplicate", pending
        if newest_ts is not None and pending.ts < newest_ts - self.ttl_ms:
            return "expired", pending
        return "joined", pending

    def mark_joined(self, items: Iterable[tuple[str, str, Pending]]) -> list[tuple[bytes, bytes]]:
        """Leaves a small marker for each joined prediction: a duplicated outcome is then
        told apart from one for an unknown event. Returns the rows written, in order."""
        markers = [
            (_key(model, event_id), _pack(Pending(p.model_version, p.ts, None), joined=True))
            for model, event_id, p in items
        ]
        self._write(markers)
        return markers

    def disk_bytes(self) -> int:
        """Bytes of the store's table files (after a flush and compaction)."""
        if self._db is None or self.path is None:
            return 0
        self._db.flush()
        self._db.compact_range(None, None)
        return sum(f.stat().st_size for f in self.path.iterdir() if f.suffix == ".sst")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


# --- quality --------------------------------------------------------------------------


def infer_task(label: float | str) -> Task:
    if isinstance(label, str):
        return "multiclass"
    return "binary" if label in (0.0, 1.0) else "regression"


class QualityState(msgspec.Struct):
    """Mergeable quality counts of one (model, version, window)."""

    task: str
    threshold: float = 0.5
    rows: int | None = None  # the window's rows, once it closed
    n: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    pos: list[int] = []  # score histograms of the positives and negatives (binary)
    neg: list[int] = []
    abs_err: float = 0.0
    sq_err: float = 0.0
    correct: int = 0

    def __post_init__(self) -> None:
        self.set_task(self.task)

    def set_task(self, task: str) -> None:
        """A window closed before any label came has no task yet ("")."""
        self.task = task
        if task == "binary" and not self.pos:
            self.pos = [0] * BINS
            self.neg = [0] * BINS

    def add(self, prediction: float | str | None, label: float | str) -> str | None:
        """Adds one labelled prediction; returns why it cannot be used, if so."""
        if self.task == "multiclass":
            self.n += 1
            self.correct += int(str(prediction) == str(label))
            return None
        if not isinstance(prediction, float) or not isinstance(label, float):
            return f"a {self.task} model needs numeric predictions and labels"
        if self.task == "regression":
            err = prediction - label
            self.n += 1
            self.abs_err += abs(err)
            self.sq_err += err * err
            return None
        if label not in (0.0, 1.0):
            return f"label {label} of a binary model is not 0/1"
        self.n += 1
        predicted = prediction >= self.threshold
        b = min(BINS - 1, max(0, int(prediction * BINS)))
        if label == 1.0:
            self.pos[b] += 1
            if predicted:
                self.tp += 1
            else:
                self.fn += 1
        else:
            self.neg[b] += 1
            if predicted:
                self.fp += 1
            else:
                self.tn += 1
        return None

    def add_many(self, predictions: np.ndarray, labels: np.ndarray) -> None:
        """Vectorised :meth:`add` for rows known to be valid (replay, reference build)."""
        if len(labels) == 0:
            return
        self.n += len(labels)
        if self.task == "multiclass":
            self.correct += int(np.sum(predictions.astype(str) == labels.astype(str)))
            return
        p = predictions.astype(np.float64)
        y = labels.astype(np.float64)
        if self.task == "regression":
            err = p - y
            self.abs_err += float(np.abs(err).sum())
            self.sq_err += float((err * err).sum())
            return
        predicted = p >= self.threshold
        positive = y == 1.0
        self.tp += int(np.sum(predicted & positive))
        self.fn += int(np.sum(~predicted & positive))
        self.fp += int(np.sum(predicted & ~positive))
        self.tn += int(np.sum(~predicted & ~positive))
        bins = np.clip((p * BINS).astype(np.int64), 0, BINS - 1)
        pos = np.bincount(bins[positive], minlength=BINS)
        neg = np.bincount(bins[~positive], minlength=BINS)
        self.pos = [a + int(b) for a, b in zip(self.pos, pos, strict=True)]
        self.neg = [a + int(b) for a, b in zip(self.neg, neg, strict=True)]

    def merge(self, other: QualityState) -> None:
        if other.task != self.task:
            raise ValueError(f"cannot merge {other.task} quality into {self.task}")
        self.n += other.n
        self.tp, self.fp = self.tp + other.tp, self.fp + other.fp
        self.tn, self.fn = self.tn + other.tn, self.fn + other.fn
        if self.task == "binary":
            self.pos = [a + b for a, b in zip(self.pos, other.pos, strict=True)]
            self.neg = [a + b for a, b in zip(self.neg, other.neg, strict=True)]
        self.abs_err += other.abs_err
        self.sq_err += other.sq_err
        self.correct += other.correct

    def figures(self) -> dict[str, float | None]:
        n = self.n
        if n == 0:
            return {}
        if self.task == "regression":
            return {"mae": self.abs_err / n, "rmse": math.sqrt(self.sq_err / n)}
        if self.task == "multiclass":
            return {"accuracy": self.correct / n}
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else None
        )
        return {
            "accuracy": (tp + tn) / n,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "auc": histogram_auc(self.pos, self.neg),
        }


def histogram_auc(pos: Sequence[int], neg: Sequence[int]) -> float | None:
    """P(score of a positive > score of a negative), pairs in one bin counting half
    (the Mann-Whitney statistic of the binned scores)."""
    n_pos, n_neg = sum(pos), sum(neg)
    if n_pos == 0 or n_neg == 0:
        return None
    below = 0
    wins = 0.0
    for p, q in zip(pos, neg, strict=True):
        wins += p * below + 0.5 * p * q
        below += q
    return wins / (n_pos * n_neg)


def reference_quality(
    predictions: np.ndarray, labels: np.ndarray, task: Task | None = None, threshold: float = 0.5
) -> dict[str, Any]:
    """The quality a model had on its reference (validation) data, for the profile."""
    keep = np.array([v is not None and v == v for v in labels.tolist()], dtype=bool)
    keep &= np.array([v is not None and v == v for v in predictions.tolist()], dtype=bool)
    y, p = labels[keep], predictions[keep]
    if len(y) == 0:
        raise ValueError("no rows with both a prediction and a label")
    if task is None:
        values = set(y.tolist())
        task = (
            "multiclass"
            if any(isinstance(v, str) for v in values)
            else ("binary" if values <= {0, 1} else "regression")
        )
    state = QualityState(task, threshold)
    state.add_many(p, y)
    return {"task": task, "threshold": threshold, "labelled": state.n, **state.figures()}


# --- the book of recent windows --------------------------------------------------------


_DROPS = (("accuracy_drop", "accuracy", -1), ("auc_drop", "auc", -1), ("mae_increase", "mae", 1))


@dataclass
class QualityBook:
    """Quality states of recent windows per model, attributed by prediction event time."""

    spec: WindowSpec
    ttl_ms: int
    threshold: float = 0.5
    states: dict[str, dict[tuple[str, int], QualityState]] = field(default_factory=dict)

    def state(self, model: str, version: str, start: int, task: str) -> QualityState:
        book = self.states.setdefault(model, {})
        found = book.get((version, start))
        if found is None:
            found = book[(version, start)] = QualityState(task, self.threshold)
        elif not found.task:
            found.set_task(task)
        return found

    def window_closed(self, report: dict[str, Any]) -> QualityState | None:
        """Records a closed window's rows (the labelled share's denominator); returns its
        state if labels are already in."""
        book = self.states.setdefault(report["model"], {})
        key = (report["model_version"], report["window_start_ms"])
        state = book.get(key)
        if state is None:
            book[key] = QualityState("", self.threshold, rows=report["rows"])
            return None
        state.rows = report["rows"]
        return state if state.n else None

    def add(
        self,
        model: str,
        pending: Pending,
        label: float | str,
        task: str,
        rows: dict[tuple[str, int], int] | None = None,
    ) -> tuple[list[int], str | None]:
        """Attributes one labelled prediction to its windows; returns their starts, or why
        the label cannot be used."""
        starts = list(self.spec.starts(pending.ts))
        for start in starts:
            state = self.state(model, pending.model_version, start, task)
            why = state.add(pending.prediction, label)
            if why is not None:
                return [], why
        return starts, None

    def expire(self, model: str, newest_ts: int) -> None:
        book = self.states.get(model)
        if not book:
            return
        horizon = newest_ts - self.ttl_ms
        for key in [k for k in book if self.spec.end(k[1]) <= horizon]:
            del book[key]

    def report(
        self, model: str, version: str, start: int, reference: dict[str, Any] | None
    ) -> dict[str, Any]:
        state = self.states[model][(version, start)]
        end = self.spec.end(start)
        figures = state.figures()
        metrics: dict[str, Any] = {"labelled": state.n}
        for name, figure, sign in _DROPS:
            have, ref = figures.get(figure), (reference or {}).get(figure)
            if have is not None and ref is not None:
                metrics[name] = sign * (have - ref)
        return {
            "schema": QUALITY_SCHEMA,
            "report_id": f"{model}/{version}/{start}/{end}/quality",
            "model": model,
            "model_version": version,
            "window_start": iso(start),
            "window_end": iso(end),
            "window_start_ms": start,
            "window_end_ms": end,
            "task": state.task,
            "rows": state.rows,
            "labelled": state.n,
            "labelled_share": state.n / state.rows if state.rows else None,
            "quality": figures,
            "reference_quality": {k: v for k, v in (reference or {}).items() if k != "task"},
            "model_metrics": metrics,
        }

    def snapshot(self, model: str) -> bytes:
        book = self.states.get(model, {})
        return msgspec.msgpack.encode([[v, s, state] for (v, s), state in sorted(book.items())])

    def restore(self, model: str, data: bytes) -> None:
        items = msgspec.msgpack.decode(data, type=list[tuple[str, int, QualityState]])
        self.states[model] = {(v, s): state for v, s, state in items}

    def forget(self, model: str) -> None:
        self.states.pop(model, None)
