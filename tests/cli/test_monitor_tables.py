"""Every summary prints each monitor's own figures (issue 11, item 7): a third-party monitor names its figures as it
likes, and `opsloop run`, `opsloop monitor` and `opsloop loop --once` show them, with drift-monitor's, in tables."""

from __future__ import annotations

from opsloop import hookimpl
from opsloop.testing import invoke
from opsloop.types import MonitorReport

PAGER = """
from opsloop import hookimpl
from opsloop.testing import invoke
from opsloop.types import MonitorReport

@hookimpl
def monitor(version, current, predictions, reference, options, run):
    frame = current.frame
    scores = predictions["score"] if "score" in predictions else predictions.iloc[:, 0]
    pages = float((scores > 0.5).sum())
    days = max((frame["timestamp"].max() - frame["timestamp"].min()).total_seconds() / 86400, 1e-9)
    return MonitorReport(monitor="pager-load", model=version.ref, rows=len(frame),
                         metrics={"pages_per_day": pages / days, "quiet_servers": 7.0,
                                  **{f"pages[{s}]": float((scores[frame["entity"] == s] > 0.5).sum())
                                     for s in sorted(frame["entity"].unique())}})
"""


def _project(opsloop_project, make_plugin_dist, **tables):
    make_plugin_dist(dist="opsloop-pager-load", version="1.2", modules={"opsloop_pager_load": PAGER},
                     entry_points={"pager-load": "opsloop_pager_load"})
    return opsloop_project(small=True, config={"monitor": {"plugins": ["pager-load", "drift-monitor"]}, **tables})


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_run_summary_has_a_table_of_each_monitors_own_figures(opsloop_project, make_plugin_dist, opsloop_console):
    project = _project(opsloop_project, make_plugin_dist)
    data = project.run("run").assert_ok().json
    figures = {r["monitor"]: r["metrics"] for r in data["monitor"]}
    assert figures["pager-load"]["quiet_servers"] == 7.0
    shown = opsloop_console("run", "--quiet").assert_ok()  # the human summary, from the real console script
    shown.lines().fnmatch_lines(["*Monitor pager-load on small-telemetry:1*",
                                 "*pages_per_day*", "*quiet_servers*│ 7 *", "*pages?omi-1?*",
                                 "*Monitor drift-monitor on small-telemetry:1*", "*drift_max_psi*"],
                                consecutive=False)
    # and the stage line names the monitor's own headline figures, not "-"
    assert f"pager-load: pages_per_day {figures['pager-load']['pages_per_day']:.3f}" in _flat(shown.stdout)


def test_monitor_and_loop_print_the_same_tables(opsloop_project, make_plugin_dist):
    project = _project(opsloop_project, make_plugin_dist,
                       retrain={"plugins": ["threshold-policy"]}, loop={"monitor_rows": "source",
                                                                         "monitor_window": "2d"})
    project.run("run").assert_ok()
    monitored = project.run("monitor").assert_ok()
    assert "pages_per_day" in monitored.stdout and "drift_max_psi" in monitored.stdout
    cycle = project.run("loop", "--once").assert_ok()
    flat = _flat(cycle.stdout)
    assert "Monitor pager-load on small-telemetry:1" in flat and "quiet_servers" in flat
    assert "Monitor drift-monitor on small-telemetry:1" in flat


def test_a_monitor_with_no_figures_says_so_in_its_table(opsloop_project, register_plugin):
    @hookimpl
    def monitor(version, current):
        return MonitorReport(monitor="silent", model=version.ref, rows=len(current.frame))

    from types import SimpleNamespace

    project = opsloop_project(small=True, config={"monitor": {"plugins": ["silent"]}},
                              plugins={"silent": SimpleNamespace(monitor=monitor)})
    assert project.run("run").assert_ok().json["monitor"][0]["metrics"] == {}
    shown = " ".join(invoke(["run", "--quiet"], project.path).assert_ok().stdout.split())
    assert "Monitor silent on small-telemetry:1" in shown and "(this monitor reported no figures)" in shown, shown
