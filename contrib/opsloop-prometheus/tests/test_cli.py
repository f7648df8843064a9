"""`opsloop run` with `[data] source = "prometheus://..."`: a whole lifecycle on ASD read from Prometheus, and
each kind of bad input as one line, a non-zero exit and nothing registered."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("opsloop_prometheus",
                    reason="opsloop-prometheus is not installed (pip install -e ./contrib/opsloop-prometheus)")

from opsloop.testing import opsloop_project, register_plugin  # noqa: E402, F401 - the kit's fixtures

METRICS = ["m01", "m05", "m10", "m14"]
SPLIT = "2024-01-08 12:00"


def config(port: int, **prometheus) -> dict:
    """A quick lifecycle on the backfilled ASD slice: train on the first week, monitor the second."""
    options = {
        "queries": {m: f'asd_{m}{{job="asd"}}' for m in METRICS},
        # From the 2nd: the first day has no incident, so every time-ordered fold trains on both classes.
        "start": "2024-01-02T00:00:00Z", "end": "2024-01-15T23:55:00Z", "step": "5m",
        "incidents": "incidents.csv", **prometheus,
    }
    return {
        "project": {"name": "asd-prometheus"},
        "data": {"source": f"prometheus://127.0.0.1:{port}", "target": "label", "time": "timestamp",
                 "series": "entity", "train": f"timestamp < '{SPLIT}'", "monitor": f"timestamp >= '{SPLIT}'",
                 "prometheus": options},
        "preprocess": {"plugins": ["schema-check", "impute"]},
        "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 30}},
        "validate": {"kfold": {"folds": 2}},
    }


def registered(project) -> list:
    listed = project.run("models", "list", "--json")
    if listed.exit_code != 0:  # no registry was ever created: nothing registered
        return []
    return [m for m in listed.json if m.get("versions")] if isinstance(listed.json, list) else [listed.json]


@pytest.mark.slow
def test_run_trains_and_registers_from_prometheus(prometheus, opsloop_project, incidents):
    project = opsloop_project(config=config(prometheus["port"]), files={"incidents.csv": incidents})
    result = project.run("run").assert_ok()
    assert result.json["versions"][0]["ref"] == "asd-prometheus:1"
    shown = project.run("models", "show", "asd-prometheus:1", "--json").assert_ok().json
    # Trained on the first week from 2024-01-02: three servers, 6.5 days of 5-minute steps (the gap of
    # omi-9 on 2024-01-02 included, as NaN rows that impute filled).
    assert shown["lineage"]["data"]["rows"] == 3 * 1872
    assert shown["lineage"]["data"]["source"].startswith(f"prometheus://127.0.0.1:{prometheus['port']}")
    assert shown["lineage"]["data"]["start"] == "2024-01-02T00:00:00Z"
    assert 0 < shown["metrics"]["recall"] <= 1
    assert registered(project) == [{**registered(project)[0], "name": "asd-prometheus", "versions": 1}]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.mark.parametrize(("case", "says"), [
    ("unreachable", ["cannot connect: connection refused", "query m01 (asd_m01"]),
    ("empty", ["query m01 (asd_m01{job=\"nothing\"}) returned no series between 2024-01-02T00:00:00Z and "
               "2024-01-15T23:55:00Z"]),
    ("bad promql", ["query m01 (rate(asd_m01{job=\"asd\"}[5m)", "Prometheus error bad_data: ", "(HTTP 400)"]),
    ("missing label", ["query m01 (sum(asd_m01)): a series has no label 'instance'"]),
    ("bad incidents", ["incidents.csv, row 2, column 'end': cannot parse 'soon' as a time"]),
    ("incidents without end", ["incidents.csv: the incidents file has no column 'end'"]),
    ("end before start", ["incidents.csv, row 1, column 'end': 2024-01-02T00:00:00 is before start"]),
])
def test_bad_input_is_one_line_a_non_zero_exit_and_nothing_registered(prometheus, opsloop_project, incidents,
                                                                      case, says):
    port, files = prometheus["port"], {"incidents.csv": incidents}
    queries = None
    if case == "unreachable":
        port = closed_port()
    elif case == "empty":
        queries = {"m01": 'asd_m01{job="nothing"}'}
    elif case == "bad promql":
        queries = {"m01": 'rate(asd_m01{job="asd"}[5m)'}
    elif case == "missing label":
        queries = {"m01": "sum(asd_m01)"}
    elif case == "bad incidents":
        files["incidents.csv"] = ("series,start,end\nomi-1,2024-01-02T00:00:00,2024-01-02T01:00:00\n"
                                  "omi-9,2024-01-03,soon\n")
    elif case == "incidents without end":
        files["incidents.csv"] = "series,start\nomi-1,2024-01-02T00:00:00\n"
    elif case == "end before start":
        files["incidents.csv"] = "series,start,end\nomi-1,2024-01-03T00:00:00,2024-01-02T00:00:00\n"
    extra = {"queries": queries} if queries else {}
    project = opsloop_project(config=config(port, **extra), files=files)
    result = project.run("run")
    result.assert_error('plugin "prometheus" (opsloop-prometheus 0.1.0) failed in load_data: ', *says)
    if case not in {"bad incidents", "incidents without end", "end before start"}:
        result.assert_error(f"http://127.0.0.1:{port}: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert registered(project) == []


def test_config_check_names_a_wrong_option(prometheus, opsloop_project):
    project = opsloop_project(config=config(prometheus["port"], step="5 minutes"))
    project.run("config", "check").assert_error("[data.prometheus.step]", "'5 minutes' is not a duration")
    project = opsloop_project(config=config(prometheus["port"], stepp="5m"))
    project.run("config", "check").assert_error("[data.prometheus.stepp] unknown key", 'did you mean "step"?')


def test_a_plain_http_address_with_data_plugin(prometheus, opsloop_project):
    # The scheme `http` names no plugin; `[data] plugin` does. The read reaches this plugin (its own error).
    table = config(prometheus["port"], queries={"m01": 'asd_m01{job="nothing"}'})
    del table["data"]["prometheus"]["incidents"]  # no file in this project
    table["data"].update(source=prometheus["url"], plugin="prometheus")
    project = opsloop_project(config=table)
    project.run("config", "check").assert_ok()
    project.run("run").assert_error('plugin "prometheus" (opsloop-prometheus 0.1.0) failed in load_data: '
                                    f'{prometheus["url"]}: query m01 (asd_m01{{job="nothing"}}) returned no series')
