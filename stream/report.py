"""``driftline replay ... --report OUT.html``: one self-contained HTML page of a replay.

Built from the document ``--json`` writes (``driftline.replay/v1``): a summary header,
per-feature drift over time (PSI, KS statistic or Jensen-Shannon distance, and the
p-value, per window) drawn against the rule thresholds with firing alerts, alert episodes
and retrain events on the time axis, and a table of alert episodes. Charts are drawn
with matplotlib (Agg, imported only here) and embedded as base64 PNG, so the page
references nothing outside itself; the same PNGs can be written to a directory. All text
from the document is HTML-escaped: model and feature names come from the events.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.errors import StreamError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from alerts.rules import Rule, RuleSet

#: Lines drawn when no rule (and no alert) gives a threshold for PSI or KS.
CONVENTIONAL = {"psi": 0.2, "ks": 0.1}
#: Charts drawn at most; the rest of the model/feature pairs are listed without one.
MAX_CHARTS = 40
#: p-values are drawn on a log axis; zeros and smaller values sit at this floor.
P_FLOOR = 1e-16

_PANELS = {
    "numeric": (("psi", "PSI"), ("ks", "KS statistic"), ("ks_pvalue", "KS p-value")),
    "categorical": (("psi", "PSI"), ("js", "Jensen-Shannon"), ("chi2_pvalue", "chi² p-value")),
}
_LABELS = {"missing_share": "missing share", "ks": "KS", "psi": "PSI", "js": "JS"}
_LOG_METRICS = frozenset({"ks_pvalue", "chi2_pvalue", "missing_pvalue"})
_VERSION_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")
_ALERT = "#d62728"
_RETRAIN = "#7b3fa0"
_BEYOND = "#e07b00"


class ReportError(StreamError):
    """The report cannot be drawn (matplotlib is missing)."""


@dataclass(frozen=True, slots=True)
class Threshold:
    """One horizontal line on a panel: a rule's threshold, or the conventional one."""

    op: str
    value: float
    source: str  # "rule feature_psi", "conventional, no rule"
    for_: int = 1
    conventional: bool = False

    @property
    def label(self) -> str:
        windows = f" for {self.for_} windows" if self.for_ > 1 else ""
        return f"{self.source}: {self.op} {self.value:g}{windows}"

    def breached(self, value: float) -> bool:
        return {
            ">": value > self.value,
            ">=": value >= self.value,
            "<": value < self.value,
            "<=": value <= self.value,
        }.get(self.op, False)


@dataclass(slots=True)
class Episode:
    """A contiguous run of firing for one (rule, model, version, feature) key."""

    rule: str
    severity: str
    action: str
    model: str
    version: str
    feature: str | None
    metric: str
    op: str
    threshold: float
    start_ms: int
    end_ms: int | None  # start of the clean window that resolved it; None = still firing
    windows: int = 0
    peak: float | None = None
    retrain: bool = False


@dataclass(slots=True)
class Chart:
    """The figures of one feature of one model, window by window, and what to mark."""

    model: str
    feature: str
    kind: str
    points: list[tuple[int, str, Mapping[str, Any]]] = field(default_factory=list)
    panels: list[tuple[str, str]] = field(default_factory=list)
    thresholds: dict[str, list[Threshold]] = field(default_factory=dict)
    firing: list[Mapping[str, Any]] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    retrain_ms: list[int] = field(default_factory=list)
    breach_windows: int = 0
    last_end_ms: int = 0

    def peak(self, metric: str) -> float | None:
        values = [v for _, _, f in self.points if (v := _finite(f.get(metric))) is not None]
        return max(values) if values else None

    @property
    def drifted(self) -> bool:
        return bool(self.firing) or self.breach_windows > 0


def write_report(
    document: Mapping[str, Any],
    html_path: Path,
    png_dir: Path | None = None,
    *,
    rules: RuleSet | None = None,
    max_charts: int = MAX_CHARTS,
) -> list[Path]:
    """Writes the HTML report of a replay document (and each chart as a PNG in ``png_dir``).

    Thresholds come from ``rules`` (the rules the replay ran with) when given, else from
    the document's alerts, else the conventional PSI 0.2 / KS 0.1, labelled as such. At
    most ``max_charts`` charts, most drifted first; PNGs are ``<model>__<feature>.png``
    (names reduced to ``[A-Za-z0-9._-]``). Returns the files written, the HTML first."""
    try:
        import matplotlib  # noqa: F401  (only checked here; _draw imports what it uses)
    except ImportError:
        raise ReportError(
            "the HTML report draws its charts with matplotlib, which is not installed here: "
            "pip install matplotlib"
        ) from None
    windows = sorted(
        document.get("windows") or [],
        key=lambda w: (str(w["model"]), int(w["window_start_ms"]), str(w["model_version"])),
    )
    alerts = list(document.get("alerts") or [])
    retrain = list(document.get("retrain_events") or [])
    eps = episodes(document, rules)
    charts = _charts(windows, alerts, retrain, eps, rules)
    shown = charts[: max(0, max_charts)]
    spans = _spans(windows)
    pngs = [_draw(chart, spans[chart.model]) for chart in shown]

    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    page = _page(document, windows, alerts, retrain, eps, charts, pngs, rules is not None)
    html_path.write_text(page, encoding="utf-8")
    written = [html_path]
    if png_dir is not None:
        png_dir = Path(png_dir)
        png_dir.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for chart, png in zip(shown, pngs, strict=True):
            name = f"{_slug(chart.model)}__{_slug(chart.feature)}"
            stem, n = name, 1
            while stem.lower() in taken:
                n += 1
                stem = f"{name}-{n}"
            taken.add(stem.lower())
            path = png_dir / f"{stem}.png"
            path.write_bytes(png)
            written.append(path)
    return written


def episodes(document: Mapping[str, Any], rules: RuleSet | None = None) -> list[Episode]:
    """Alert episodes of a replay document: each firing alert opens one, the matching
    resolved alert closes it; windows, peak value and retrain event are looked up."""
    by_model: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for w in document.get("windows") or []:
        by_model.setdefault((str(w["model"]), str(w["model_version"])), []).append(w)
    for ws in by_model.values():
        ws.sort(key=lambda w: int(w["window_start_ms"]))
    retrained = {
        (
            d.get("rule"),
            d.get("model"),
            d.get("model_version"),
            (d.get("window") or {}).get("start"),
            b.get("feature"),
            b.get("metric"),
        )
        for e in document.get("retrain_events") or []
        for d in [e.get("data") or {}]
        for b in d.get("breaches") or []
    }
    named = {r.name: r for r in rules.rules} if rules is not None else {}
    out: list[Episode] = []
    open_: dict[tuple[str, str, str, str], Episode] = {}
    for a in document.get("alerts") or []:
        key = (str(a["rule"]), str(a["model"]), str(a["model_version"]), a.get("feature") or "")
        if a["state"] == "firing":
            ep = Episode(
                rule=str(a["rule"]),
                severity=str(a["severity"]),
                action=str(a["action"]),
                model=str(a["model"]),
                version=str(a["model_version"]),
                feature=a.get("feature"),
                metric=str(a["metric"]),
                op=str(a.get("op") or _direction(str(a["metric"]))),
                threshold=float(a["threshold"]),
                start_ms=int(a["window_start_ms"]),
                end_ms=None,
            )
            started = (ep.rule, ep.model, ep.version, a["window_start"], ep.feature, ep.metric)
            ep.retrain = started in retrained
            open_[key] = ep
            out.append(ep)
        elif key in open_:
            open_.pop(key).end_ms = int(a["window_start_ms"])
    for ep in out:
        inside = [
            w
            for w in by_model.get((ep.model, ep.version), [])
            if ep.start_ms <= int(w["window_start_ms"])
            and (ep.end_ms is None or int(w["window_start_ms"]) < ep.end_ms)
        ]
        ep.windows = len(inside)
        values = [
            v
            for w in inside
            if (v := _figure(w, ep.feature, ep.metric, named.get(ep.rule))) is not None
        ]
        if values:
            ep.peak = min(values) if ep.op.startswith("<") else max(values)
    out.sort(key=lambda e: (e.start_ms, e.model, e.version, e.rule, e.feature or ""))
    return out


def _charts(
    windows: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    retrain: Sequence[Mapping[str, Any]],
    eps: Sequence[Episode],
    rules: RuleSet | None,
) -> list[Chart]:
    """One chart per (model, feature), most drifted first."""
    charts: dict[tuple[str, str], Chart] = {}
    for w in windows:
        model = str(w["model"])
        for name, figures in (w.get("features") or {}).items():
            chart = charts.get((model, name))
            if chart is None:
                kind = str(figures.get("kind") or "numeric")
                chart = charts[(model, name)] = Chart(model, name, kind)
            chart.points.append((int(w["window_start_ms"]), str(w["model_version"]), figures))
            chart.last_end_ms = max(chart.last_end_ms, int(w["window_end_ms"]))
    for a in alerts:
        chart = charts.get((str(a["model"]), a.get("feature") or ""))
        if chart is not None and a["state"] == "firing":
            chart.firing.append(a)
    for ep in eps:
        chart = charts.get((ep.model, ep.feature or ""))
        if chart is not None:
            chart.episodes.append(ep)
    starts = {(str(w["model"]), w["window_start"]): int(w["window_start_ms"]) for w in windows}
    for e in retrain:
        data = e.get("data") or {}
        start = starts.get((str(data.get("model")), (data.get("window") or {}).get("start")))
        for b in data.get("breaches") or []:
            chart = charts.get((str(data.get("model")), b.get("feature") or ""))
            if chart is not None and start is not None and start not in chart.retrain_ms:
                chart.retrain_ms.append(start)
    for chart in charts.values():
        metrics = [m for m, _ in _PANELS.get(chart.kind, _PANELS["numeric"])]
        fired = {str(a["metric"]) for a in chart.firing}
        ruled = {
            r.metric
            for r in (rules.rules if rules is not None else [])
            if r.per_feature and r.applies_to(chart.model) and r.selects(chart.feature)
        }
        # a rule over every feature adds no panel where its figure is never computed
        ruled = {m for m in ruled for _, _, f in chart.points if _finite(f.get(m)) is not None}
        metrics += sorted((fired | ruled) - set(metrics))
        for metric in metrics:
            chart.thresholds[metric] = _thresholds(chart, metric, alerts, rules)
        chart.panels = [(m, _panel_label(chart.kind, m)) for m in metrics]
        chart.breach_windows = sum(
            1
            for _, _, figures in chart.points
            if any(
                t.breached(v)
                for metric, lines in chart.thresholds.items()
                if (v := _finite(figures.get(metric))) is not None
                for t in lines
            )
        )
    return sorted(
        charts.values(),
        key=lambda c: (
            -len(c.firing),
            -c.breach_windows,
            -(c.peak("psi") or 0.0),
            c.model,
            c.feature,
        ),
    )


def _thresholds(
    chart: Chart, metric: str, alerts: Sequence[Mapping[str, Any]], rules: RuleSet | None
) -> list[Threshold]:
    lines: list[Threshold] = []
    if rules is not None:
        for rule in rules.rules:
            if rule.metric != metric or not rule.applies_to(chart.model):
                continue
            if not rule.selects(chart.feature):
                continue
            enabled, threshold, for_, _ = rule.settings(chart.model, chart.feature)
            if enabled:
                lines.append(Threshold(rule.op, threshold, f"rule {rule.name}", for_))
    else:
        seen = set()
        for a in alerts:
            if (a["model"], a.get("feature"), a["metric"]) != (chart.model, chart.feature, metric):
                continue
            op = str(a.get("op") or _direction(metric))
            key = (str(a["rule"]), op, float(a["threshold"]))
            if key not in seen:
                seen.add(key)
                lines.append(Threshold(op, key[2], f"rule {key[0]} (from its alerts)"))
    if not lines and metric in CONVENTIONAL:
        lines.append(Threshold(">", CONVENTIONAL[metric], "conventional, no rule", 1, True))
    return lines


def _figure(
    window: Mapping[str, Any], feature: str | None, metric: str, rule: Rule | None
) -> float | None:
    """The value a rule looks at in a window (the rule engine's own lookup)."""
    if feature is not None:
        return _finite(((window.get("features") or {}).get(feature) or {}).get(metric))
    from pydantic import ValidationError

    from alerts.engine import observations
    from alerts.rules import Rule

    if rule is None:
        try:
            rule = Rule.model_validate({"name": "peak", "metric": metric, "threshold": 0.0})
        except ValidationError:
            return None
    found = observations(rule, dict(window))
    return _finite(found[0].value) if found else None


def _draw(chart: Chart, span: tuple[int, int]) -> bytes:
    """The chart as PNG bytes: one panel per figure, sharing the time axis."""
    import matplotlib
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # matplotlib's dates are days since its epoch (1970 unless configured otherwise)
    epoch = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))  # type: ignore[no-untyped-call]

    def x(ms: int) -> float:
        return epoch + ms / 86_400_000

    panel_h, top_h, bottom_h = 1.55, 0.5, 0.45
    height = top_h + bottom_h + panel_h * len(chart.panels)
    style = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(style), warnings.catch_warnings():  # type: ignore[arg-type]
        # names in scripts DejaVu Sans lacks (CJK, ...) still draw, as boxes
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig = Figure(figsize=(11.0, height), dpi=100)
        FigureCanvasAgg(fig)
        fig.subplots_adjust(
            left=0.075, right=0.735, top=1 - top_h / height, bottom=bottom_h / height, hspace=0.22
        )
        title = f"{_short(chart.model, 40)}  ·  {_short(chart.feature, 70)}  ({chart.kind})"
        fig.text(
            0.075,
            1 - 0.14 / height,
            title,
            ha="left",
            va="top",
            fontsize=11,
            fontweight="bold",
            parse_math=False,
        )
        axes = fig.subplots(len(chart.panels), 1, sharex=True, squeeze=False)[:, 0]
        versions = list(dict.fromkeys(v for _, v, _ in chart.points))
        for i, (ax, (metric, label)) in enumerate(zip(axes, chart.panels, strict=True)):
            _panel(ax, x, chart, metric, label, versions, first=i == 0)
        pad = max((span[1] - span[0]) // 40, 60_000)
        axes[-1].set_xlim(x(span[0] - pad), x(span[1] + pad))
        locator = mdates.AutoDateLocator(minticks=4, maxticks=10)  # type: ignore[no-untyped-call]
        formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(formatter)
        axes[-1].set_xlabel("window start (UTC)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _panel(
    ax: Axes,
    x: Callable[[int], float],
    chart: Chart,
    metric: str,
    label: str,
    versions: list[str],
    first: bool,
) -> None:
    """One figure of the chart: a line per model version, threshold lines, the markers."""
    log = metric in _LOG_METRICS
    lines = chart.thresholds.get(metric, [])
    drawn = [t.value for t in lines]
    beyond: list[tuple[float, float]] = []
    for n, version in enumerate(versions):
        xs, ys = [], []
        for start, v, figures in chart.points:
            if v != version:
                continue
            value = _finite(figures.get(metric))
            if value is not None:
                value = max(value, P_FLOOR) if log else value
                drawn.append(value)
                if any(t.breached(value) for t in lines):
                    beyond.append((x(start), value))
            xs.append(x(start))
            ys.append(math.nan if value is None else value)
        name = f"version {_plain(_short(version, 20))}" if len(versions) > 1 else "per window"
        colour = _VERSION_COLOURS[n % len(_VERSION_COLOURS)]
        ax.plot(xs, ys, color=colour, lw=1.5, marker="o", ms=3.5, label=name, zorder=3)
    if beyond:
        bx, by = zip(*beyond, strict=True)
        ax.plot(bx, by, ls="", marker="o", ms=6, color=_BEYOND, label="beyond threshold", zorder=4)
    for k, t in enumerate(lines):
        dashes = ":" if t.conventional else ("--", "-.", (0, (5, 2, 1, 2)))[k % 3]
        colour = "#555555" if t.conventional else _BEYOND
        ax.axhline(t.value, color=colour, ls=dashes, lw=1.3, label=t.label, zorder=2)
    for ep in chart.episodes:
        # an episode still firing at the end runs to the edge of the axis
        end = ep.end_ms if ep.end_ms is not None else chart.last_end_ms
        ax.axvspan(
            x(ep.start_ms), x(end), color=_ALERT, alpha=0.08, lw=0, label="alert episode", zorder=1
        )
    firing = [a for a in chart.firing if a["metric"] == metric]
    if firing:
        ax.plot(
            [x(int(a["window_start_ms"])) for a in firing],
            [max(float(a["value"]), P_FLOOR) if log else float(a["value"]) for a in firing],
            ls="",
            marker="o",
            ms=12,
            mfc="none",
            mec=_ALERT,
            mew=2,
            label="alert fired",
            zorder=5,
        )
    for start in chart.retrain_ms:
        ax.axvline(x(start), color=_RETRAIN, ls="-.", lw=1.4, label="retrain event", zorder=2)
    ax.set_ylabel(f"{label} (log)" if log else label)
    ax.grid(True, axis="y", alpha=0.3)
    if log and drawn:
        ax.set_yscale("log")
        ax.set_ylim(min(drawn) / 5, 2.0)
    elif drawn:
        top = max(drawn) * 1.15 or 1.0
        ax.set_ylim(0, min(top, 1.05) if metric in ("ks", "js", "missing_share") else top)
    if not any(_finite(f.get(metric)) is not None for _, _, f in chart.points):
        ax.text(
            0.5,
            0.5,
            "no values for this figure",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#777777",
        )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if not first:  # the time markers are explained once, on the first panel
        unique = {k: h for k, h in unique.items() if k not in ("alert episode", "retrain event")}
    ax.legend(
        unique.values(),
        unique.keys(),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.02),
        fontsize=8,
        frameon=False,
        borderaxespad=0,
    )


_CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dde1e8; --alert: #c62828;
        --warn: #b26a00; --info: #2f6db3; --ok: #2e7d32; --bg: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans",
       "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 2px; }
h2 { font-size: 20px; margin: 36px 0 8px; }
h3 { font-size: 16px; margin: 0; overflow-wrap: anywhere; }
p.sub, p.note, .muted { color: var(--muted); }
p.note { margin: 4px 0 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr));
         gap: 10px; margin: 18px 0 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
           color: var(--muted); }
.card .v { font-size: 20px; font-weight: 600; }
.card .d { font-size: 13px; color: var(--muted); overflow-wrap: anywhere; }
nav a, a { color: var(--info); }
figure.chart { background: #fff; border: 1px solid var(--line); border-radius: 8px;
               margin: 0 0 18px; padding: 12px 14px; }
figure.chart header { display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: baseline;
                      margin-bottom: 6px; }
p.thresholds { margin: 0 0 4px; font-size: 13px; color: var(--muted); }
figure.chart img { display: block; width: 100%; height: auto; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px;
         font-weight: 600; color: #fff; background: var(--muted); white-space: nowrap; }
.badge.alert, .badge.critical { background: var(--alert); }
.badge.warning { background: var(--warn); }
.badge.info { background: var(--info); }
.badge.retrain { background: #7b3fa0; }
.badge.ok { background: var(--ok); }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px;
        border: 1px solid var(--line); }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #eef1f5; position: sticky; top: 0; }
td.when { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { overflow-wrap: anywhere; max-width: 260px; }
tr.open td { background: #fff4f4; }
details { margin: 8px 0 18px; }
summary { cursor: pointer; color: var(--info); }
footer { margin-top: 36px; color: var(--muted); font-size: 13px; }
"""


def _page(
    document: Mapping[str, Any],
    windows: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    retrain: Sequence[Mapping[str, Any]],
    eps: Sequence[Episode],
    charts: Sequence[Chart],
    pngs: Sequence[bytes],
    from_rules: bool,
) -> str:
    shown = charts[: len(pngs)]
    ids = {(c.model, c.feature): f"chart-{i + 1}" for i, c in enumerate(shown)}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # nothing but inline styles and data: images, ever
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>driftline replay report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>driftline replay report</h1>",
        f'<p class="sub">{_e(document.get("schema") or "driftline.replay")} document: '
        f"{len(windows):,} windows, {len(alerts):,} alerts, {len(retrain):,} retrain events</p>",
        _summary(document, windows, alerts, retrain, eps, charts, from_rules),
        '<nav><a href="#charts">Drift over time</a> · <a href="#episodes">Alert episodes</a></nav>',
        '<section id="charts"><h2>Drift over time</h2>',
    ]
    if from_rules:
        where = "the rules the replay ran with"
    else:
        where = "the alerts in the document (rules not given)"
    parts.append(
        '<p class="note">One chart per model and feature, one point per window (at its start). '
        f"Orange lines: thresholds from {where}; grey dotted lines: conventional thresholds "
        "(PSI 0.2, KS 0.1) where no rule gives one. Red rings: alerts firing; red bands: "
        "alert episodes; purple dash-dot lines: retrain events. p-values are on a log axis "
        f"(values below {P_FLOOR:g} drawn at {P_FLOOR:g}).</p>"
    )
    if not charts:
        parts.append('<p class="note">No feature figures in this replay.</p>')
    if len(shown) < len(charts):
        parts.append(
            f'<p class="note"><strong>Showing the {len(shown)} most drifted of {len(charts):,} '
            "model/feature pairs</strong> (those with alerts first, then by windows beyond a "
            f"threshold, then by peak PSI). The other {len(charts) - len(shown):,} are "
            'listed <a href="#not-charted">below</a> without charts.</p>'
        )
    for i, (chart, png) in enumerate(zip(shown, pngs, strict=True)):
        parts.append(_figure_html(i + 1, chart, png))
    if len(shown) < len(charts):
        parts.append(_not_charted(charts[len(shown) :]))
    parts.append("</section>")
    parts.append(_episode_table(eps, ids))
    parts.append(
        "<footer>Generated by <code>driftline replay --report</code> from the same document "
        "<code>--json</code> writes. Self-contained: no scripts, no external resources.</footer>"
    )
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _summary(
    document: Mapping[str, Any],
    windows: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    retrain: Sequence[Mapping[str, Any]],
    eps: Sequence[Episode],
    charts: Sequence[Chart],
    from_rules: bool,
) -> str:
    versions: dict[str, list[str]] = {}
    for w in windows:
        vs = versions.setdefault(str(w["model"]), [])
        if str(w["model_version"]) not in vs:
            vs.append(str(w["model_version"]))
    models = "; ".join(f"{m} (v{', v'.join(vs)})" for m, vs in versions.items())
    sizes = Counter(int(w["window_end_ms"]) - int(w["window_start_ms"]) for w in windows)
    size = f" of {_duration(sizes.most_common(1)[0][0])}" if sizes else ""
    if windows:
        first = min(int(w["window_start_ms"]) for w in windows)
        last = max(int(w["window_end_ms"]) for w in windows)
        span = f"{_when(first)} → {_when(last)}"
        span_d = f"{_duration(last - first)} of event time (UTC)"
    else:
        span, span_d = "—", "no windows"
    rejected = sum(int(r.get("rows") or 0) for r in document.get("rejected") or [])
    drifted = [c for c in charts if c.drifted]
    names = ", ".join(
        c.feature if len(versions) == 1 else f"{c.model}/{c.feature}" for c in drifted[:12]
    )
    if len(drifted) > 12:
        names += f" and {len(drifted) - 12:,} more"
    firing = [a for a in alerts if a["state"] == "firing"]
    severities = Counter(str(a["severity"]) for a in firing)
    sev = ", ".join(f"{n} {s}" for s, n in sorted(severities.items())) or "none fired"
    still = sum(1 for e in eps if e.end_ms is None)
    rules_d = "from the replay's rules" if from_rules else "from alerts, else conventional"
    cards = [
        ("Models", f"{len(versions):,}", models or "—"),
        ("Windows", f"{len(windows):,}", f"windows{size}" if windows else "none"),
        ("Time range", span, span_d),
        (
            "Events",
            f"{int(document.get('events') or 0):,}",
            f"{int(document.get('late_events') or 0):,} late, {rejected:,} rejected rows",
        ),
        (
            "Drifted features",
            f"{len(drifted):,} of {len(charts):,}",
            (names or "none") + f" · thresholds {rules_d}",
        ),
        (
            "Alerts fired",
            f"{len(firing):,}",
            f"{sev}; {len(eps):,} episodes, {still:,} still firing at the end",
        ),
        ("Retrain events", f"{len(retrain):,}", _retrain_detail(retrain)),
    ]
    body = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
        f'<div class="d">{_e(d)}</div></div>'
        for k, v, d in cards
    )
    return f'<div class="cards">{body}</div>'


def _retrain_detail(retrain: Sequence[Mapping[str, Any]]) -> str:
    if not retrain:
        return "none requested"
    rules = Counter(str((e.get("data") or {}).get("rule")) for e in retrain)
    return "by rule: " + ", ".join(f"{r} {n}" for r, n in sorted(rules.items()))


def _figure_html(n: int, chart: Chart, png: bytes) -> str:
    badges = []
    if chart.firing:
        fired = _plural(len(chart.firing), "alert")
        badges.append(f'<span class="badge alert">{fired} fired</span>')
    if chart.retrain_ms:
        retrain = _plural(len(chart.retrain_ms), "retrain event")
        badges.append(f'<span class="badge retrain">{retrain}</span>')
    if not chart.drifted:
        badges.append('<span class="badge ok">no drift</span>')
    beyond = f"beyond a threshold in {chart.breach_windows} of {len(chart.points)} windows"
    facts = [chart.kind, beyond]
    for metric in ("psi", "ks", "js"):
        peak = chart.peak(metric)
        if peak is not None:
            facts.append(f"peak {_LABELS[metric]} {_num(peak)}")
    figures = ", ".join(label for _, label in chart.panels)
    alt = f"{figures} per window of feature {chart.feature} of model {chart.model}"
    lines = [
        f"{_panel_label(chart.kind, metric)} {t.op} {t.value:g} ({t.source}"
        + (f", for {t.for_} windows)" if t.for_ > 1 else ")")
        for metric, _ in chart.panels
        for t in chart.thresholds.get(metric, [])
    ]
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="chart" id="chart-{n}"><header>'
        f'<h3><span class="muted">{_e(chart.model)} ·</span> {_e(chart.feature)}</h3>'
        f"{''.join(badges)}"
        f'<span class="muted">{_e(" · ".join(facts))}</span></header>'
        f'<p class="thresholds">Thresholds: {_e("; ".join(lines) or "none")}</p>'
        f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}"></figure>'
    )


def _not_charted(rest: Sequence[Chart]) -> str:
    rows = "".join(
        f'<tr><td class="name">{_e(c.model)}</td><td class="name">{_e(c.feature)}</td>'
        f"<td>{_e(c.kind)}</td><td class='num'>{len(c.firing)}</td>"
        f"<td class='num'>{c.breach_windows}</td><td class='num'>{_num(c.peak('psi'))}</td>"
        f"<td class='num'>{_num(c.peak('ks'))}</td></tr>"
        for c in rest
    )
    return (
        f'<details id="not-charted"><summary>{len(rest):,} model/feature pairs without a chart'
        "</summary><table><thead><tr><th>model</th><th>feature</th><th>kind</th>"
        "<th>alerts fired</th><th>windows beyond a threshold</th><th>peak PSI</th>"
        f"<th>peak KS</th></tr></thead><tbody>{rows}</tbody></table></details>"
    )


def _episode_table(eps: Sequence[Episode], ids: Mapping[tuple[str, str], str]) -> str:
    head = (
        '<section id="episodes"><h2>Alert episodes</h2><p class="note">One row per episode: '
        "a rule firing for one model version and feature, from the window where it fired "
        "(start) to the window that resolved it (end, exclusive). Windows: how many windows "
        "the episode spans. Peak: the largest value of the figure in those windows (the "
        "smallest for rules that fire below their threshold).</p>"
    )
    if not eps:
        return head + '<p class="note">No alert fired in this replay.</p></section>'
    rows = []
    for i, ep in enumerate(eps, 1):
        anchor = ids.get((ep.model, ep.feature or ""))
        feature = _e(ep.feature) if ep.feature is not None else '<span class="muted">(model)</span>'
        if anchor:
            feature = f'<a href="#{anchor}">{feature}</a>'
        end = _when(ep.end_ms) if ep.end_ms is not None else "still firing"
        if ep.action == "retrain":
            retrain = "yes" if ep.retrain else "no"
        else:
            retrain = f"no ({_e(ep.action)} rule)"
        rows.append(
            f'<tr class="episode{" open" if ep.end_ms is None else ""}">'
            f"<td class='num'>{i}</td><td class='when'>{_e(_when(ep.start_ms))}</td>"
            f"<td class='when'>{_e(end)}</td>"
            f"<td class='num'>{ep.windows}</td><td>{_e(ep.rule)}</td>"
            f'<td><span class="badge {_e(ep.severity)}">{_e(ep.severity)}</span></td>'
            f'<td class="name">{_e(ep.model)}</td><td>{_e(ep.version)}</td>'
            f'<td class="name">{feature}</td><td>{_e(ep.metric)}</td>'
            f"<td class='num'>{_e(ep.op)} {_num(ep.threshold)}</td>"
            f"<td class='num'>{_num(ep.peak)}</td><td>{retrain}</td></tr>"
        )
    return (
        head + "<table><thead><tr><th>#</th><th>start (UTC)</th><th>end (UTC)</th>"
        "<th>windows</th><th>rule</th><th>severity</th><th>model</th><th>version</th>"
        "<th>feature</th><th>metric</th><th>threshold</th><th>peak</th>"
        f"<th>retrain event</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _spans(windows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Each model's first and last window start: its charts share the time axis."""
    spans: dict[str, tuple[int, int]] = {}
    for w in windows:
        start, model = int(w["window_start_ms"]), str(w["model"])
        lo, hi = spans.get(model, (start, start))
        spans[model] = (min(lo, start), max(hi, start))
    return spans


def _panel_label(kind: str, metric: str) -> str:
    for m, label in _PANELS.get(kind, ()):
        if m == metric:
            return label
    return _LABELS.get(metric, metric.replace("_", " "))


def _direction(metric: str) -> str:
    return "<" if metric.endswith("pvalue") else ">"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _when(ms: int) -> str:
    t = _dt(ms)
    return t.strftime("%Y-%m-%d %H:%M:%S" if t.second else "%Y-%m-%d %H:%M")


def _duration(ms: int) -> str:
    parts, rest = [], ms // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts[:2]) or f"{ms}ms"


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
        return f"{value:.2e}"
    return f"{value:,.4g}" if abs(value) >= 1000 else f"{value:.4g}"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _plain(text: str) -> str:
    """Text matplotlib draws as is: a ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slug(text: str) -> str:
    """A file-name-safe form of a name from the data (no separators, no leading dot)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "unnamed"
