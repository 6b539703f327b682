"""Replay: the stream's window engine and rule engine over historical events.

``driftline reference build DATA... --out REF`` profiles a table; ``driftline replay
EVENTS... --reference REF`` feeds events in event-time order through the very engines the
worker runs, so a backtest gives the reports and alerts the stream would have given.

Input tables (Parquet, CSV or NDJSON, read with polars' lazy scans) are flat: the event
fields ``ts`` (datetime, epoch milliseconds or RFC 3339 text), ``model``,
``model_version``, ``event_id``, ``prediction``, ``latency_ms``, ``status``, ``label``,
and every other column is a feature.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from alerts.engine import QualityRuleEngine, RuleEngine
from alerts.rules import RuleSet
from stream.engine import WindowEngine
from stream.errors import StreamError
from stream.events import Event
from stream.kafka_security import KafkaSecurity
from stream.outcomes import QualityBook, infer_task
from stream.profiles import Kind, ModelProfile
from stream.windows import WindowSpec

EVENT_FIELDS = (
    "ts",
    "model",
    "model_version",
    "event_id",
    "prediction",
    "latency_ms",
    "status",
    "label",
)
BATCH_ROWS = 50_000


class ReplayError(StreamError):
    """Input that replay cannot read; the message names the file and the problem."""


def scan(paths: Sequence[str | Path]) -> pl.LazyFrame:
    """One lazy frame over every input file (by extension)."""
    frames = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReplayError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            frames.append(pl.scan_parquet(path))
        elif suffix == ".csv":
            frames.append(pl.scan_csv(path, try_parse_dates=True))
        elif suffix in (".ndjson", ".jsonl", ".json"):
            frames.append(pl.scan_ndjson(path))
        else:
            raise ReplayError(f"{path}: unknown format {suffix!r}; use .parquet, .csv or .ndjson")
    return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]


def _ts_ms(frame: pl.LazyFrame) -> pl.LazyFrame:
    schema = frame.collect_schema()
    if "ts" not in schema:
        raise ReplayError("the input has no `ts` column (event time)")
    dtype = schema["ts"]
    if dtype == pl.String:
        ts = pl.col("ts").str.to_datetime(time_zone="UTC").dt.epoch("ms")
    elif isinstance(dtype, pl.Datetime):
        ts = pl.col("ts").dt.epoch("ms")
    else:
        ts = pl.col("ts").cast(pl.Int64)
    return frame.with_columns(ts.alias("ts"))


def feature_columns(schema: pl.Schema) -> list[str]:
    return [c for c in schema.names() if c not in EVENT_FIELDS]


def build_reference(
    paths: Sequence[str | Path],
    model: str,
    version: str,
    kinds: dict[str, Kind] | None = None,
) -> ModelProfile:
    """Profiles every feature column (and ``prediction``) of the input."""
    frame = scan(paths).collect()
    features = feature_columns(frame.schema)
    if not features:
        raise ReplayError("no feature columns: every column is an event field")
    columns: dict[str, Any] = {}
    for name in features:
        column = frame[name]
        columns[name] = column.to_numpy() if column.dtype.is_numeric() else column.to_list()
    prediction = frame["prediction"].to_list() if "prediction" in frame.columns else None
    profile = ModelProfile.build(model, version, columns, prediction=prediction, kinds=kinds)
    if "label" in frame.columns and "prediction" in frame.columns:
        # validation data with labels: the reference quality that accuracy_drop and the
        # like compare with
        from stream.outcomes import reference_quality

        try:
            profile.quality = reference_quality(
                frame["prediction"].to_numpy(), frame["label"].to_numpy()
            )
        except ValueError as exc:
            raise ReplayError(f"label column: {exc}") from None
    return profile


def frames(
    paths: Sequence[str | Path],
    from_ms: int | None = None,
    to_ms: int | None = None,
    rows: int = BATCH_ROWS,
    rows_in_memory: int = 500_000,
) -> Iterator[pl.DataFrame]:
    """The input in event-time order (stable for equal times), in frames of ``rows``.

    Memory stays bounded on inputs larger than RAM: the time span is cut into ranges of
    about ``rows_in_memory`` events, and each range is filtered (Parquet row-group
    statistics skip what is outside it), sorted if out of order and handed out before the
    next is read."""
    frame = _ts_ms(scan(paths))
    if from_ms is not None:
        frame = frame.filter(pl.col("ts") >= from_ms)
    if to_ms is not None:
        frame = frame.filter(pl.col("ts") < to_ms)
    where = ", ".join(map(str, paths))
    try:
        count, lo, hi = (
            frame.select(pl.len(), pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
            .collect(engine="streaming")
            .row(0)
        )
    except pl.exceptions.PolarsError as exc:
        raise ReplayError(f"cannot read {where}: {exc}") from None
    if not count or lo is None:
        raise ReplayError(f"no events in {where} (in the time range asked)")
    ranges = max(1, -(-count // rows_in_memory))
    step = max(1, -(-(hi - lo + 1) // ranges))
    for start in range(lo, hi + 1, step):
        inside = (pl.col("ts") >= start) & (pl.col("ts") < start + step)
        try:
            part = frame.filter(inside).collect(engine="streaming")
        except pl.exceptions.PolarsError as exc:
            raise ReplayError(f"cannot read {where}: {exc}") from None
        # sorted only when it is not in order already: a sort in the query held a second
        # copy of every range and took more time than the replay of it
        if not part["ts"].is_sorted():
            part = part.sort("ts", maintain_order=True)
        for first in range(0, part.height, rows):
            if first + rows < part.height:
                yield part.slice(first, rows)
            else:  # a copy, so a caller still holding it does not keep the whole range
                yield part[np.arange(first, part.height)]
        del part


def events(
    paths: Sequence[str | Path],
    from_ms: int | None = None,
    to_ms: int | None = None,
    default_model: str = "model",
) -> Iterator[list[Event]]:
    """Events in event-time order, in batches (for publishing, and for checks)."""
    for chunk in frames(paths, from_ms, to_ms):
        features = feature_columns(chunk.schema)
        start = 0
        n = chunk.height
        cols = {c: chunk[c].to_list() for c in chunk.columns}
        model = cols.get("model") or [default_model] * n
        version = cols.get("model_version") or ["1"] * n
        ids = cols.get("event_id") or [f"row-{start + i}" for i in range(n)]
        pred = cols.get("prediction") or [None] * n
        latency = cols.get("latency_ms") or [None] * n
        status = cols.get("status") or ["ok"] * n
        feats = [cols[f] for f in features]
        yield [
            Event(
                event_id=str(ids[i]),
                model=str(model[i]),
                model_version=str(version[i]),
                ts=int(cols["ts"][i]),
                features={f: feats[j][i] for j, f in enumerate(features)},
                prediction=pred[i],
                latency_ms=latency[i],
                status="error" if status[i] == "error" else "ok",
            )
            for i in range(n)
        ]


@dataclass
class ReplayResult:
    windows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    retrain_events: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    late: int = 0
    #: driftline.quality/v1 reports of windows whose rows had labels
    quality: list[dict[str, Any]] = field(default_factory=list)
    #: backtest scores against incidents and threshold sweeps (stream.backtest), if asked
    scores: dict[str, Any] | None = None
    sweep: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": "driftline.replay/v1",
            "events": self.events,
            "late_events": self.late,
            "rejected": self.rejected,
            "windows": self.windows,
            "quality": self.quality,
            "alerts": self.alerts,
            "retrain_events": self.retrain_events,
        }
        if self.scores is not None:
            doc["scores"] = self.scores
        if self.sweep is not None:
            doc["sweep"] = self.sweep
        return doc


def _numeric(frame: pl.DataFrame, name: str, source: str) -> np.ndarray:
    column = frame[name]
    if column.dtype == pl.String:
        raise ReplayError(
            f"{source}: column {name!r} holds text but the reference says it is numeric "
            f"(rows {frame['__row'][0]}..{frame['__row'][-1]})"
        )
    return column.cast(pl.Float64).to_numpy()


def _categorical(frame: pl.DataFrame, name: str, source: str) -> list[Any]:
    column = frame[name]
    if column.dtype != pl.String and column.dtype != pl.Null:
        raise ReplayError(
            f"{source}: column {name!r} holds {column.dtype} values but the reference says "
            f"it is categorical (rows {frame['__row'][0]}..{frame['__row'][-1]})"
        )
    return column.to_list()


def replay(
    batches: Iterator[pl.DataFrame],
    spec: WindowSpec,
    resolve: Any,
    rules: RuleSet,
    progress: bool = False,
    source: str = "input",
    tasks: dict[str, str] | None = None,
    threshold: float = 0.5,
) -> ReplayResult:
    """Runs the window engine (its columnar path) and the rule engine over frames; a
    ``label`` column gives each window's quality, as if every label had arrived."""
    tasks = tasks or {}
    engine = WindowEngine(spec, resolve)
    ruler = RuleEngine(rules)
    book = QualityBook(spec, ttl_ms=2**62, threshold=threshold)
    out = ReplayResult()
    started = time.monotonic()
    unknown_models: dict[tuple[str, str], int] = {}

    def take(reports: list[dict[str, Any]]) -> None:
        for report in reports:
            out.windows.append(report)
            book.window_closed(report)
            evaluation = ruler.evaluate(report)
            out.alerts.extend(evaluation.alerts)
            out.retrain_events.extend(evaluation.retrain)

    offset = 0
    for frame in batches:
        frame = frame.with_row_index("__row", offset=offset)
        offset += frame.height
        if "model" not in frame.columns:
            frame = frame.with_columns(pl.lit("model").alias("model"))
        if "model_version" not in frame.columns:
            frame = frame.with_columns(pl.lit("1").alias("model_version"))
        frame = frame.with_columns(
            pl.col("model").cast(pl.String), pl.col("model_version").cast(pl.String)
        )
        features = feature_columns(frame.schema)
        features.remove("__row")
        for (model, version), part in frame.partition_by(
            ["model", "model_version"], maintain_order=True, as_dict=True
        ).items():
            model, version = str(model), str(version)
            profile = engine.profile(model, version)
            if profile is None:
                unknown_models[(model, version)] = (
                    unknown_models.get((model, version), 0) + part.height
                )
                continue
            columns: dict[str, Any] = {}
            for name in features:
                if name in profile.features:
                    kind = profile.kind(name)
                    columns[name] = (
                        _numeric(part, name, source)
                        if kind == "numeric"
                        else _categorical(part, name, source)
                    )
            prediction = None
            if profile.prediction is not None and "prediction" in part.columns:
                prediction = (
                    _numeric(part, "prediction", source)
                    if profile.prediction.kind == "numeric"
                    else _categorical(part, "prediction", source)
                )
            outcome = engine.process_columns(
                model,
                version,
                part["ts"].to_numpy(),
                columns,
                prediction,
                part["latency_ms"].cast(pl.Float64).to_numpy()
                if "latency_ms" in part.columns
                else None,
                (part["status"] == "error").fill_null(False).to_numpy()
                if "status" in part.columns
                else None,
                unknown_per_row=sum(1 for f in features if f not in profile.features),
            )
            out.events += part.height
            out.late += outcome.late
            if "label" in part.columns and prediction is not None:
                _add_labels(book, model, version, part, prediction, tasks.get(model), profile)
            take(outcome.reports)
        if progress:
            rate = out.events / max(1e-9, time.monotonic() - started)
            print(
                f"\r{out.events:,} events, {len(out.windows)} windows, {rate:,.0f}/s",
                end="",
                file=sys.stderr,
            )
    take(engine.flush().reports)
    _quality(book, engine, rules, out)
    out.rejected.extend(
        {"reason": "unknown_model", "model": m, "model_version": v, "rows": n}
        for (m, v), n in unknown_models.items()
    )
    if progress:
        print(file=sys.stderr)
    return out


def _add_labels(
    book: QualityBook,
    model: str,
    version: str,
    part: pl.DataFrame,
    prediction: Any,
    task: str | None,
    profile: ModelProfile,
) -> None:
    labels = part["label"]
    keep = labels.is_not_null().to_numpy()
    if labels.dtype.is_numeric():
        keep &= np.isfinite(labels.cast(pl.Float64).fill_null(0.0).to_numpy())
    if not keep.any():
        return
    y = labels.to_numpy()[keep] if labels.dtype.is_numeric() else np.asarray(labels.to_list())[keep]
    p = np.asarray(prediction)[keep]
    ts = part["ts"].to_numpy()[keep].astype(np.int64)
    if task is None:
        task = str(profile.quality["task"]) if profile.quality else infer_task(y[0].item())
    spec = book.spec
    step = spec.step_ms
    last = ts - ts % step
    for k in range(-(-spec.size_ms // step)):
        starts = last - k * step
        inside = starts + spec.size_ms > ts
        for start in np.unique(starts[inside]).tolist():
            rows = inside & (starts == start)
            book.state(model, version, int(start), task).add_many(p[rows], y[rows])


def _quality(book: QualityBook, engine: WindowEngine, rules: RuleSet, out: ReplayResult) -> None:
    """Quality reports of the labelled windows, and the quality rules over them."""
    judge = QualityRuleEngine(rules)
    keys = sorted(
        (start, model, version)
        for model, states in book.states.items()
        for (version, start), state in states.items()
        if state.n
    )
    for start, model, version in keys:
        profile = engine.profile(model, version)
        report = book.report(model, version, start, profile.quality if profile else None)
        if profile is not None:
            report.update(profile.origin or {})
            report["reference"] = profile.identity
        out.quality.append(report)
        evaluation = judge.evaluate(report)
        out.alerts.extend(evaluation.alerts)
        out.retrain_events.extend(evaluation.retrain)


def summary(result: ReplayResult, psi_threshold: float = 0.2) -> str:
    head = f"{'model':12} {'version':8} {'window start':24} {'rows':>8}"
    lines = [f"{head}  drifted (psi > {psi_threshold})"]
    for w in result.windows:
        drifted = [k for k, f in w["features"].items() if (f.get("psi") or 0) > psi_threshold]
        lines.append(
            f"{w['model'][:12]:12} {w['model_version'][:8]:8} {w['window_start'][:24]:24} "
            f"{w['rows']:>8}  {', '.join(drifted) or '-'}"
        )
    firing = [a for a in result.alerts if a["state"] == "firing"]
    lines.append(
        f"\n{result.events:,} events, {len(result.windows)} windows, {len(firing)} alerts fired, "
        f"{len(result.retrain_events)} retrain events, {result.late} late, "
        f"{len(result.rejected)} rejected"
    )
    for a in firing:
        lines.append(
            f"  {a['severity']:8} {a['rule']:16} {a['model']}/{a['model_version']} "
            f"{a['feature'] or '-':16} {a['metric']}={a['value']:.3f} at {a['window_start']}"
        )
    return "\n".join(lines)


def write_json(result: ReplayResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=1))


def parse_speed(text: str) -> float | None:
    """'60x' -> 60.0 (event time runs 60 times faster than wall time); 'max' -> None."""
    if text == "max":
        return None
    try:
        value = float(text.removesuffix("x"))
    except ValueError:
        raise ReplayError(f"--speed {text!r}: use e.g. 60x or max") from None
    if value <= 0:
        raise ReplayError(f"--speed {text!r} must be positive")
    return value


async def publish(
    paths: Sequence[str | Path],
    bootstrap: str,
    topic: str,
    speed: float | None = None,
    batch: int = 1,
    from_ms: int | None = None,
    to_ms: int | None = None,
    security: KafkaSecurity | None = None,
) -> int:
    """Publishes the events to Kafka in event-time order, keyed by model: one message per
    event (``batch`` = 1) or ``driftline.batch/v1`` envelopes of up to ``batch`` events of
    one model. ``speed`` paces event time against wall time (None = as fast as possible)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from stream.events import encode_batch, encode_event

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=10,
        max_request_size=8 * 1024 * 1024,
        **(security or KafkaSecurity()).aiokafka_kwargs(),
    )
    await producer.start()
    sent = 0
    first_ts: int | None = None
    started = time.monotonic()
    pending: dict[str, list[Event]] = {}
    try:
        futures = []

        async def flush(model: str) -> None:
            group = pending.pop(model, [])
            if group:
                value = encode_event(group[0]) if batch == 1 else encode_batch(group)
                futures.append(await producer.send(topic, value=value, key=model.encode()))

        for chunk in events(paths, from_ms, to_ms):
            for event in chunk:
                if speed is not None:
                    first_ts = event.ts if first_ts is None else first_ts
                    due = started + (event.ts - first_ts) / 1000 / speed
                    wait = due - time.monotonic()
                    if wait > 0:
                        for model in list(pending):
                            await flush(model)
                        await asyncio.sleep(wait)
                pending.setdefault(event.model, []).append(event)
                if len(pending[event.model]) >= batch:
                    await flush(event.model)
                sent += 1
            if len(futures) > 10_000:
                await asyncio.gather(*futures)
                futures.clear()
        for model in list(pending):
            await flush(model)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
