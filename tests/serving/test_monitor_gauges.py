"""`opsloop run` leaves its monitor reports where `opsloop serve` exports them as gauges on /metrics."""

from __future__ import annotations

import http.client
import json
import math
import re
from typing import Any

from opsloop.serving.app import create_app
from opsloop.serving.server import ServerThread


def _gauges(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for monitor, metric, value in re.findall(
            r'^opsloop_monitor\{monitor="([^"]+)",model="asd-anomaly:1",metric="([^"]+)"\} (\S+)$', text, re.M):
        out[(monitor, metric)] = float(value)
    return out


def test_monitor_figures_of_the_last_run_are_gauges(opsloop_project: Any, small_config: dict[str, Any],
                                                   tmp_path: Any) -> None:
    small_config["monitor"] = {"plugins": ["quality-monitor", "drift-monitor"]}
    small_config["retrain"] = {"act": False}
    project = opsloop_project(config=small_config)
    result = project.run("run").assert_ok().json
    written = json.loads((project.path / ".opsloop" / "serving" / "monitor-report.json").read_text())
    assert written["run_id"] == result["run_id"]
    assert [r["monitor"] for r in written["monitor"]] == ["quality-monitor", "drift-monitor"]

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
    drift = {k: v for k, v in reports["drift-monitor"]["metrics"].items() if isinstance(v, (int, float))}
    assert drift and all(("drift-monitor", k) in gauges for k in drift)
    assert any("psi" in k for k in drift)
    alerts = len(reports["drift-monitor"]["alerts"])
    assert f'opsloop_monitor_alerts{{monitor="drift-monitor",model="asd-anomaly:1"}} {alerts}' in text
