"""The replay's HTML report: charts, episodes, escaping, PNG export, and a real browser."""

from __future__ import annotations

import base64
import copy
import html
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image

from alerts.rules import default_rules
from stream.profiles import ModelProfile
from stream.replay import frames, replay
from stream.report import episodes, write_report
from stream.windows import WindowSpec

from .conftest import T0
from .test_replay import HOUR, run, table

# a feature name from the outside world, as a serving pod could send it
EVIL = '<script>alert("x")</script>&co'
AMOUNT_DRIFT = {3, 4, 5, 6}  # amount fires at hour 4, resolves at 7
EVIL_DRIFT = {5, 6, 8, 9}  # fires at 6, resolves at 7, fires again at 9 and stays firing
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def with_extra(frame: pl.DataFrame, rng: np.random.Generator, evil_mean: float) -> pl.DataFrame:
    n = frame.height
    return frame.with_columns(
        pl.Series(EVIL, rng.normal(evil_mean, 1.0, n)),
        pl.Series("tenure", rng.gamma(2.0, 3.0, n)),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training data and ten hours of events with drift injected in two features."""
    rng = np.random.default_rng(11)
    where = tmp_path_factory.mktemp("report-data")
    with_extra(table(6_000, rng, T0 - 10 * HOUR), rng, 0.0).write_parquet(where / "train.parquet")
    hours = [
        with_extra(
            table(1_500, rng, T0 + h * HOUR, shift=0.6 if h in AMOUNT_DRIFT else 0.0),
            rng,
            2.0 if h in EVIL_DRIFT else 0.0,
        )
        for h in range(10)
    ]
    pl.concat(hours).write_parquet(where / "events.parquet")
    return where


@pytest.fixture(scope="module")
def document(data: Path) -> dict[str, Any]:
    train = pl.read_parquet(data / "train.parquet")
    profile = ModelProfile.build(
        "fraud",
        "3",
        {
            "amount": train["amount"].to_numpy(),
            "country": train["country"].to_list(),
            EVIL: train[EVIL].to_numpy(),
            "tenure": train["tenure"].to_numpy(),
        },
        prediction=train["prediction"].to_numpy(),
    )
    result = replay(
        frames([data / "events.parquet"]), WindowSpec(HOUR), lambda m, v: profile, default_rules()
    )
    return result.to_json()


@dataclass
class Report:
    html: str
    html_path: Path
    pngs: list[Path]


@pytest.fixture(scope="module")
def report(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Report:
    where = tmp_path_factory.mktemp("report")
    written = write_report(document, where / "out.html", where / "png", rules=default_rules())
    assert written[0] == where / "out.html"
    return Report(written[0].read_text(encoding="utf-8"), written[0], written[1:])


class Page(HTMLParser):
    """What a reader sees: charts (title and image), episode rows, every tag and link."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[dict[str, str]] = []
        self.rows: list[list[str]] = []
        self.thresholds: list[str] = []
        self.tags: set[str] = set()
        self.links: list[str] = []
        self._where = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset")]
        cls = (a.get("class") or "").split()
        if tag == "figure" and "chart" in cls:
            self.charts.append({"id": a.get("id") or "", "title": "", "img": ""})
        elif tag == "h3" and self.charts:
            self._where = "title"
        elif tag == "img" and self.charts:
            self.charts[-1]["img"] = a.get("src") or ""
        elif tag == "p" and "thresholds" in cls:
            self.thresholds.append("")
            self._where = "thresholds"
        elif tag == "tr" and "episode" in cls:
            self.rows.append([])
        elif tag == "td" and self.rows:
            self.rows[-1].append("")
            self._where = "cell"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h3", "p", "td"):
            self._where = ""

    def handle_data(self, text: str) -> None:
        if self._where == "title":
            self.charts[-1]["title"] += text
        elif self._where == "thresholds":
            self.thresholds[-1] += text
        elif self._where == "cell":
            self.rows[-1][-1] += text


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def feature_of(title: str) -> str:
    return title.split(" · ", 1)[1]


def test_one_chart_per_model_and_feature_most_drifted_first(
    report: Report, document: dict[str, Any]
) -> None:
    page = parse(report.html)
    titles = [feature_of(c["title"]) for c in page.charts]
    features = {name for w in document["windows"] for name in w["features"]}
    assert sorted(titles) == sorted(features) == sorted(["amount", "country", EVIL, "tenure"])
    drifted = {a["feature"] for a in document["alerts"]}
    assert drifted == {"amount", EVIL}
    assert set(titles[:2]) == drifted  # the charts with alerts come first
    for chart in page.charts:
        prefix = "data:image/png;base64,"
        assert chart["img"].startswith(prefix)
        png = base64.b64decode(chart["img"][len(prefix) :])
        assert png.startswith(PNG_MAGIC)
        assert len(png) > 20_000
    # thresholds come from the rules the replay ran with
    assert "PSI > 0.2 (rule feature_psi, for 2 windows)" in page.thresholds[0]
    assert "KS statistic > 0.15 (rule feature_ks, for 2 windows)" in page.thresholds[0]
    assert "Drifted features" in report.html
    assert ">2 of 4<" in report.html


def test_episode_rows_match_the_alerts(report: Report, document: dict[str, Any]) -> None:
    page = parse(report.html)
    firing = [a for a in document["alerts"] if a["state"] == "firing"]
    resolved = {
        (a["rule"], a["feature"], a["episode_start_ms"]): a
        for a in document["alerts"]
        if a["state"] == "resolved"
    }
    assert len(firing) == len(page.rows) == 6

    def when(ms: int) -> str:
        return np.datetime_as_string(np.datetime64(ms, "ms"), unit="m").replace("T", " ")

    expected = []
    for a in firing:
        end = resolved.get((a["rule"], a["feature"], a["window_start_ms"]))
        expected.append(
            (
                when(a["window_start_ms"]),
                when(end["window_start_ms"]) if end else "still firing",
                a["rule"],
                a["severity"],
                a["model"],
                a["model_version"],
                a["feature"],
                a["metric"],
                f"{a['op']} {a['threshold']:g}",
            )
        )
    # columns: # start end windows rule severity model version feature metric threshold peak retrain
    got = [(r[1], r[2], r[4], r[5], r[6], r[7], r[8], r[9], r[10]) for r in page.rows]
    assert sorted(got) == sorted(expected)
    assert [r[0] for r in page.rows] == [str(i) for i in range(1, 7)]
    assert all(r[12] == "yes" for r in page.rows)  # the shipped PSI/KS rules retrain
    assert sum(r[2] == "still firing" for r in page.rows) == 2
    # windows and peaks, from the windows themselves
    by_start = {w["window_start_ms"]: w for w in document["windows"]}
    for ep in episodes(document, default_rules()):
        assert ep.feature is not None
        span = [w for s, w in by_start.items() if s >= ep.start_ms and s < (ep.end_ms or 1e18)]
        assert ep.windows == len(span) == (3 if ep.feature == "amount" else 1)
        assert ep.peak == max(w["features"][ep.feature][ep.metric] for w in span)
        assert ep.retrain


def test_names_from_the_data_are_escaped_and_nothing_is_external(report: Report) -> None:
    assert EVIL not in report.html
    assert "<script" not in report.html.lower()
    assert html.escape(EVIL) in report.html
    page = parse(report.html)
    assert "script" not in page.tags
    assert EVIL in {feature_of(c["title"]) for c in page.charts}  # the reader sees the name
    assert EVIL in {r[8] for r in page.rows}
    outside_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", report.html)
    assert not re.search(r"https?:|//[a-z0-9]|url\(|@import", outside_images, re.IGNORECASE)
    assert page.links, "charts and anchors are links too"
    for link in page.links:
        assert link.startswith(("data:image/png;base64,", "#")), link[:60]


def test_pngs_are_written_with_safe_names(report: Report) -> None:
    assert len(report.pngs) == 4
    for path in report.pngs:
        assert path.parent == report.html_path.parent / "png"
        assert re.fullmatch(r"fraud__[A-Za-z0-9._-]+\.png", path.name), path.name
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 20_000
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.shape[1] == 1100
        assert pixels.std() > 10
    assert {p.name for p in report.pngs} >= {"fraud__amount.png", "fraud__tenure.png"}
    # the chart in the page is the PNG on disk
    page = parse(report.html)
    first = base64.b64decode(page.charts[0]["img"].split(",", 1)[1])
    assert first in {p.read_bytes() for p in report.pngs}


def test_cap_on_charts_and_thresholds_without_rules(
    document: dict[str, Any], tmp_path: Path
) -> None:
    [path] = write_report(document, tmp_path / "sub" / "capped.html", max_charts=3)
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert len(page.charts) == 3
    assert "Showing the 3 most drifted of 4" in text
    assert 'id="not-charted"' in text
    # without the rules: what the alerts say, else the conventional lines, labelled
    joined = " | ".join(page.thresholds)
    assert "PSI > 0.2 (rule feature_psi (from its alerts))" in joined
    assert "PSI > 0.2 (conventional, no rule)" in joined


def test_two_versions_and_an_empty_document(document: dict[str, Any], tmp_path: Path) -> None:
    doc = copy.deepcopy(document)
    for w in doc["windows"][5:]:
        w["model_version"] = "4$x$"  # a dollar would start mathtext in matplotlib
    [path, png] = write_report(doc, tmp_path / "v.html", tmp_path / "png", max_charts=1)
    assert png.exists()
    assert "fraud (v3, v4$x$)" in path.read_text(encoding="utf-8")
    empty = {"schema": "driftline.replay/v1", "events": 0, "late_events": 0, "rejected": [],
             "windows": [], "alerts": [], "retrain_events": []}  # fmt: skip
    [path] = write_report(empty, tmp_path / "empty.html")
    text = path.read_text(encoding="utf-8")
    assert "No feature figures" in text
    assert "No alert fired" in text


def test_replay_command_writes_the_report(data: Path, tmp_path: Path) -> None:
    ref = str(tmp_path / "ref.dlprofile")
    run("reference", "build", str(data / "train.parquet"), "--out", ref,
        "--model", "fraud", "--version", "3")  # fmt: skip
    out = tmp_path / "r" / "report.html"
    text = run("replay", str(data / "events.parquet"), "--reference", ref, "--window", "1h",
               "--report", str(out), "--report-png-dir", str(tmp_path / "png"))  # fmt: skip
    assert f"wrote {out} and 4 charts as PNG in {tmp_path / 'png'}" in text
    page = parse(out.read_text(encoding="utf-8"))
    assert len(page.charts) == 4
    assert len(page.rows) == 6
    assert len(list((tmp_path / "png").glob("*.png"))) == 4
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "replay", str(data / "events.parquet"),
         "--reference", ref, "--report-png-dir", str(tmp_path / "png2")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--report-png-dir goes with --report" in done.stderr


def test_chromium_renders_the_report(report: Report, tmp_path: Path) -> None:
    """A real browser opens the file: the screenshot is not blank and shows the charts."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("this test needs Debian's chromium: apt-get install -y chromium")
    browser = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2000",
    ]
    url = report.html_path.as_uri()
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [*browser, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 20
    non_white = (pixels < 235).any(axis=2).mean()
    assert non_white > 0.04, non_white
    # the charts were decoded and drawn: their line blue (#1f77b4) and alert red (#d62728)
    blue = (np.abs(pixels - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 40).sum()
    red = (np.abs(pixels - np.array([0xD6, 0x27, 0x28])).sum(axis=2) < 40).sum()
    assert blue > 1_000, blue
    assert red > 100, red

    done = subprocess.run(
        [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    page = parse(done.stdout)
    assert len(page.charts) == 4
    assert all(c["img"].startswith("data:image/png;base64,") for c in page.charts)
    assert len(page.rows) == 6
    assert "table" in page.tags
    assert "script" not in page.tags
    assert EVIL in {feature_of(c["title"]) for c in page.charts}
