"""`opsloop report`: one self-contained HTML page of the registry, validation, monitoring and the loop (issue 11,
item 7).

One real project for the module, on the kit's small telemetry set (3 ASD
servers, 10 days): `opsloop run` with quality-monitor and drift-monitor
(version 1 in production, its batch in the prediction log), the true labels
of the monitored days sent with `opsloop feedback`, one `opsloop loop --once`
(it retrains and promotes version 3), then `opsloop models promote 2` with a
reason. The page's figure JSON is checked against the registry, the batch
output, `opsloop monitor --json` and the data's own labels; the page is
opened in headless Chromium.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from opsloop.testing import invoke, to_toml
from opsloop.testing.data import SPLIT, small_config, small_telemetry

MODEL = "small-telemetry"
CONFIG = small_config(
    monitor={"plugins": ["quality-monitor", "drift-monitor"]},
    retrain={"plugins": ["threshold-policy"],
             "threshold-policy": {"min_f1": 0.99, "min_positives": 1, "cooldown": "0"}},
    gate={"plugins": ["champion-challenger"]},
    loop={"monitor_window": "2d", "holdout": "2d"},
)
#: A reason with markup in it: the page must show it as text, in its table and in a plot's hover text.
REASON = "manager demo: the version trained on every labelled row </script><b>bold?</b>"
FIGURE = re.compile(r'<script type="application/json" data-figure="(figure-\d+)">(.*?)</script>', re.S)


def figures(page: str) -> dict[str, dict[str, Any]]:
    """Every figure of a page by its title."""
    out = {}
    for match in FIGURE.finditer(page):
        fig = json.loads(match.group(2))
        out[fig["layout"]["title"]["text"]] = fig
    return out


def titled(page: str, start: str, end: str = "") -> dict[str, Any]:
    found = [fig for title, fig in figures(page).items() if title.startswith(start) and title.endswith(end)]
    assert len(found) == 1, f"{len(found)} figures titled {start!r}...{end!r}: {list(figures(page))}"
    return found[0]


def numbers(values: list[Any]) -> list[Any]:
    """Figures as a page draws them: NaN (a fold without incidents) and None both as None."""
    return [None if v is None or v != v else v for v in values]


def store(path: Path) -> Any:
    from opsloop import config
    from opsloop.session import Session

    return Session.open(config.read(workdir=path), sections=("store",)).open_store()


def report(path: Path, *args: str) -> tuple[dict[str, Any], str]:
    result = invoke(["report", "-o", str(path / "report.html"), "--json", *args], path).assert_ok()
    return result.json, (path / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 in production, its batch of the monitored days in the log; no labels, no loop."""
    path = tmp_path_factory.mktemp("report-trained")
    small_telemetry().to_csv(path / "telemetry.csv", index=False)
    (path / "opsloop.toml").write_text(to_toml(CONFIG), encoding="utf-8")
    run = invoke(["run", "--json", "--quiet"], path).assert_ok()
    (path / "run.json").write_text(run.stdout, encoding="utf-8")  # its validation reports, with every fold
    return path


@pytest.fixture(scope="module")
def looped(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trained`, then labels, a loop cycle (it promotes version 3) and a promotion of version 2 with a reason."""
    path = tmp_path_factory.mktemp("report-looped") / "project"
    shutil.copytree(trained, path)
    frame = small_telemetry()
    labels = frame[frame["timestamp"] >= SPLIT][["entity", "timestamp", "label"]]
    labels.rename(columns={"entity": "series", "timestamp": "time"}).to_csv(path / "labels.csv", index=False)
    invoke(["feedback", "--file", str(path / "labels.csv")], path).assert_ok()
    cycle = invoke(["loop", "--once", "--json", "--quiet"], path).assert_ok().json
    assert cycle["status"] == "promoted" and cycle["candidate"] == 3, cycle
    invoke(["models", "promote", MODEL, "2", "--reason", REASON], path).assert_ok()
    return path


@pytest.fixture(scope="module")
def page(looped: Path) -> tuple[dict[str, Any], str]:
    return report(looped, "--window", "1d")


def test_every_section_is_drawn_from_the_real_figures(looped: Path, page: tuple[dict[str, Any], str]) -> None:
    summary, text = page
    assert summary["production"] == 2 and summary["versions"] == 3 and summary["window"] == "1d"
    assert {k for k, v in summary["sections"].items() if v == "shown"} >= {
        "versions", "scores", "monitors", "last-run", "aliases", "loop"}
    with store(looped) as s:
        versions = s.versions(MODEL)
        cycles = s.cycles(MODEL)
    # Metrics across versions: each trace is one metric's validation mean per version; production marked.
    fig = titled(text, "Validation metrics across versions")
    assert fig["data"], "no traces"
    for trace in fig["data"]:
        metric = trace["meta"]["metric"]
        assert trace["x"] == [1, 2, 3]
        assert trace["y"] == pytest.approx(numbers([v.metrics[metric] for v in versions]))
    assert [shape["x0"] for shape in fig["layout"]["shapes"]] == [2]
    # Loop journal: the gate's figures of the one cycle.
    fig = titled(text, "Loop cycles")
    gate = dict(cycles[0].body)["gate"]
    challenger = next(t for t in fig["data"] if t["name"] == "gate: challenger")
    assert challenger["y"] == pytest.approx([gate["challenger"]])
    assert "promoted" in next(t for t in fig["data"] if t["name"] == "status")["text"]
    # What the cycle's monitors saw on production, as the journal keeps it: drift per feature.
    seen = {r["monitor"]: r["metrics"] for r in dict(cycles[0].body)["monitor"]}
    bars = titled(text, "drift-monitor: psi[…]", "in the loop's cycle")["data"][0]
    assert len(bars["x"]) == len([k for k in seen["drift-monitor"] if k.startswith("psi[")]) > 0
    assert bars["y"] == pytest.approx([seen["drift-monitor"][f"psi[{k}]"] for k in bars["x"]])
    # Alias history: production went 1 -> 3 (the loop) -> 2 (the promotion), and the table says why.
    fig = titled(text, "Alias history")
    production = next(t for t in fig["data"] if t["name"] == "production")
    assert production["y"] == [1, 3, 2, 2]  # the last point: where it points now
    assert html.escape(REASON) in text and "won the gate" in text
    assert production["text"][-2].endswith(REASON)


def monitored_incidents() -> int:
    """Incidents (runs of rows labelled 1, per series) of the small set's monitored days, from its own labels."""
    frame = small_telemetry()
    frame = frame[frame["timestamp"] >= SPLIT]
    return sum(int(((g["label"] == 1) & (g["label"].shift(fill_value=0) != 1)).sum())
               for _, g in frame.groupby("entity"))


def test_scores_per_series_are_the_batch_scores_with_the_labelled_incidents_shaded(
        looped: Path, page: tuple[dict[str, Any], str]) -> None:
    _, text = page
    fig = titled(text, "Scores against incidents")
    batch = pd.read_parquet(looped / ".opsloop" / "predictions" / f"{MODEL}-v1.parquet")
    traces = [t for t in fig["data"] if t.get("meta", {}).get("series")]
    assert sorted(t["meta"]["series"] for t in traces) == sorted(batch["entity"].unique())
    for trace in traces:
        mine = batch[batch["entity"] == trace["meta"]["series"]].sort_values("timestamp")
        assert trace["meta"]["version"] == 1
        assert len(trace["y"]) == len(mine)  # 1,152 rows a series: none thinned
        assert trace["y"] == pytest.approx(mine["score"].tolist(), abs=1e-6)
    with store(looped) as s:
        cut = s.get(MODEL, 1).threshold["value"]
    assert {tuple(t["y"]) for t in fig["data"] if t["name"] == "threshold of version 1"} == {(cut, cut)}
    # One shaded span per incident (a run of rows labelled 1) of each series in the monitored days.
    runs = monitored_incidents()
    assert runs > 0
    assert len([s for s in fig["layout"]["shapes"] if s["type"] == "rect"]) == runs
    assert f"{runs:,} incident span(s)" in text


def test_drift_per_feature_and_series_is_what_opsloop_monitor_reports(
        looped: Path, page: tuple[dict[str, Any], str]) -> None:
    _, text = page
    monitored = invoke(["monitor", "--version", "1", "--window", "1d", "--json"], looped).assert_ok().json
    windows = [w for w in monitored["windows"] if w["reports"]]
    drift = [next(r for r in w["reports"] if r["monitor"] == "drift-monitor")["metrics"] for w in windows]
    for family in ("psi", "series_ks"):
        fig = titled(text, f"drift-monitor: {family}[…]", "per window")
        heat = fig["data"][0]
        assert heat["type"] == "heatmap" and len(heat["x"]) == len(windows)
        for key, row in zip(heat["y"], heat["z"], strict=True):
            assert row == pytest.approx([figures_of[f"{family}[{key}]"] for figures_of in drift])
    assert set(titled(text, "drift-monitor: series_ks[…]", "per window")["data"][0]["y"]) == {"omi-1", "omi-9",
                                                                                            "omi-10"}
    # Quality per series (quality-monitor's f1[omi-1]...) too, and every monitor's own figures in a table.
    assert titled(text, "quality-monitor: f1[…]", "per window")["data"][0]["type"] == "heatmap"
    whole = invoke(["monitor", "--version", "1", "--json"], looped).assert_ok().json["windows"][0]["reports"]
    psi = next(r for r in whole if r["monitor"] == "drift-monitor")["metrics"]["drift_max_psi"]
    assert f"<td>drift_max_psi</td><td class=\"n\">{psi:.4g}</td>" in text
    assert "<h4>quality-monitor over the logged period</h4>" in text


def test_per_fold_figures_are_the_registered_ones(looped: Path, page: tuple[dict[str, Any], str]) -> None:
    from opsloop.report import figures as figs

    summary, text = page
    with store(looped) as s:
        versions = {v.version: v for v in s.versions(MODEL)}
    kept = {n: v.lineage.get("validation") for n, v in versions.items()}
    if any(kept.values()):
        fig = titled(text, "Validation per fold")
        drawn = {(t["meta"]["version"], t["meta"]["metric"]) for t in fig["data"]}
        assert {n for n, _ in drawn} == {n for n, v in kept.items() if v}
        for trace in fig["data"]:
            folds = kept[trace["meta"]["version"]][0]["folds"]
            assert trace["y"] == pytest.approx(numbers([f.get(trace["meta"]["metric"]) for f in folds]))
        return
    # A registry that keeps only the means (the runner records no per-fold figures): the page says so in one line,
    # and the plot it would draw is the one of the folds `opsloop run --json` printed for version 1.
    assert summary["sections"]["validation"] == "no per-fold figures" and "No per-fold figures" in text
    report = json.loads((looped / "run.json").read_text(encoding="utf-8"))["validation"][0]
    assert len(report["folds"]) == CONFIG["validate"]["kfold"]["folds"]
    fig = json.loads(figs.folds([(versions[1], report)]).to_json())
    assert {t["meta"]["metric"] for t in fig["data"]} >= {"f1", "precision", "recall", "roc_auc"}
    for trace in fig["data"]:
        assert trace["x"] == [1, 2, 3]
        assert trace["y"] == pytest.approx(numbers([f[trace["meta"]["metric"]] for f in report["folds"]]))


def test_sections_without_data_say_so_in_one_line(trained: Path, tmp_path: Path) -> None:
    path = tmp_path / "project"
    shutil.copytree(trained, path)
    (path / ".opsloop" / "serving" / "predictions.db").unlink()
    summary, text = report(path)
    assert summary["sections"]["scores"] == "no logged scores"
    assert summary["sections"]["monitors"] == "not run"
    assert summary["sections"]["loop"] == "no cycles"
    assert "no prediction log at" in text and "No loop cycles of small-telemetry in the journal yet" in text
    assert "Scores against incidents (shaded" not in text  # no empty plot


def test_report_writes_nothing_but_the_page(looped: Path, tmp_path: Path) -> None:
    def state() -> dict[str, str]:
        return {str(p.relative_to(looped)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(looped.rglob("*")) if p.is_file() and p.name != "report.html"}

    before = state()
    out = tmp_path / "again.html"
    invoke(["report", "-o", str(out)], looped).assert_ok()
    assert state() == before
    assert out.stat().st_size > 1_000_000  # plotly.js inline


def test_long_logs_are_thinned_per_series_keeping_the_peaks(looped: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from opsloop.report import collect

    monkeypatch.setattr(collect, "MAX_POINTS", 400)  # the small set has 1,152 rows a series
    out = tmp_path / "thin.html"
    summary = invoke(["report", "-o", str(out), "--json"], looped).assert_ok().json
    assert summary["thinned"] is True
    text = out.read_text(encoding="utf-8")
    assert "at most 400 per series" in text
    batch = pd.read_parquet(looped / ".opsloop" / "predictions" / f"{MODEL}-v1.parquet")
    for trace in titled(text, "Scores against incidents")["data"]:
        if not trace.get("meta", {}).get("series"):
            continue
        scores = batch.loc[batch["entity"] == trace["meta"]["series"], "score"]
        assert 100 < len(trace["y"]) <= 400
        assert max(trace["y"]) == pytest.approx(scores.max(), abs=1e-6)
        assert min(trace["y"]) == pytest.approx(scores.min(), abs=1e-6)


def test_served_rows_and_their_feedback_are_drawn_beside_the_batch(trained: Path, tmp_path: Path) -> None:
    """Rows a real `opsloop serve` (on 127.0.0.1) logged one by one, labelled by request id: the report draws
    them with the scores the server answered, and shades their incidents."""
    import http.client
    import time

    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    path = tmp_path / "project"
    shutil.copytree(trained, path)
    frame = small_telemetry()
    day = frame[(frame["timestamp"] < SPLIT) & (frame["timestamp"] >= "2024-01-08")]  # not in the batch log
    series = next(s for s, g in day.groupby("entity") if g["label"].sum() > 0)
    rows = day[day["entity"] == series].reset_index(drop=True)
    instances = json.loads(rows.drop(columns=["label"]).to_json(orient="records", date_format="iso"))
    app = create_app(workdir=path)  # the project's log, where the batch went
    with ServerThread(app) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        conn.request("POST", "/predict", json.dumps({"instances": instances}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        deadline = time.monotonic() + 60
        while app.log.written < len(rows):
            assert time.monotonic() < deadline, "the server did not log the rows"
            time.sleep(0.05)
    for row in rows.index[rows["label"] == 1]:
        invoke(["feedback", answer["request_id"], "1", "--row", str(row)], path).assert_ok()
    _, text = report(path)
    fig = titled(text, "Scores against incidents")
    trace = next(t for t in fig["data"] if t.get("meta", {}).get("series") == series)
    served = {pd.Timestamp(t).tz_convert(None): y for t, y in zip(trace["x"], trace["y"], strict=True)
              if pd.Timestamp(t).tz_convert(None) < pd.Timestamp(SPLIT)}
    assert len(served) == len(rows)
    assert [served[t] for t in rows["timestamp"]] == pytest.approx([p["score"] for p in answer["predictions"]],
                                                                   abs=1e-6)
    day_spans = [s for s in fig["layout"]["shapes"] if s["x0"] < SPLIT and s["xref"] == trace["xaxis"]]
    runs = int(((rows["label"] == 1) & (rows["label"].shift(fill_value=0) != 1)).sum())
    assert len(day_spans) == runs > 0


def chromium() -> str | None:
    found = os.environ.get("OPSLOOP_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return found if found and Path(found).exists() else None


@pytest.mark.skipif(chromium() is None, reason="Debian chromium is not installed (tests/services/chromium.sh "
                                               "installs it as root; or set OPSLOOP_TEST_CHROMIUM)")
def test_the_page_opens_in_headless_chromium_without_errors_or_network(
        page: tuple[dict[str, Any], str], looped: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    summary, _ = page
    requests: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(),
                                    args=["--no-sandbox", "--disable-gpu", "--headless=new"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto((looped / "report.html").as_uri())
            tab.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= "
                                  f"{summary['figures']}", timeout=60_000)
            plots = tab.locator(".js-plotly-plot").count()
            heatmaps = tab.locator(".js-plotly-plot .hm").count()
            shot = tmp_path / "report.png"
            tab.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    assert plots == summary["figures"] >= 10
    assert heatmaps >= 4  # psi, ks, series_ks, series_psi, f1 per series: drawn, not just placed
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_bad_input_is_one_line(looped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "opsloop.toml").write_text(to_toml(CONFIG), encoding="utf-8")
    invoke(["report"], empty).assert_error("no model registry at", ".opsloop")
    assert not (empty / ".opsloop").exists() and not (empty / "report.html").exists()
    invoke(["report", "--model", "small-telemetri"], looped).assert_error(
        'unknown model "small-telemetri" (did you mean "small-telemetry"?)')
    invoke(["models", "list"], empty).assert_ok()  # an empty registry
    invoke(["report"], empty).assert_error("the registry has no models yet")
    (tmp_path / "file").write_text("x")
    invoke(["report", "-o", str(tmp_path / "file" / "r.html")], looped).assert_error(
        "cannot write the report to", "is not a directory")
    invoke(["report", "-o", str(tmp_path / "nowhere" / "r.html")], looped).assert_error("does not exist")
    invoke(["report", "-o", str(tmp_path)], looped).assert_error("is a directory")
    invoke(["report", "--window", "soon", "-o", str(tmp_path / "r.html")], looped).assert_error("--window 'soon'")
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if the report extra were not installed
    result = invoke(["report", "-o", str(tmp_path / "r.html")], looped).assert_error(
        "opsloop report needs plotly: pip install 'opsloop[report]'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_without_feedback_the_incidents_come_from_the_labels_in_the_source(opsloop_project, tmp_path: Path) -> None:
    """`opsloop run` on labelled data, then the report: the batch-scored rows' incidents are the source's own."""
    project = opsloop_project(small=True)
    project.run("run").assert_ok()
    out = tmp_path / "page.html"
    invoke(["report", "-o", str(out)], project.path).assert_ok()
    text = out.read_text(encoding="utf-8")
    fig = titled(text, "Scores against incidents")
    runs = monitored_incidents()
    assert runs > 0
    assert len([s for s in fig["layout"]["shapes"] if s["type"] == "rect"]) == runs
    assert f"{runs:,} incident span(s) (incidents: feedback labels, then the labels in telemetry.csv)" in text
