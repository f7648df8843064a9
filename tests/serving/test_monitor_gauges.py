"""`opsloop run` leaves its monitor reports where `opsloop serve` exports them as gauges on /metrics."""

from __future__ import annotations

import http.client
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from opsloop.serving.app import create_app
from opsloop.serving.metrics import Metrics, write_monitor_report
from opsloop.serving.server import ServerThread
from opsloop.types import MonitorReport


def _gauges(text: str, model: str = "asd-anomaly:1") -> dict[tuple[str, str], float]:
    pattern = rf'^opsloop_monitor\{{monitor="([^"]+)",model="{re.escape(model)}",metric="([^"]+)"\}} (\S+)$'
    return {(monitor, metric): float(value) for monitor, metric, value in re.findall(pattern, text, re.MULTILINE)}


def test_monitor_figures_of_the_last_run_are_gauges(opsloop_project: Any, small_config: dict[str, Any],
                                                   tmp_path: Path) -> None:
    small_config["monitor"] = {"plugins": ["quality-monitor", "drift-monitor"]}
    small_config["retrain"] = {"act": False}
    project = opsloop_project(config=small_config)
    result = project.run("run").assert_ok().json
    serving = project.path / ".opsloop" / "serving"
    written = json.loads((serving / "monitor-report.json").read_text())
    assert written["run_id"] == result["run_id"]
    assert [r["monitor"] for r in written["monitor"]] == ["quality-monitor", "drift-monitor"]
    assert not list(serving.glob(".*.tmp"))  # written atomically: nothing left beside it

    app = create_app(workdir=project.path, log_path=tmp_path / "log.db")
    with ServerThread(app) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    gauges = _gauges(text)
    reports = {r["monitor"]: r for r in result["monitor"]}
    quality = reports["quality-monitor"]["metrics"]
    for metric in ("precision", "recall", "f1", "accuracy"):
        assert math.isclose(gauges[("quality-monitor", metric)], quality[metric], rel_tol=1e-12), metric
    drift = reports["drift-monitor"]["metrics"]
    assert {"drift_max_psi", "drift_max_ks", "drifted"} <= drift.keys()
    assert any(k.startswith("psi[") for k in drift) and any(k.startswith("ks[") for k in drift)
    for metric, value in drift.items():  # every drift figure, per feature too, with its exact value
        assert gauges[("drift-monitor", metric)] == value or math.isnan(value), metric
    alerts = len(reports["drift-monitor"]["alerts"])
    assert f'opsloop_monitor_alerts{{monitor="drift-monitor",model="asd-anomaly:1"}} {alerts}' in text


def test_the_server_reads_what_the_runner_writes(tmp_path: Path) -> None:
    path = tmp_path / ".opsloop" / "serving" / "monitor-report.json"
    metrics = Metrics()
    assert metrics.monitor_reports(path) == []
    figures = {"f1": np.float32(0.5), "rows": np.int64(120), "psi[m01]": math.nan, "recall": 0.75}
    write_monitor_report(path, "run-1", [MonitorReport(monitor="m", model="x:1", metrics=figures, alerts=("a",))])
    (report,) = metrics.monitor_reports(path)
    assert report["metrics"]["f1"] == 0.5 and report["metrics"]["rows"] == 120  # numpy scalars stay numbers
    assert math.isnan(report["metrics"]["psi[m01]"]) and report["alerts"] == ["a"]
    # rewritten at once (the same mtime, perhaps): the new figures are read
    write_monitor_report(path, "run-2", [MonitorReport(monitor="m", model="x:2", metrics={"f1": 0.25})])
    assert metrics.monitor_reports(path)[0]["metrics"] == {"f1": 0.25}
    assert sorted(p.name for p in path.parent.iterdir()) == ["monitor-report.json"]
    # a file that cannot be read (written by hand, half-copied) keeps the last figures
    path.write_text('{"monitor": [', encoding="utf-8")
    assert metrics.monitor_reports(path)[0]["metrics"] == {"f1": 0.25}
