"""The ``driftline`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drift_core.errors import DriftlineError
from stream.errors import StreamError


def _kafka(args: argparse.Namespace) -> int:
    from stream.localkafka import LocalKafka, default_home

    broker = LocalKafka(
        home=Path(args.home).resolve() if args.home else default_home(),
        name=args.name,
        port=args.port,
        controller_port=args.controller_port,
        partitions=args.partitions,
    )
    if args.action == "up":
        broker.up(timeout=args.timeout)
        print(f"kafka {broker.bootstrap} ready (pid {broker.pid()}, logs {broker.log_file})")
    elif args.action == "down":
        broker.down()
        print(f"kafka {broker.bootstrap} stopped")
    elif args.action == "wipe":
        broker.wipe()
        print(f"removed {broker.instance_dir}")
    else:
        status = broker.status()
        print(json.dumps(status, indent=2))
        return 0 if status["ready"] else 3
    return 0


def _worker(args: argparse.Namespace) -> int:
    import faust

    from stream.config import load_config
    from stream.worker import create_app, ensure_topics

    config = load_config(args.config)
    asyncio.run(ensure_topics(config))
    app, handler = create_app(config, datadir=Path(args.datadir) if args.datadir else None)
    port = config.metrics.port if args.metrics_port is None else args.metrics_port
    if port:
        handler.metrics.serve(config.metrics.host, port)
        logging.getLogger("driftline").info(
            "metrics on http://%s:%d/metrics", config.metrics.host, port
        )
    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


def _secret(env_name: str) -> bytes:
    import os

    value = os.environ.get(env_name, "")
    if not value:
        raise StreamError(
            f"the webhook secret is read from ${env_name}, which is empty or unset "
            "(it is never taken from the command line, where `ps` would show it)"
        )
    return value.encode()


def _dispatcher(args: argparse.Namespace) -> int:
    from alerts.dispatcher import DispatcherMetrics, DispatcherSettings, dispatch_forever
    from stream.kafka_security import from_arguments as security_from_arguments

    settings = DispatcherSettings(
        bootstrap=args.bootstrap,
        urls=args.url,
        secret=_secret(args.secret_env),
        topic=args.topic,
        dlq_topic=args.dlq_topic,
        group=args.group,
        max_attempts=args.max_attempts,
        base_delay_s=args.base_delay,
        max_delay_s=args.max_delay,
        security=security_from_arguments(args),
    )
    logging.getLogger("driftline").info("dispatching %s", settings)
    metrics = DispatcherMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
    asyncio.run(dispatch_forever(settings, metrics))
    return 0


def _receiver(args: argparse.Namespace) -> int:
    from alerts.receiver import Receiver, serve

    receiver = Receiver(
        _secret(args.secret_env),
        command=args.command,
        seen_file=Path(args.seen_file) if args.seen_file else None,
        tolerance_s=args.tolerance,
    )
    serve(receiver, args.host, args.port)
    return 0


def _rules(args: argparse.Namespace) -> int:
    from alerts.prometheus import export_yaml
    from alerts.rules import default_rules, load_rules
    from stream.configfile import parse_duration

    rules = load_rules(args.rules) if args.rules else default_rules()
    text, notes = export_yaml(rules, parse_duration(args.window) // 1000)
    for note in notes:
        print(f"driftline: {note}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from stream.replay import build_reference

    kinds = {}
    for spec in args.kind or []:
        name, _, kind = spec.partition("=")
        if kind not in ("numeric", "categorical"):
            raise StreamError(f"--kind {spec!r}: use NAME=numeric or NAME=categorical")
        kinds[name] = kind
    to_registry = args.mlflow_model is not None or args.run_id is not None
    if args.out is None and not to_registry:
        raise StreamError("say where the profile goes: --out FILE and/or --mlflow-model NAME")
    model = args.mlflow_model or args.model
    profile = build_reference(args.data, model, args.version, kinds)
    kinds_text = ", ".join(f"{k}:{profile.kind(k)}" for k in profile.features)
    if args.out is not None:
        path = profile.save(args.out)
        print(f"wrote {path} ({len(profile.to_bytes()):,} bytes): {kinds_text}")
    if to_registry:
        from stream.registry import log_reference, tracking_uri

        logged = log_reference(
            profile,
            model=args.mlflow_model,
            version=args.version if args.mlflow_model else None,
            run_id=args.run_id,
        )
        where = f"models:/{logged.model}/{logged.version}" if logged.version else logged.run_id
        print(
            f"logged reference {logged.reference_id} for {where} as {logged.artifact_uri} "
            f"({tracking_uri()}): {kinds_text}"
        )
    return 0


def _when(text: str | None, parse: Callable[[str], int]) -> int | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else parse(text)


def _replay(args: argparse.Namespace) -> int:
    from alerts.rules import default_rules, load_rules
    from stream.config import load_config
    from stream.configfile import parse_duration
    from stream.events import parse_ts
    from stream.replay import frames, replay, summary, write_json
    from stream.windows import WindowSpec

    if args.to_kafka:
        from stream.kafka_security import from_arguments as security_from_arguments
        from stream.replay import parse_speed, publish

        sent = asyncio.run(
            publish(
                args.events,
                args.bootstrap,
                args.to_kafka,
                parse_speed(args.speed),
                args.batch,
                _when(args.from_, parse_ts),
                _when(args.to, parse_ts),
                security=security_from_arguments(args),
            )
        )
        print(f"published {sent:,} events to {args.to_kafka} on {args.bootstrap}")
        return 0
    if not args.reference and not args.config:
        raise StreamError(
            "replay needs --reference or --config (or --to-kafka to publish the events)"
        )
    if args.report_png_dir and not args.report:
        raise StreamError("--report-png-dir goes with --report OUT.html")
    config = load_config(args.config) if args.config else None
    resolve = _replay_references(args.reference, config)
    base = config.window.spec() if config is not None else WindowSpec(3_600_000, None, 0)
    spec = WindowSpec(
        parse_duration(args.window) if args.window else base.size_ms,
        parse_duration(args.hop) if args.hop else base.hop_ms,
        parse_duration(args.lateness) if args.lateness else base.lateness_ms,
    )
    if args.rules:
        rules = load_rules(args.rules)
    else:
        rules = config.rule_set() if config is not None else default_rules()
    from stream.backtest import Backtest

    backtest = Backtest.from_arguments(
        args.incidents, args.sweep or [], args.grace, rules, spec.size_ms
    )
    result = replay(
        frames(
            args.events,
            _when(args.from_, parse_ts),
            _when(args.to, parse_ts),
        ),
        spec,
        resolve,
        rules,
        progress=sys.stderr.isatty(),
        source=", ".join(args.events),
    )
    print(summary(result))
    if backtest is not None:
        print(f"\n{backtest.apply(result, rules)}")
    if args.json:
        write_json(result, Path(args.json))
        print(f"wrote {args.json}")
    if args.report:
        from stream.report import write_report

        png_dir = Path(args.report_png_dir) if args.report_png_dir else None
        written = write_report(result.to_json(), Path(args.report), png_dir, rules=rules)
        pngs = f" and {len(written) - 1} charts as PNG in {png_dir}" if png_dir else ""
        print(f"wrote {args.report}{pngs}")
    if args.mlflow_experiment:
        from stream.registry import log_backtest

        run_id = log_backtest(
            result.to_json(),
            args.mlflow_experiment,
            params={
                "events": ", ".join(args.events),
                "reference": args.reference or "",
                "config": args.config or "",
                "rules": args.rules or ("config" if config is not None else "shipped defaults"),
                "rule_names": ", ".join(r.name for r in rules.rules),
                "window_ms": spec.size_ms,
                "hop_ms": spec.hop_ms or "",
                "lateness_ms": spec.lateness_ms,
            },
            artifacts=[Path(p) for p in (args.json, args.report) if p],
        )
        print(f"logged the backtest as MLflow run {run_id} in experiment {args.mlflow_experiment}")
    return 0


def _replay_references(reference: str | None, config: Any) -> Callable[[str, str], Any]:
    """--reference FILE | models:/NAME (each event's version) | models:/NAME/VERSION |
    models:/NAME@ALIAS; else the monitor config's references."""
    from stream.config import ReferenceStore
    from stream.profiles import ModelProfile

    if reference is None:
        return ReferenceStore(config)
    if not reference.startswith("models:/"):
        profile = ModelProfile.load(reference)
        return lambda model, version: profile
    from stream.registry import RegistryReferences

    tracking = config.mlflow.tracking_uri if config is not None else None
    refs = RegistryReferences(tracking, retry_s=3600)
    name, _, pinned = reference.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    if pinned or alias:
        one = refs.resolve(name, pinned) if pinned else refs.by_alias(name, alias)
        if one is None:
            raise StreamError(f"no reference for {reference}: {'; '.join(refs.errors.values())}")
        return lambda model, version: one
    return lambda model, version: refs.resolve(name, version)


def _compare(args: argparse.Namespace) -> int:
    from stream.compare import compare_tables, render

    result = compare_tables(
        args.reference,
        args.current,
        args.columns.split(",") if args.columns else None,
        args.psi,
        args.ks,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(render(result))
    return 1 if args.fail_on_drift and result["drifted"] else 0


def build_parser() -> argparse.ArgumentParser:
    from stream import kafka_security

    parser = argparse.ArgumentParser(prog="driftline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="run a local single-node Kafka broker (KRaft)")
    kafka.add_argument("action", choices=["up", "down", "status", "wipe"])
    kafka.add_argument("--port", type=int, default=9092)
    kafka.add_argument("--controller-port", type=int, default=9093)
    kafka.add_argument("--partitions", type=int, default=4, help="default partitions per topic")
    kafka.add_argument("--name", default="default", help="instance name (its directory)")
    kafka.add_argument("--home", help="where jars and instances live (default .kafka)")
    kafka.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for ready")
    kafka.set_defaults(func=_kafka)

    worker = sub.add_parser("worker", help="run a stream worker")
    worker.add_argument("--config", required=True, help="monitor configuration (YAML)")
    worker.add_argument("--metrics-port", type=int, help="override metrics.port (0 = off)")
    worker.add_argument("--datadir", help="the worker's own data directory")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=_worker)

    disp = sub.add_parser("dispatcher", help="deliver retrain events to signed webhooks")
    disp.add_argument("--bootstrap", default="127.0.0.1:9092")
    disp.add_argument("--url", action="append", required=True, help="webhook URL (repeatable)")
    disp.add_argument("--secret-env", default="DRIFTLINE_WEBHOOK_SECRET")
    disp.add_argument("--topic", default="driftline.retrain")
    disp.add_argument("--dlq-topic", default="driftline.retrain.dlq")
    disp.add_argument("--group", default="driftline-dispatcher")
    disp.add_argument("--max-attempts", type=int, default=8)
    disp.add_argument("--base-delay", type=float, default=0.5, help="seconds")
    disp.add_argument("--max-delay", type=float, default=60.0, help="seconds")
    disp.add_argument("--metrics-host", default="127.0.0.1")
    disp.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics (0 = off)")
    kafka_security.add_arguments(disp)
    disp.set_defaults(func=_dispatcher)

    recv = sub.add_parser("receiver", help="reference webhook receiver for retrain events")
    recv.add_argument("--host", default="127.0.0.1")
    recv.add_argument("--port", type=int, default=8787)
    recv.add_argument("--secret-env", default="DRIFTLINE_WEBHOOK_SECRET")
    recv.add_argument("--seen-file", help="where accepted event ids are kept across restarts")
    recv.add_argument("--tolerance", type=int, default=300, help="timestamp window, seconds")
    recv.add_argument("--command", nargs=argparse.REMAINDER, help="run per event, JSON on stdin")
    recv.set_defaults(func=_receiver)

    rules = sub.add_parser("rules", help="work with alert rules")
    rules.add_argument("action", choices=["export-prometheus"])
    rules.add_argument("--rules", help="rules file (default: the shipped rules)")
    rules.add_argument("--window", default="1h", help="window size, to turn `for` into time")
    rules.add_argument("--out", help="write here instead of standard output")
    rules.set_defaults(func=_rules)

    ref = sub.add_parser("reference", help="build reference profiles")
    ref.add_argument("action", choices=["build"])
    ref.add_argument("data", nargs="+", help="Parquet, CSV or NDJSON files")
    ref.add_argument("--out", help="profile file to write")
    ref.add_argument("--model", default="model")
    ref.add_argument("--version", default="1")
    ref.add_argument(
        "--mlflow-model",
        metavar="NAME",
        help="log the profile with this registered model's --version in MLflow "
        "(MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)",
    )
    ref.add_argument("--run-id", help="log the profile as an artifact of this MLflow run")
    ref.add_argument("--kind", action="append", help="NAME=numeric|categorical (repeatable)")
    ref.set_defaults(func=_reference)

    rep = sub.add_parser("replay", help="backtest windows and rules on historical events")
    rep.add_argument("events", nargs="+", help="Parquet, CSV or NDJSON files")
    rep.add_argument(
        "--reference",
        help="profile file, or from MLflow: models:/NAME (each event's version), "
        "models:/NAME/VERSION or models:/NAME@ALIAS",
    )
    rep.add_argument("--config", help="monitor config: its models' references, window, rules")
    rep.add_argument("--rules", help="rules file (default: the config's, else the shipped rules)")
    rep.add_argument("--window", help="window size (default: the config's, else 1h)")
    rep.add_argument("--hop")
    rep.add_argument("--lateness", help="allowed lateness (default: the config's, else 0s)")
    rep.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="log the backtest as an MLflow run (parameters, alert counts, JSON/HTML report)",
    )
    rep.add_argument("--from", dest="from_", help="first event time (RFC 3339 or epoch ms)")
    rep.add_argument("--to", help="end of event time, exclusive")
    rep.add_argument("--json", help="write the windows, alerts and retrain events here")
    rep.add_argument("--report", metavar="OUT.html", help="write a self-contained HTML report")
    rep.add_argument("--report-png-dir", metavar="DIR", help="also write each chart as PNG here")
    rep.add_argument(
        "--incidents",
        metavar="FILE",
        help="YAML, JSON or CSV of when drift really happened (model, feature, start, end, "
        "note): scores the rules (caught, missed, delay, false alarms per day)",
    )
    rep.add_argument(
        "--grace", help="an alert up to this long after an incident ends counts (default: 1 window)"
    )
    rep.add_argument(
        "--sweep",
        action="append",
        metavar="RULE[=LO:HI:STEP]",
        help="evaluate the rule again at each threshold (default grid: 0.25x..4x its "
        "threshold) and print the trade-off (repeatable)",
    )
    rep.add_argument("--to-kafka", metavar="TOPIC", help="publish the events instead")
    rep.add_argument("--bootstrap", default="127.0.0.1:9092")
    rep.add_argument("--speed", default="max", help="60x (event time vs wall time) or max")
    rep.add_argument("--batch", type=int, default=1, help="events per batch envelope")
    kafka_security.add_arguments(rep)  # for --to-kafka
    rep.set_defaults(func=_replay)

    from stream import demo

    demo_p = sub.add_parser(
        "demo", help="the whole pipeline here: serving, drift, alert, verified retrain event"
    )
    demo.add_arguments(demo_p).set_defaults(func=demo.run)
    cmp_ = sub.add_parser("compare", help="one-shot drift check of a file against a reference")
    cmp_.add_argument("reference")
    cmp_.add_argument("current")
    cmp_.add_argument("--columns", help="comma-separated (default: every common column)")
    cmp_.add_argument("--psi", type=float, default=0.2, help="PSI threshold")
    cmp_.add_argument("--ks", type=float, default=0.15, help="KS threshold (numeric columns)")
    cmp_.add_argument("--json", help="write the figures here")
    cmp_.add_argument("--fail-on-drift", action="store_true", help="exit 1 when a column drifts")
    cmp_.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except DriftlineError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from aiokafka.errors import KafkaError

        if isinstance(exc, KafkaError):  # refused login, unreachable broker: one line
            print(f"driftline: Kafka: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
