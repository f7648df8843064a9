"""Schema-check findings on scored rows reach the reports (issue 9, item 5): `opsloop run` and `opsloop monitor`.

SMD machine-1-6 (real data, ../shared/data/smd), trained on its first 11,844
steps and monitored on the 11,845 after: a strong shift, with many columns
beyond the training range. The version's schema-check step (fitted at
training, stored in the bundle) judges the monitored rows as a monitor; the
figures are checked against numpy on the same rows (the training range
widened by range_tolerance), not against the plugin itself.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from opsloop.testing import invoke, to_toml

SPLIT = 11844  # the first period of machine-1-6 trains, the rest is monitored
TOLERANCE = 0.1  # schema-check's default range_tolerance


def outside(train: pd.DataFrame, rows: pd.DataFrame) -> dict[str, float]:
    """Share of `rows` beyond each feature's training [min, max] widened by TOLERANCE of its span (numpy)."""
    out = {}
    for c in [c for c in train.columns if c.startswith("m")]:
        lo, hi = float(train[c].min()), float(train[c].max())
        span = hi - lo
        values = rows[c].to_numpy()
        share = float(np.mean((values < lo - TOLERANCE * span) | (values > hi + TOLERANCE * span)))
        if share:
            out[c] = share
    return out


@pytest.fixture(scope="module")
def smd(tmp_path_factory: pytest.TempPathFactory, smd_machine_1_6: Any) -> dict[str, Any]:
    """`opsloop run --json` on SMD with schema-check as a preprocess step and as a monitor, batch-scored and logged."""
    root = tmp_path_factory.mktemp("smd-findings")
    frame = smd_machine_1_6()
    frame.to_parquet(root / "smd.parquet", index=False)
    split = frame["timestamp"].iloc[SPLIT]
    config = {
        "project": {"name": "smd"},
        "data": {"source": str(root / "smd.parquet"), "target": "label", "time": "timestamp", "series": "entity",
                 "train": f"timestamp < '{split}'", "monitor": f"timestamp >= '{split}'"},
        "preprocess": {"plugins": ["schema-check", "impute"]},
        "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 20, "n_jobs": 1}},
        "validate": {"plugins": []},
        "deploy": {"plugins": []},
        "monitor": {"plugins": ["quality-monitor", "schema-check"]},
        "retrain": {"plugins": []},
    }
    work = root / "work"
    work.mkdir()
    (work / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    result = invoke(["run", "--json"], work)
    assert result.exit_code == 0, result.stderr
    monitored = frame.iloc[SPLIT:].reset_index(drop=True)
    serve(work, monitored)
    return {"path": work, "frame": frame, "run": json.loads(result.stdout), "train": frame.iloc[:SPLIT],
            "monitored": monitored}


def serve(work: Path, rows: pd.DataFrame) -> None:
    """Send `rows` to a real `opsloop serve` of production (127.0.0.1), which logs them, 500 per request."""
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    records = [{**r, "timestamp": r["timestamp"].isoformat()} for r in rows.drop(columns=["label"]).to_dict("records")]
    with ServerThread(create_app(workdir=work)) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            for start in range(0, len(records), 500):
                conn.request("POST", "/predict", json.dumps({"instances": records[start:start + 500]}),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
        finally:
            conn.close()


def test_run_reports_the_out_of_range_columns_of_the_monitored_rows(smd: dict[str, Any]) -> None:
    reports = {r["monitor"]: r for r in smd["run"]["monitor"]}
    assert list(reports) == ["quality-monitor", "schema-check"]
    schema = reports["schema-check"]
    assert schema["model"] == "smd:1" and schema["rows"] == len(smd["monitored"])
    expected = outside(smd["train"], smd["monitored"])
    assert len(expected) == 25  # measured: m01 (24% of the rows), m05 (40%), m07 (58%), m24 (53%)...
    found = {k[len("out_of_range["):-1]: v for k, v in schema["metrics"].items() if k.startswith("out_of_range[")}
    assert found.keys() == expected.keys()
    for column, share in expected.items():
        assert found[column] == pytest.approx(share, abs=1e-12), column
        assert schema["baseline"][f"out_of_range[{column}]"] == 0
    assert schema["metrics"]["schema_findings"] == len(expected)  # nothing else: no gaps, no missing column
    # the first ten findings are alerts of their own, the rest one more; the rows scored are unchanged
    assert len(schema["alerts"]) == 11 and schema["alerts"][-1].startswith("15 more schema finding(s)")
    assert re.fullmatch(r'column "m01": 2,896 of 11,845 values \(24\.45%\) outside the training range .*',
                        schema["alerts"][0])


def test_the_run_summary_shows_them(smd: dict[str, Any]) -> None:
    result = invoke(["run"], smd["path"])  # the same data and config: the version is reused, monitored again
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Monitor schema-check on smd:1 (11,845 rows)" in text
    assert "schema_findings" in text and "out_of_range[m07]" in text
    assert 'alert column "m01": 2,896 of 11,845 values (24.45%) outside the training range' in text


def test_opsloop_monitor_shows_them_per_window(smd: dict[str, Any]) -> None:
    result = invoke(["monitor", "--json", "--window", "1d"], smd["path"])  # the rows the server logged
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["monitors"] == ["quality-monitor", "schema-check"] and out["rows"] == len(smd["monitored"])
    monitored = smd["monitored"]
    day = monitored["timestamp"].dt.floor("1D")
    checked = 0
    for window in out["windows"]:
        rows = monitored[day == pd.Timestamp(window["start"][:10])]
        assert window["rows"] == len(rows)
        (schema,) = [r for r in window["reports"] if r["monitor"] == "schema-check"]
        expected = outside(smd["train"], rows)
        found = {k[len("out_of_range["):-1]: v for k, v in schema["metrics"].items() if k.startswith("out_of_range[")}
        assert found.keys() == expected.keys(), window["start"]
        assert all(found[c] == pytest.approx(s, abs=1e-12) for c, s in expected.items())
        assert schema["metrics"]["schema_findings"] == len(expected)
        assert ({a["alert"] for a in window["alerts"] if a["monitor"] == "schema-check"}
                == set(schema["alerts"]))
        checked += bool(expected)
    assert len(out["windows"]) == 9 and checked == 9  # every day of the later period shows some

    text = invoke(["monitor", "--window", "1d"], smd["path"])
    assert text.exit_code == 0, text.stderr
    flat = " ".join(text.stdout.split())
    assert "schema-check" in flat and "out_of_range[m07]" in flat
    assert "alert schema-check: column" in flat


def test_loaded_model_hands_the_findings_to_its_caller_and_scores_the_same(smd: dict[str, Any]) -> None:
    from opsloop import config as config_mod
    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.session import Session

    with Session.open(config_mod.read(workdir=smd["path"]), sections=("store",)).open_store() as store:
        version = store.get("smd", 1)
    model = read_bundle(version.path, PluginManager(), ref=version.ref, digest=version.digest)
    rows = smd["monitored"]
    issues: list[str] = []
    with_issues = model.predict(rows, issues=issues)
    pd.testing.assert_frame_equal(with_issues, model.predict(rows))  # collecting changes no score
    assert all(i.startswith("schema-check: ") for i in issues)
    columns = [re.match(r'schema-check: column "(m\d\d)": [\d,]+ of 11,845 values', i)[1] for i in issues]
    assert columns == sorted(outside(smd["train"], rows))  # every out-of-range column, in column order
    (schema,) = [r for r in smd["run"]["monitor"] if r["monitor"] == "schema-check"]
    assert [f"schema-check: {a}" for a in schema["alerts"][:10]] == issues[:10]  # what the monitor reported


def test_a_version_without_the_step_gets_no_figures_rather_than_zero(smd: dict[str, Any], caplog) -> None:
    import logging

    from opsloop import Dataset
    from opsloop import config as config_mod
    from opsloop.plugins import schema_check
    from opsloop.session import Session

    result = invoke(["run", "--json", "--set", 'preprocess.plugins=["impute"]', "--set", "monitor.plugins=[]"],
                    smd["path"])
    assert result.exit_code == 0, result.stderr
    with Session.open(config_mod.read(workdir=smd["path"]), sections=("store",)).open_store() as store:
        version = store.get("smd", 2)
    assert [s["plugin"] for s in json.loads((version.path / "manifest.json").read_text())["steps"]] == ["impute"]
    run = type("Run", (), {"log": logging.getLogger("opsloop.test")})()
    rows = Dataset.from_frame(smd["monitored"], target="label", time="timestamp", series="entity")
    with caplog.at_level(logging.WARNING, logger="opsloop.test"):
        report = schema_check.monitor(version=version, current=rows, run=run)
    assert report.metrics == {} and report.alerts == () and report.rows == len(rows)
    assert "smd:2 was trained without a schema-check step" in caplog.text
