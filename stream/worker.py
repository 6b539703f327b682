"""The faust-streaming worker: consumes ``driftline.events`` in batches, feeds the window
engine, publishes WindowReports and dead letters, keeps each model's state on a compacted
topic (stream.state).

Delivery is at least once with idempotent effects: each model's state (open windows'
sketches, watermark) is written after every batch, and acknowledged by Kafka before the
batch is, together with the offset of the last message it includes, so a worker that is
handed messages again (restart, takeover) skips those already in the state; reports carry
deterministic ids.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import msgspec
import numpy as np
from faust.types import TP

import drift_core as dc
from alerts.engine import QualityRuleEngine, RuleEngine
from stream.batching import BatchingTransport, RecordRun
from stream.config import MonitorConfig, ReferenceStore
from stream.engine import Outcome, WindowEngine
from stream.events import Event, EventBytes, Invalid, decode_columns, dlq_record
from stream.metrics import WorkerMetrics
from stream.outcomes import (
    Pending,
    PendingPredictions,
    QualityBook,
    decode_outcome,
    encode_chunks,
    infer_task,
)
from stream.state import MAX_STATE_BYTES, KafkaPendingLog, KafkaState

log = logging.getLogger("driftline.worker")


class _Saved(msgspec.Struct):
    """A model's saved state: the window engine's, the rule engine's and the quality
    book's (with the outcome offsets it includes)."""

    windows: bytes
    rules: bytes = b""
    quality: bytes = b""
    quality_rules: bytes = b""
    outcome_offsets: dict[str, int] = {}
    waiting_outcomes: list[tuple[float, int, int, bytes]] = []


_saved_encoder = msgspec.msgpack.Encoder()
_saved_decoder = msgspec.msgpack.Decoder(_Saved)


class Sequencer:
    """Checks that each partition's messages arrive in offset order, none missing.

    A consumer can skip a message: Faust drops the one it is handing to the stream
    when a rebalance suspends the flow, while the fetch position moves past it (the
    offset is never acked, so it is redelivered only after the next restart, when the
    state already counts later offsets). So every partition's next offset is
    remembered, across rebalances too; a message after a hole makes the driver seek
    back to the hole and hold the partition's later messages until the missing one
    arrives. If it does not arrive within ``patience_s`` while later ones keep coming,
    the hole is in the log itself (transaction markers, compaction) and is passed.
    A partition owned by another worker in between is harmless: seeking back only
    re-reads messages the state check then skips.
    """

    TAKE, AGAIN, SEEK, HOLD = "take", "again", "seek", "hold"

    def __init__(self, patience_s: float = 10.0) -> None:
        self.patience_s = patience_s
        self._next: dict[int, int] = {}
        self._sought: dict[int, tuple[int, float]] = {}

    def keep_only(self, partitions: set[int]) -> None:
        """Forgets partitions a rebalance gave to other workers (re-reading from an old
        offset when one comes back would be correct but needlessly long)."""
        for partition in set(self._next) - partitions:
            del self._next[partition]
            self._sought.pop(partition, None)

    def next_offset(self, partition: int) -> int | None:
        return self._next.get(partition)

    def check(self, partition: int, offset: int, now: float) -> str:
        expected = self._next.get(partition)
        if expected is None or offset == expected:
            self._next[partition] = offset + 1
            self._sought.pop(partition, None)
            return self.TAKE
        if offset < expected:
            return self.AGAIN
        sought = self._sought.get(partition)
        if sought is None or sought[0] != expected:
            self._sought[partition] = (expected, now)
            return self.SEEK
        if now - sought[1] < self.patience_s:
            return self.HOLD
        log.warning(
            "partition %d: offsets %d..%d never arrived after %.0f s; passing the gap",
            partition,
            expected,
            offset - 1,
            self.patience_s,
        )
        self._next[partition] = offset + 1
        del self._sought[partition]
        return self.TAKE


@dataclass
class _JoinBatch:
    joined: list[tuple[str, str, Pending]] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    touched: dict[tuple[str, str, int], None] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)
    #: (model, result) -> outcomes, added to the counter once per batch
    results: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, model: str, result: str) -> None:
        key = (model, result)
        self.results[key] = self.results.get(key, 0) + 1


@dataclass
class Outcomes:
    """The outcome side of a worker: predictions waiting for labels, the quality of recent
    windows and the rules over it."""

    pending: PendingPredictions
    book: QualityBook
    rules: QualityRuleEngine
    send_quality: Any  # async (key: bytes, value: bytes) -> None
    seek: Any = None  # async (partition, offset) -> None on the outcomes topic
    #: the pending store's log (stream.state.KafkaPendingLog): None keeps the store local
    log: Any = None
    sequencer: Sequencer = field(default_factory=Sequencer)
    #: model -> partition -> offset of the last outcome message in its quality state
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    #: outcomes that came before their prediction: (since, partition, offset, raw)
    waiting: dict[str, list[tuple[float, int, int, bytes]]] = field(default_factory=dict)
    wait_s: float = 60.0
    max_waiting: int = 100_000


@dataclass
class _Rows:
    """One (model, version) group of a batch's decoded events, the rows still accepted,
    and each row's partition and offset."""

    group: dc.EventGroup
    keep: np.ndarray
    partitions: np.ndarray
    offsets: np.ndarray
    event_bytes: EventBytes

    @classmethod
    def of(
        cls,
        group: dc.EventGroup,
        keep: np.ndarray | None,
        partitions: np.ndarray,
        offsets: np.ndarray,
        event_bytes: EventBytes,
    ) -> _Rows:
        if keep is None:
            keep = np.ones(group.rows, dtype=bool)
        return cls(group, keep, partitions[group.message], offsets[group.message], event_bytes)

    def raw(self, row: int) -> bytes:
        """The row's event as it arrived (for dead letters)."""
        return self.event_bytes(int(self.group.message[row]), int(self.group.item[row]))


@dataclass
class Handler:
    """The agent's work, kept apart from Faust so it can be driven directly in tests."""

    config: MonitorConfig
    engine: WindowEngine
    metrics: WorkerMetrics
    send_report: Any  # async (key: bytes, value: bytes) -> None
    send_dlq: Any  # async (value: bytes) -> None
    state: Any  # stream.state.KafkaState or MemoryState: async load(partition), save(items)
    rules: RuleEngine | None = None
    send_alert: Any = None  # async (key: bytes, value: bytes) -> None
    send_retrain: Any = None  # async (key: bytes, value: bytes) -> None
    flush: Any = None  # async () -> None: pushes buffered writes (state, reports) to Kafka
    seek: Any = None  # async (partition, offset) -> None: re-reads a partition from offset
    sequencer: Sequencer = field(default_factory=Sequencer)
    outcomes: Outcomes | None = None
    partition_of: dict[str, int] = field(default_factory=dict)
    _loaded: set[str] = field(default_factory=set)
    #: partitions whose saved states were read; the states not restored yet, by model
    _read: set[int] = field(default_factory=set)
    _stored: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    #: models changed since their state was last written
    _dirty: dict[str, None] = field(default_factory=dict)
    #: rows added to the pending store since they were last logged, by partition
    _pending_rows: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    #: model -> offset of the latest message of the batch being handled that it counts
    _touched: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._limits = self.config.limits.limits()
        # one batch, timer tick or revocation at a time: each awaits (sends), and a
        # revocation landing mid-batch would otherwise save a half-forgotten state
        self.lock = asyncio.Lock()

    async def _ensure_loaded(self, model: str, partition: int) -> None:
        if model in self._loaded:
            return
        if partition not in self._read:
            for name, data in (await self.state.load(partition)).items():
                self._stored.setdefault(name, (partition, data))
            await self._catch_up_pending(partition)
            self._read.add(partition)
        self.partition_of[model] = partition
        self._loaded.add(model)
        stored = self._stored.pop(model, None)
        if stored is None:
            return
        state = _saved_decoder.decode(stored[1])
        self.engine.restore(model, state.windows)
        if self.rules is not None and state.rules:
            self.rules.restore(state.rules, model)
        if self.outcomes is not None:
            if state.quality:
                self.outcomes.book.restore(model, state.quality)
            if state.quality_rules:
                self.outcomes.rules.restore(state.quality_rules, model)
            self.outcomes.offsets[model] = dict(state.outcome_offsets)
            if state.waiting_outcomes:
                self.outcomes.waiting[model] = list(state.waiting_outcomes)

    def _save(self, model: str) -> None:
        """Marks a model's state to be written at the end of the batch."""
        self._dirty[model] = None

    def _snapshot(self, model: str) -> bytes:
        rules = self.rules.snapshot(model) if self.rules is not None else b""
        saved = _Saved(self.engine.snapshot(model), rules)
        side = self.outcomes
        if side is not None:
            newest = self.engine.newest_ts(model)
            if newest is not None:  # windows past the labels' time to live go
                side.book.expire(model, newest)
                side.rules.expire(model, newest - side.book.ttl_ms - self.engine.spec.size_ms)
            saved.quality = side.book.snapshot(model)
            saved.quality_rules = side.rules.snapshot(model)
            saved.outcome_offsets = side.offsets.get(model, {})
            saved.waiting_outcomes = side.waiting.get(model, [])
        return _saved_encoder.encode(saved)

    async def _catch_up_pending(self, partition: int) -> None:
        """Replays the pending store's log of a partition this worker is given, from the
        offset its store has applied: predictions made on another worker (or before a
        restart without the data dir) can then be joined here."""
        side = self.outcomes
        if side is None or side.log is None:
            return
        started = time.perf_counter()
        start = side.pending.applied(partition)
        bad: list[int] = []

        def apply(offset: int, chunk: bytes) -> None:
            if side.pending.apply_chunk(partition, offset, chunk) < 0:
                bad.append(offset)

        records, size = await side.log.replay(partition, start, apply)
        if bad:
            log.error("pending-predictions log partition %d: records %s skipped", partition, bad)
        if records:
            log.info(
                "pending predictions of partition %d: %d records (%d bytes) from offset %d "
                "replayed in %.0f ms",
                partition,
                records,
                size,
                start,
                (time.perf_counter() - started) * 1000,
            )

    def _log_pending(self, partition: int, rows: list[tuple[bytes, bytes]]) -> None:
        if rows and self.outcomes is not None and self.outcomes.log is not None:
            self._pending_rows.setdefault(partition, []).extend(rows)

    async def _write_states(self) -> None:
        """Writes the changed models' states (and the pending store's new rows to its
        log) and waits for Kafka's acknowledgement: the batch's messages are acknowledged
        only after this."""
        items = [(self.partition_of[m], m, self._snapshot(m)) for m in self._dirty]
        self._dirty.clear()
        chunks = [
            (partition, chunk)
            for partition, rows in self._pending_rows.items()
            for chunk in encode_chunks(rows)
        ]
        self._pending_rows = {}
        side = self.outcomes
        if chunks and side is not None and side.log is not None:
            _, written = await asyncio.gather(self.state.save(items), side.log.save(chunks))
            for partition, offset in written:
                side.pending.advance(partition, offset)
        elif items:
            await self.state.save(items)

    async def revoke(self, partitions: set[int]) -> None:
        """Drops state of models whose partitions go to another worker, once the batch in
        flight is done and its state writes have reached Kafka: a write landing after the
        new owner recovered the table would later overwrite newer state."""
        async with self.lock:
            if self.flush is not None:
                await self.flush()
            self.forget_partitions(partitions)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drops state of models whose partitions went to another worker."""
        for model, partition in list(self.partition_of.items()):
            if partition in partitions:
                self.engine.forget(model)
                if self.rules is not None:
                    self.rules.forget(model)
                if self.outcomes is not None:
                    self.outcomes.book.forget(model)
                    self.outcomes.rules.forget(model)
                    self.outcomes.offsets.pop(model, None)
                    self.outcomes.waiting.pop(model, None)
                self._loaded.discard(model)
                self._dirty.pop(model, None)
                del self.partition_of[model]
        self._read -= partitions
        for model, (partition, _) in list(self._stored.items()):
            if partition in partitions:
                del self._stored[model]

    async def handle(self, messages: Sequence[tuple[int, int, bytes]]) -> Outcome:
        """Processes (partition, offset, value) messages; returns what the engine did."""
        async with self.lock:
            outcome = await self._handle(messages)
            await self._write_states()
            return outcome

    async def _handle(self, messages: Sequence[tuple[int, int, bytes]]) -> Outcome:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        topic = self.config.kafka.events_topic
        held: list[int] = []
        taken: list[tuple[int, int, bytes]] = []
        check = self.sequencer.check
        clock = time.monotonic()
        reseek: set[int] = set()
        for position, message in enumerate(messages):
            partition, offset, _ = message
            verdict = check(partition, offset, clock)
            if verdict is Sequencer.TAKE:
                taken.append(message)
                continue
            if verdict is Sequencer.AGAIN:
                # handed twice after a rebalance; already applied
                self.metrics.redelivered.inc()
                continue
            held.append(position)  # comes again after the seek: not acked
            if verdict is Sequencer.SEEK:
                await self._seek_back(partition, offset)
            else:
                reseek.add(partition)
        for partition in reseek:
            # Still short of the missing message: seek again. Faust's fetcher undoes a
            # seek made while it hands out a fetched batch (each message it hands out
            # sets its read offset, and re-read messages below that are then dropped as
            # already read), so the messages held here are what is left of that batch.
            await self._seek_again(partition)
        values = [value for _, _, value in taken]
        batch = decode_columns(values, self._limits, now_ms)
        # dead letters, sent in the order of the messages they come from
        dead: list[tuple[int, Invalid]] = list(batch.invalid)
        parts = np.fromiter((p for p, _, _ in taken), dtype=np.int64, count=len(taken))
        offs = np.fromiter((o for _, o, _ in taken), dtype=np.int64, count=len(taken))
        rows = [
            _Rows.of(group, keep, parts, offs, batch.event_bytes) for group, keep in batch.groups
        ]
        # messages the model's saved state already counts (redelivered after a restart)
        last_offsets: dict[tuple[str, int], int] = {}
        for r in rows:
            for partition in np.unique(r.partitions[r.keep]).tolist():
                last = await self._last_offset(r.group.model, partition, last_offsets)
                duplicate = r.keep & (r.partitions == partition) & (r.offsets <= last)
                if duplicate.any():
                    self.metrics.duplicates.labels(r.group.model).inc(int(duplicate.sum()))
                    r.keep &= ~duplicate
        events: list[Event] = []
        sources: list[tuple[int, int]] = []
        indices: list[int] = []
        for index, event in batch.events:
            partition, offset = taken[index][0], taken[index][1]
            if offset <= await self._last_offset(event.model, partition, last_offsets):
                self.metrics.duplicates.labels(event.model).inc()
                continue
            events.append(event)
            sources.append((partition, offset))
            indices.append(index)
        versions = {(r.group.model, r.group.version) for r in rows if r.keep.any()}
        versions |= {(e.model, e.model_version) for e in events}
        unresolved = [v for v in versions if not self.engine.has_profile(*v)]
        if unresolved:
            # references come from files or a registry (HTTP): look up the versions not
            # seen yet off the event loop, and take the time again after that
            await asyncio.to_thread(self._resolve, unresolved)
            now_ms = int(time.time() * 1000)
        outcome = Outcome(held=held)
        by_model: dict[str, list[_Rows]] = {}
        for r in rows:
            dead.extend((int(r.group.message[row]), bad) for bad, row in self._refuse(r))
            if r.keep.any():
                by_model.setdefault(r.group.model, []).append(r)
        for model, mine in by_model.items():
            self._process_rows(model, mine, outcome, now_ms)
        if events:
            self._process_events(events, sources, outcome, now_ms)
            rejected = {position for position, _ in outcome.rejected}
            dead.extend((indices[position], bad) for position, bad in outcome.rejected)
            kept = [
                (e, s)
                for i, (e, s) in enumerate(zip(events, sources, strict=True))
                if i not in rejected
            ]
            self._count_events(kept, now_ms)
        dead.sort(key=lambda d: d[0])
        for index, bad in dead:
            await self._dead_letter(bad, topic, taken[index][0], taken[index][1])
        for model, late in outcome.late_by_model.items():
            self.metrics.late.labels(model).inc(late)
        await self._publish(outcome)
        touched = self._touched
        self._touched = {}
        if self.outcomes is not None and self.outcomes.waiting:
            await self._retry_waiting([m for m in touched if m in self.outcomes.waiting])
        for model, offset in touched.items():
            partition = self.partition_of[model]
            offsets = self.engine.offsets(model)
            offsets[str(partition)] = max(offset, offsets.get(str(partition), -1))
            self._save(model)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return outcome

    async def _last_offset(
        self, model: str, partition: int, known: dict[tuple[str, int], int]
    ) -> int:
        """The offset of the partition's last message in the model's state as it was
        before this batch (loading the state first)."""
        key = (model, partition)
        last = known.get(key)
        if last is None:
            await self._ensure_loaded(model, partition)
            last = known[key] = self.engine.offsets(model).get(str(partition), -1)
        return last

    def _refuse(self, r: _Rows) -> list[tuple[Invalid, int]]:
        """Takes out of ``r.keep`` the rows of a version without a reference and the rows
        with a value of the wrong kind for it; returns (why, row) for each."""
        group = r.group
        candidates = r.keep
        if not candidates.any():
            return []
        profile = self.engine.profile(group.model, group.version)
        if profile is None:
            bad = np.flatnonzero(candidates)
            r.keep[:] = False
            why = f"no reference for model {group.model[:80]!r} version {group.version[:40]!r}"
            return [(Invalid("unknown_model", why, r.raw(row)), row) for row in bad.tolist()]
        wrong = np.zeros(group.rows, dtype=bool)
        reasons: dict[int, str] = {}
        checks: list[tuple[str, Any, Any]] = [
            (name, ref, group.features.get(name)) for name, ref in profile.features.items()
        ]
        checks.append(("", profile.prediction, group.prediction))
        for name, ref, column in checks:
            if ref is None or column is None:
                continue
            numbers, strings, n_numbers, n_strings, _, _ = column
            if isinstance(ref, dc.NumericReference):
                if not n_strings:
                    continue
                assert strings is not None
                mask = np.fromiter((s is not None for s in strings), bool, group.rows)
                what = "numeric in the reference, got a string"
            else:
                if not n_numbers:
                    continue
                mask = ~np.isnan(numbers)
                what = "categorical in the reference, got a number"
            mask &= candidates & ~wrong
            label = f"feature {name[:60]!r}" if name else "prediction"
            for row in np.flatnonzero(mask).tolist():
                reasons[row] = f"{label} is {what}"
            wrong |= mask
        if not reasons:
            return []
        r.keep &= ~wrong
        return [
            (Invalid("feature_type_mismatch", why, r.raw(row)), row)
            for row, why in sorted(reasons.items())
        ]

    def _process_rows(self, model: str, mine: list[_Rows], out: Outcome, now_ms: int) -> None:
        """Feeds the engine a model's accepted rows (one group per version)."""
        running: dict[int, np.ndarray] = {}
        if len(mine) > 1:  # versions interleaved: one watermark over the arrival order
            seq = np.concatenate([r.group.seq[r.keep] for r in mine])
            ts = np.concatenate([r.group.ts[r.keep] for r in mine])
            order = np.argsort(seq, kind="stable")
            before = self.engine.newest_ts(model)
            lowest = np.iinfo(np.int64).min if before is None else before
            merged = np.maximum.accumulate(np.maximum(ts[order], lowest))
            at = np.empty_like(merged)
            at[order] = merged
            start = 0
            for i, r in enumerate(mine):
                n = int(r.keep.sum())
                running[i] = at[start : start + n]
                start += n
        latest = 0
        for i, r in enumerate(mine):
            group, keep = r.group, r.keep
            full = bool(keep.all())
            pick = np.flatnonzero(keep)
            profile = self.engine.profile(model, group.version)
            assert profile is not None
            known = profile.features
            features: dict[str, Any] = {}
            unknown = np.zeros(group.rows, dtype=np.int64)
            for name, (numbers, strings, _, _, present, absent) in group.features.items():
                ref = known.get(name)
                if ref is None:
                    if present:  # values of features the reference does not have
                        unknown += 1
                        unknown[absent] -= 1
                elif isinstance(ref, dc.NumericReference):
                    features[name] = numbers if full else numbers[pick]
                elif strings is not None:
                    features[name] = strings if full else [strings[j] for j in pick]
            numbers, strings, _, _, _, _ = group.prediction
            prediction: Any = None
            if isinstance(profile.prediction, dc.NumericReference):
                prediction = numbers if full else numbers[pick]
            elif strings is not None:
                prediction = strings if full else [strings[j] for j in pick]
            ts = group.ts if full else group.ts[pick]
            done = self.engine.process_columns(
                model,
                group.version,
                ts,
                features,
                prediction,
                group.latency if full else group.latency[pick],
                group.error if full else group.error[pick],
                unknown_rows=unknown if full else unknown[pick],
                running=running.get(i),
                close=len(mine) == 1,
                now_ms=now_ms,
            )
            out.reports.extend(done.reports)
            out.accepted += done.accepted
            out.late += done.late
            for m, n in done.late_by_model.items():
                out.late_by_model[m] = out.late_by_model.get(m, 0) + n
            kept = int(keep.sum())
            self.metrics.events.labels(model).inc(kept)
            latest = max(latest, int(ts.max()))
            offset = int(r.offsets[keep].max())
            if offset > self._touched.get(model, -1):
                self._touched[model] = offset
            if self.outcomes is not None:
                # the predictions wait for their labels (late events too: their window
                # is known, only their sketch update was refused)
                for partition in np.unique(r.partitions[keep]).tolist():
                    rows = np.flatnonzero(keep & (r.partitions == partition))
                    self._log_pending(
                        partition,
                        self.outcomes.pending.put_columns(model, group, rows),
                    )
        if len(mine) > 1:
            out.reports.extend(self.engine.close(model))
        self.metrics.lag.labels(model).set(max(0.0, (now_ms - latest) / 1000))

    def _process_events(
        self, events: list[Event], sources: list[tuple[int, int]], out: Outcome, now_ms: int
    ) -> None:
        """Feeds the engine events only the exact decoder accepted (see decode_columns)."""
        done = self.engine.process(events, now_ms)
        out.reports.extend(done.reports)
        out.rejected.extend(done.rejected)
        out.accepted += done.accepted
        out.late += done.late
        for m, n in done.late_by_model.items():
            out.late_by_model[m] = out.late_by_model.get(m, 0) + n

    def _count_events(self, kept: list[tuple[Event, tuple[int, int]]], now_ms: int) -> None:
        by_partition: dict[int, list[Event]] = {}
        for event, (partition, offset) in kept:
            model = event.model
            self.metrics.events.labels(model).inc()
            self.metrics.lag.labels(model).set(max(0.0, (now_ms - event.ts) / 1000))
            if offset > self._touched.get(model, -1):
                self._touched[model] = offset
            by_partition.setdefault(partition, []).append(event)
        if self.outcomes is not None:
            for partition, accepted in by_partition.items():
                self._log_pending(partition, self.outcomes.pending.put_events(accepted))

    def _resolve(self, versions: list[tuple[str, str]]) -> None:
        for model, version in versions:
            self.engine.profile(model, version)

    async def _seek_back(self, partition: int, offset: int) -> None:
        expected = self.sequencer.next_offset(partition)
        assert expected is not None
        self.metrics.gaps.inc()
        log.warning(
            "partition %d: message %d arrived before %d; re-reading from %d",
            partition,
            offset,
            expected,
            expected,
        )
        if self.seek is not None:
            try:
                await self.seek(partition, expected)
            except Exception as exc:  # partition just revoked: its new owner reads it
                log.warning("partition %d: seek to %d failed: %s", partition, expected, exc)

    async def _seek_again(self, partition: int) -> None:
        expected = self.sequencer.next_offset(partition)
        if expected is None or self.seek is None:
            return
        try:
            await self.seek(partition, expected)
        except Exception as exc:  # partition just revoked: its new owner reads it
            log.warning("partition %d: seek to %d failed: %s", partition, expected, exc)

    async def tick(self, now_ms: int | None = None) -> Outcome:
        """Closes windows of models that went quiet (called on a timer)."""
        async with self.lock:
            outcome = await self._tick(now_ms)
            await self._write_states()
            return outcome

    async def _tick(self, now_ms: int | None) -> Outcome:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        outcome = self.engine.advance(now_ms, self.config.window.idle_close)
        await self._publish(outcome)
        if self.outcomes is not None and self.outcomes.waiting:
            await self._retry_waiting(list(self.outcomes.waiting))
        for model in {r["model"] for r in outcome.reports}:
            self._save(model)
        return outcome

    async def _publish(self, outcome: Outcome) -> None:
        for report in outcome.reports:
            key = report["model"].encode()
            await self.send_report(key, msgspec.json.encode(report))
            self.metrics.observe_report(report)
            if self.rules is not None:
                await self._send_evaluation(key, report["model"], self.rules.evaluate(report))
            # labels that came before the window closed: its quality is reported now
            if self.outcomes is not None and self.outcomes.book.window_closed(report) is not None:
                await self._publish_quality(
                    report["model"], report["model_version"], report["window_start_ms"]
                )
            log.info(
                "window closed: %s rows=%d drifted=%s",
                report["report_id"],
                report["rows"],
                ",".join(k for k, f in report["features"].items() if (f.get("psi") or 0) > 0.2)
                or "-",
            )

    async def _publish_quality(self, model: str, version: str, start: int) -> None:
        side = self.outcomes
        assert side is not None
        profile = self.engine.profile(model, version)
        reference = profile.quality if profile is not None else None
        report = side.book.report(model, version, start, reference)
        if profile is not None and profile.origin:
            report.update(profile.origin)
        report["reference"] = profile.identity if profile is not None else None
        key = model.encode()
        await side.send_quality(key, msgspec.json.encode(report))
        self.metrics.observe_quality(report)
        evaluation = side.rules.evaluate(report)
        await self._send_evaluation(key, model, evaluation)

    async def _send_evaluation(self, key: bytes, model: str, evaluation: Any) -> None:
        for alert in evaluation.alerts:
            self.metrics.alerts.labels(alert["rule"], alert["state"]).inc()
            if self.send_alert is not None:
                await self.send_alert(key, msgspec.json.encode(alert))
        for event in evaluation.retrain:
            self.metrics.retrain.labels(model).inc()
            if self.send_retrain is not None:
                await self.send_retrain(key, msgspec.json.encode(event))
            log.warning("retrain requested: %s (%s)", event["id"], event["data"]["rule"])

    def _task(self, model: str, version: str, label: float | str) -> str:
        mc = self.config.model(model)
        if mc is not None and mc.task is not None:
            return mc.task
        profile = self.engine.profile(model, version)
        if profile is not None and profile.quality:
            return str(profile.quality["task"])
        return infer_task(label)

    async def handle_outcomes(self, messages: Sequence[tuple[int, int, bytes]]) -> list[int]:
        """Joins (partition, offset, value) outcome messages to their predictions; returns
        the positions not to acknowledge (they come again after a seek)."""
        async with self.lock:
            held = await self._handle_outcomes(messages)
            await self._write_states()
            return held

    async def _handle_outcomes(self, messages: Sequence[tuple[int, int, bytes]]) -> list[int]:
        side = self.outcomes
        assert side is not None
        topic = self.config.kafka.outcomes_topic
        held: list[int] = []
        clock = time.monotonic()
        batch = _JoinBatch()
        for position, (partition, offset, value) in enumerate(messages):
            verdict = side.sequencer.check(partition, offset, clock)
            if verdict is not Sequencer.TAKE:
                if verdict is Sequencer.AGAIN:
                    self.metrics.redelivered.inc()
                else:
                    held.append(position)
                    if verdict is Sequencer.SEEK and side.seek is not None:
                        expected = side.sequencer.next_offset(partition)
                        self.metrics.gaps.inc()
                        try:
                            await side.seek(partition, expected)
                        except Exception as exc:
                            log.warning("outcomes partition %d: seek failed: %s", partition, exc)
                continue
            outcome = decode_outcome(value)
            if isinstance(outcome, Invalid):
                self.metrics.outcomes.labels("-", outcome.reason).inc()
                await self._dead_letter(outcome, topic, partition, offset)
                continue
            model = outcome.model
            if not self.config.monitors(model):
                bad = Invalid("unknown_model", f"no model {model[:80]!r} is monitored", value)
                self.metrics.outcomes.labels("-", "unknown_model").inc()
                await self._dead_letter(bad, topic, partition, offset)
                continue
            await self._ensure_loaded(model, partition)
            done = side.offsets.setdefault(model, {})
            if offset <= done.get(str(partition), -1):
                self.metrics.outcomes.labels(model, "redelivered").inc()
                continue  # in the saved quality state already
            done[str(partition)] = offset
            batch.models.add(model)
            await self._join(outcome, (time.time(), partition, offset, value), batch)
        await self._finish_join(batch)
        return held

    async def _join(
        self,
        outcome: Any,
        source: tuple[float, int, int, bytes],
        batch: _JoinBatch,
        retry: bool = False,
    ) -> None:
        """Joins one outcome; one whose prediction is not in yet waits (its event may
        still be on its way: the topics are read independently)."""
        side = self.outcomes
        assert side is not None
        model = outcome.model
        since, partition, offset, value = source
        key = (model, outcome.event_id)
        status, pending = side.pending.find(model, outcome.event_id, self.engine.newest_ts(model))
        if status == "joined" and key in batch.seen:
            status = "duplicate"
        if status == "unknown_event" and time.time() - since < side.wait_s:
            waiting = side.waiting.setdefault(model, [])
            if len(waiting) < side.max_waiting:
                waiting.append(source)
                if not retry:  # counted once, when it starts to wait
                    batch.count(model, "waiting")
                return
        topic = self.config.kafka.outcomes_topic
        if status != "joined" or pending is None:
            batch.count(model, status)
            detail = {
                "duplicate": "the prediction already has its outcome",
                "expired": "the prediction is older than the outcomes' time to live",
                "unknown_event": "no prediction with this event_id is waiting",
            }[status]
            await self._dead_letter(Invalid(status, detail, value), topic, partition, offset)
            return
        task = self._task(model, pending.model_version, outcome.label)
        starts, why = side.book.add(model, pending, outcome.label, task)
        if why is not None:
            batch.count(model, "label_mismatch")
            await self._dead_letter(Invalid("label_mismatch", why, value), topic, partition, offset)
            return
        batch.seen.add(key)
        batch.joined.append((model, outcome.event_id, pending))
        batch.count(model, "joined")
        for start in starts:
            batch.touched[(model, pending.model_version, start)] = None

    async def _finish_join(self, batch: _JoinBatch) -> None:
        side = self.outcomes
        assert side is not None
        for (model, result), n in batch.results.items():
            self.metrics.outcomes.labels(model, result).inc(n)
        for model, version, start in batch.touched:
            state = side.book.states[model][(version, start)]
            if state.rows is not None:  # still open windows are reported when they close
                await self._publish_quality(model, version, start)
        for model in batch.models:
            self._save(model)
        await self._write_states()
        # marked only once the state that counts them is saved: a crash in between
        # redelivers the outcomes, which the saved offsets then skip
        markers = side.pending.mark_joined(batch.joined)
        for (model, _, _), row in zip(batch.joined, markers, strict=True):
            self._log_pending(self.partition_of[model], [row])

    async def _retry_waiting(self, models: Iterable[str]) -> None:
        """Tries again the outcomes that came before their predictions."""
        side = self.outcomes
        if side is None:
            return
        batch = _JoinBatch()
        for model in models:
            waiting = side.waiting.pop(model, None)
            if not waiting:
                continue
            batch.models.add(model)
            for source in waiting:
                outcome = decode_outcome(source[3])
                if not isinstance(outcome, Invalid):
                    await self._join(outcome, source, batch, retry=True)
        if batch.models:
            await self._finish_join(batch)

    async def _dead_letter(self, bad: Invalid, topic: str, partition: int, offset: int) -> None:
        self.metrics.invalid.labels(bad.reason).inc()
        await self.send_dlq(dlq_record(bad, topic, partition, offset))


def _temporary_datadir() -> str:
    path = tempfile.mkdtemp(prefix="driftline-worker-")
    log.warning(
        "no --datadir: using %s; predictions waiting for their outcomes do not survive a "
        "restart (give the worker a data directory of its own)",
        path,
    )
    return path


class DriftlineApp(faust.App):
    """A Faust app whose agents on ``batch_topics`` receive each fetched run of a
    partition's records as one event (stream.batching)."""

    batch_topics: frozenset[str] = frozenset()

    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)


def _run_messages(runs: Sequence[Any]) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record in a take of RecordRun events (a
    tombstone's value is None: no event, dead-lettered like an empty message)."""
    return [
        (event.message.partition, offset, value or b"")
        for event in runs
        for offset, value in event.message.records
    ]


async def _ack_runs(stream: Any, runs: Sequence[Any], held: Iterable[int]) -> None:
    """Acks a take of RecordRun events but the records at ``held`` positions (see
    :func:`_run_messages`): those are read again after a seek."""
    keep = set(held)
    position = 0
    for event in runs:
        message: RecordRun = event.message
        for offset, _ in message.records:
            if position in keep:
                message.held.add(offset)
            position += 1
        await stream.ack(event)


def create_app(config: MonitorConfig, datadir: Path | None = None) -> tuple[faust.App, Handler]:
    """The Faust app and its handler for one worker process."""
    kafka = config.kafka
    app = DriftlineApp(
        kafka.group,
        broker=f"kafka://{kafka.bootstrap}",
        broker_credentials=kafka.security.faust_credentials(),
        store="memory://",
        datadir=str(datadir or _temporary_datadir()),
        topic_partitions=kafka.partitions,
        # Faust assigns with round robin when no table wants standbys, which splits the
        # co-partitioned events and outcomes topics; this keeps its co-partitioning
        # assignor (the app has no tables: its state is on the state topic)
        table_standby_replicas=1,
        web_enabled=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        producer_max_request_size=MAX_STATE_BYTES + 65_536,
        # one fetch brings up to a batch of records, delivered in runs per partition
        broker_max_poll_records=kafka.batch_size,
        # envelopes are large: a fetch of 1 MiB per partition holds only ~1,600 events;
        # 4 MiB keeps up with >200k events/s while a catch-up fetch stays small in memory
        consumer_max_fetch_size=4 << 20,
    )
    app.batch_topics = frozenset({kafka.events_topic, kafka.outcomes_topic})
    events_topic = app.topic(kafka.events_topic, value_serializer="raw", key_serializer="raw")
    reports_topic = app.topic(kafka.reports_topic, value_serializer="raw", key_serializer="raw")
    dlq_topic = app.topic(kafka.dlq_topic, value_serializer="raw", key_serializer="raw")
    alerts_topic = app.topic(kafka.alerts_topic, value_serializer="raw", key_serializer="raw")
    retrain_topic = app.topic(kafka.retrain_topic, value_serializer="raw", key_serializer="raw")
    outcomes_topic = app.topic(kafka.outcomes_topic, value_serializer="raw", key_serializer="raw")
    quality_topic = app.topic(kafka.quality_topic, value_serializer="raw", key_serializer="raw")
    metrics = WorkerMetrics()
    store = ReferenceStore(config)
    engine = WindowEngine(config.window.spec(), store)

    async def send_report(key: bytes, value: bytes) -> None:
        await reports_topic.send(key=key, value=value)

    async def send_dlq(value: bytes) -> None:
        await dlq_topic.send(value=value)

    async def send_alert(key: bytes, value: bytes) -> None:
        await alerts_topic.send(key=key, value=value)

    async def send_retrain(key: bytes, value: bytes) -> None:
        await retrain_topic.send(key=key, value=value)

    async def seek(partition: int, offset: int) -> None:
        await app.consumer.seek(TP(kafka.events_topic, partition), offset)

    async def seek_outcomes(partition: int, offset: int) -> None:
        await app.consumer.seek(TP(kafka.outcomes_topic, partition), offset)

    async def send_quality(key: bytes, value: bytes) -> None:
        await quality_topic.send(key=key, value=value)

    async def send_state(topic: str, key: bytes | None, value: bytes, partition: int) -> Any:
        return await app.producer.send(topic, key, value, partition, None, None)

    outcomes = None
    if config.outcomes.enabled:
        oc = config.outcomes
        outcomes = Outcomes(
            pending=PendingPredictions(
                Path(app.conf.datadir) / "predictions" if oc.store == "rocksdb" else None,
                oc.ttl,
            ),
            book=QualityBook(config.window.spec(), oc.ttl, oc.threshold),
            rules=QualityRuleEngine(config.rule_set(), source=config.source),
            send_quality=send_quality,
            seek=seek_outcomes,
            wait_s=oc.wait / 1000,
            log=KafkaPendingLog(kafka, kafka.pending_topic_name, send_state),
        )

    state = KafkaState(kafka, kafka.state_topic_name, send_state)

    handler = Handler(
        config=config,
        engine=engine,
        metrics=metrics,
        send_report=send_report,
        send_dlq=send_dlq,
        state=state,
        rules=RuleEngine(config.rule_set(), source=config.source),
        send_alert=send_alert,
        send_retrain=send_retrain,
        flush=app.producer.flush,
        seek=seek,
        outcomes=outcomes,
    )

    @app.agent(events_topic, name="driftline-events")
    async def consume(stream: Any) -> None:
        # each event is a run of a partition's records (stream.batching); noack_take +
        # acks after handling: take acks its whole buffer in a `finally`, so a worker
        # stopped mid-batch would commit events it never counted
        async for runs in stream.noack_take(kafka.partitions, within=kafka.batch_within):
            outcome = await handler.handle(_run_messages(runs))
            await _ack_runs(stream, runs, outcome.held)

    if outcomes is not None:

        @app.agent(outcomes_topic, name="driftline-outcomes")
        async def join(stream: Any) -> None:
            async for runs in stream.noack_take(kafka.partitions, within=kafka.batch_within):
                held = await handler.handle_outcomes(_run_messages(runs))
                await _ack_runs(stream, runs, held)

    # idle windows close within a quarter of idle_close; waiting outcomes retry within 5 s
    @app.timer(interval=max(0.5, min(5.0, config.window.idle_close / 4000)))
    async def close_idle() -> None:
        await handler.tick()

    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        await handler.revoke({tp.partition for tp in revoked if tp.topic == kafka.events_topic})

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        handler.sequencer.keep_only(
            {tp.partition for tp in assigned if tp.topic == kafka.events_topic}
        )
        if outcomes is not None:
            outcomes.sequencer.keep_only(
                {tp.partition for tp in assigned if tp.topic == kafka.outcomes_topic}
            )

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        await state.stop()
        if outcomes is not None and outcomes.log is not None:
            await outcomes.log.stop()

    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]

    @app.task
    async def report_unresolved() -> None:
        while True:
            await asyncio.sleep(30)
            for (model, version), why in store.errors.items():
                log.warning("no reference for %s version %s: %s", model, version, why)

    return app, handler


async def ensure_topics(config: MonitorConfig) -> None:
    """Creates the topics with the configured partition count; refuses a mismatch."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from stream.errors import StreamError

    kafka = config.kafka
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap, **kafka.security.aiokafka_kwargs()
    )
    await admin.start()
    try:
        # co-partitioned topics: a model's events, outcomes and state share a partition
        keyed = [
            kafka.events_topic,
            kafka.outcomes_topic,
            kafka.state_topic_name,
            kafka.pending_topic_name,
        ]
        existing = await admin.describe_topics(keyed)
        parts = {t["topic"]: len(t["partitions"]) for t in existing if not t["error_code"]}
        for topic in keyed:
            have = parts.get(topic)
            if have is not None and have != kafka.partitions:
                raise StreamError(
                    f"topic {topic} has {have} partitions but the configuration says "
                    f"{kafka.partitions}: the events, outcomes, state and pending topics need "
                    f"kafka.partitions partitions each"
                )
        wanted = [
            kafka.events_topic,
            kafka.reports_topic,
            kafka.dlq_topic,
            kafka.alerts_topic,
            kafka.retrain_topic,
            kafka.outcomes_topic,  # co-partitioned with the events: same count, model key
            kafka.quality_topic,
        ]
        topics = set(await admin.list_topics())
        new = [NewTopic(t, kafka.partitions, 1) for t in wanted if t not in topics]
        if kafka.state_topic_name not in topics:
            # one record per model, the newest kept: compacted; a model's state can be
            # larger than the broker's default message size
            compact = {"cleanup.policy": "compact", "max.message.bytes": str(MAX_STATE_BYTES)}
            new.append(NewTopic(kafka.state_topic_name, kafka.partitions, 1, topic_configs=compact))
        if config.outcomes.enabled and kafka.pending_topic_name not in topics:
            # records older than the outcomes' time to live (and a day's margin, as the
            # store's own) hold only expired predictions
            retention = {"retention.ms": str(config.outcomes.ttl + 86_400_000)}
            new.append(
                NewTopic(kafka.pending_topic_name, kafka.partitions, 1, topic_configs=retention)
            )
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()
