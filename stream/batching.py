"""Faust delivers one message at a time: each goes through the fetcher's ``wait_first``
(two tasks), the conductor's lock, a decode, an ``Event`` and a queue, and is acked on
its own — tens of microseconds per message, more than the whole of driftline's work on
a single-event message. This transport hands the agent of a *batch topic* each fetched
run of a partition's records as one message instead (``RecordRun``), through the same
conductor, flow control and generation checks; acking it acks every offset in it except
the ones the agent holds back. Other topics are delivered one message at a time, as
Faust does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode.utils.futures import notify


class RecordRun(ConsumerMessage):
    """A fetched run of one partition's records, delivered as one message: ``records``
    holds the (offset, value) pairs, ``offset`` is the last one's, ``value`` is None.
    Offsets put in ``held`` before it is acked are not acknowledged (they are read again
    after a seek)."""

    __slots__ = ("held", "records")

    records: list[tuple[int, bytes | None]]
    held: set[int]


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering the topics in ``app.batch_topics`` in runs."""

    def _batch_topics(self) -> frozenset[str]:
        return frozenset(getattr(self.app, "batch_topics", ()))

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        batch_topics = self._batch_topics()
        if not batch_topics:
            async for item in super().getmany(timeout):
                yield item
            return
        records, active = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            # as Faust does: the flow stopped (rebalance) while fetching
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning(f"exception performing seek when flow not active {exc}")
            return
        runs = {tp: recs for tp, recs in records.items() if tp.topic in batch_topics and recs}
        singles = {tp: recs for tp, recs in records.items() if tp.topic not in batch_topics}
        for tp, record_or_run in self._interleave(runs, singles):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if active is None or tp in active or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                if isinstance(record_or_run, list):
                    await self._add_run_gaps(tp, record_or_run)
                    yield tp, self._to_run(tp, record_or_run)
                else:
                    yield tp, self._to_message(tp, record_or_run)

    def _interleave(
        self, runs: dict[TP, list[Any]], singles: dict[TP, list[Any]]
    ) -> Iterable[tuple[TP, Any]]:
        yield from runs.items()
        if singles:
            yield from self.scheduler.iterate(singles)

    async def _add_run_gaps(self, tp: TP, records: list[Any]) -> None:
        """Registers the offsets a run skips (compaction, transaction markers) as gaps,
        as Faust does between single messages, so commits move past them."""
        previous = self._read_offset[tp]
        for record in records:
            if previous and record.offset > previous + 1:
                await faust_aiokafka.Consumer._add_gap(self, tp, previous + 1, record.offset - 1)
            previous = record.offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust's fetcher sees a run as one message at its last offset and takes the
        # offsets before it for a gap; the real ones are added by _add_run_gaps
        if tp.topic in self._batch_topics():
            return
        await super()._add_gap(tp, offset_from, offset_to)

    def _to_run(self, tp: TP, records: list[Any]) -> RecordRun:
        last = records[-1]
        run = RecordRun(
            last.topic,
            last.partition,
            last.offset,
            cast(float, None if last.timestamp is None else last.timestamp / 1000.0),
            last.timestamp_type,
            None,
            None,
            None,
            None,
            0,
            sum(r.serialized_value_size for r in records),
            tp,
            generation_id=self.app.consumer_generation_id,
        )
        run.records = [(r.offset, r.value) for r in records]
        run.held = set()
        return run

    def ack(self, message: Any) -> bool:
        if not isinstance(message, RecordRun):
            return bool(super().ack(message))
        # Consumer.ack for every offset of the run, in one step
        if message.acked:
            return False
        message.acked = True
        tp = message.tp
        try:
            self._unacked_messages.discard(message)
            if not self.app.topics.acks_enabled_for(message.topic):
                return False
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            acked = self._acked[tp]
            held = message.held
            fresh = [
                offset
                for offset, _ in message.records
                if offset not in held
                and (committed is None or offset >= committed)
                and offset not in index
            ]
            index.update(fresh)
            acked.extend(fresh)
            self._n_acked += len(fresh)
            return bool(fresh)
        finally:
            notify(self._waiting_for_ack)


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
