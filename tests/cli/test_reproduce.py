"""`opsloop models reproduce NAME:N` on real versions of the ASD data (issue 14, item 3)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from opsloop.reproduce import Difference, explain, json_differences, version_changes

DATA_FILE = "asd.parquet"

#: A step of a third-party distribution, installed for the test (make_plugin_dist): its version is recorded.
PASSTHROUGH = """
from opsloop import Preprocessed, hookimpl

@hookimpl
def preprocess(dataset, state, options, run):
    return Preprocessed(dataset=dataset, state=state if state is not None else {"rows_seen": len(dataset)})
"""


@pytest.fixture
def project(opsloop_project, small_config):
    """SMALL on a parquet file of two ASD servers (so the data can change and go), one version registered."""
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(["omi-1", "omi-9"])].reset_index(drop=True)
    small_config["data"] = {**small_config["data"], "source": DATA_FILE,
                            "monitor": "timestamp >= '2024-01-08 12:00'"}
    small_config["retrain"] = {"act": False}
    made = opsloop_project(config=small_config)
    frame.to_parquet(made.path / DATA_FILE, index=False)
    made.run("run").assert_ok()
    return made


def _check(result, name):
    return next(c for c in result["checks"] if c["name"] == name)


def test_a_version_from_run_reproduces(project, small_config):
    result = project.run("models", "reproduce", "asd-anomaly:1", "--json").assert_ok().json
    assert result["reproduced"] is True and result["ref"] == "asd-anomaly:1"
    assert result["differences"] == []
    assert result["tolerance"] == 1e-9
    states = [c for c in result["checks"] if c["name"].endswith(" state")]
    assert [c["name"] for c in states] == ["schema-check state", "impute state", "rolling-features state"]
    assert all(c["ok"] for c in states)
    assert _check(result, "predictions")["ok"] is True
    assert "max |score difference| 0 " in _check(result, "predictions")["now"]
    assert _check(result, "estimator bytes")["ok"] is True  # XGBoost's UBJ: the same bytes
    assert _check(result, "validation figures")["ok"] is True
    assert _check(result, "data fingerprint")["ok"] is True
    assert any(str(project.path) in note for note in result["notes"])  # where data paths were resolved

    # the readable table and its verdict; the rebuild registered nothing
    text = project.run("models", "reproduce", "asd-anomaly:1").assert_ok().stdout
    assert "predictions" in text and "reproduced: asd-anomaly:1" in text and "tolerance 1e-09" in text
    shown = project.run("models", "show", "asd-anomaly", "--json").assert_ok().json
    assert [v["version"] for v in shown["versions"]] == [1]

    # the current config changed since: still reproduced (the recorded config is rebuilt), and said
    small_config["train"]["xgboost"]["max_depth"] = 3
    small_config["data"]["source"] = DATA_FILE
    project.write_config({**small_config, "retrain": {"act": False}})
    again = project.run("models", "reproduce", "asd-anomaly@production", "--json").assert_ok().json
    current = _check(again, "current config")
    assert current["ok"] is None and "train.xgboost.max_depth" in current["detail"]


def test_changed_data_is_a_data_difference_naming_both_fingerprints(project):
    import pandas as pd

    recorded = project.run("models", "show", "asd-anomaly:1", "--json").assert_ok().json["lineage"]["data"]
    path = project.path / DATA_FILE
    frame = pd.read_parquet(path)
    frame.loc[10, "m01"] = frame.loc[10, "m01"] + 0.5  # one value of one training row
    frame.to_parquet(path, index=False)

    run = project.run("models", "reproduce", "asd-anomaly:1", "--json")
    assert run.exit_code == 1
    result = run.json
    assert result["reproduced"] is False
    data = [d for d in result["differences"] if d["kind"] == "data"]
    assert len(data) == 1 and recorded["fingerprint"] in data[0]["message"] and "data changed" in data[0]["message"]
    assert _check(result, "data fingerprint")["ok"] is False
    # explained by the data: never called nondeterminism
    assert "nondeterminism" not in {d["kind"] for d in result["differences"]}
    text = project.run("models", "reproduce", "asd-anomaly:1")
    assert text.exit_code == 1 and "NOT reproduced" in text.stdout and "data changed" in text.stdout


def test_data_gone_is_one_clear_line(project):
    (project.path / DATA_FILE).unlink()
    result = project.run("models", "reproduce", "asd-anomaly:1").assert_error(
        "cannot reproduce asd-anomaly:1", "training data", "data file not found", DATA_FILE)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_bad_refs_and_tolerance_are_one_line_errors(project):
    project.run("models", "reproduce", "asd-anomaly:9").assert_error("9")
    project.run("models", "reproduce", "asd-anomaly:x").assert_error("invalid version reference")
    project.run("models", "reproduce", "no-such-model:1").assert_error("no-such-model")
    project.run("models", "reproduce", "asd-anomaly:1", "--tolerance", "-1").assert_error("--tolerance")


def test_a_plugin_version_changed_since_is_a_versions_difference(opsloop_project, small_config, make_plugin_dist):
    site = make_plugin_dist(dist="opsloop-passthrough", version="1.0", modules={"opsloop_passthrough": PASSTHROUGH},
                            entry_points={"passthrough": "opsloop_passthrough"})
    small_config["preprocess"] = {"plugins": ["passthrough"]}
    small_config["retrain"] = {"act": False}
    project = opsloop_project(config=small_config)
    project.run("run").assert_ok()
    assert project.run("models", "reproduce", "asd-anomaly:1", "--json").assert_ok().json["reproduced"] is True

    # the distribution is upgraded (its metadata says 1.1), the code is the same
    info = site / "opsloop_passthrough-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: opsloop-passthrough\nVersion: 1.1\n", encoding="utf-8")
    info.rename(site / "opsloop_passthrough-1.1.dist-info")
    importlib.invalidate_caches()

    run = project.run("models", "reproduce", "asd-anomaly:1", "--json")
    assert run.exit_code == 1, run.stderr
    result = run.json
    assert [d for d in result["differences"] if d["kind"] == "versions"] == [
        {"kind": "versions", "message": "plugin passthrough (opsloop-passthrough) 1.0 -> 1.1"}]
    assert _check(result, "passthrough state")["ok"] is True  # same code, same results: only the version
    assert _check(result, "predictions")["ok"] is True


def test_version_changes_name_each_library_plugin_and_interpreter():
    then = {"python": "3.11.4", "opsloop": "0.1.0", "libraries": {"numpy": "1.26.4", "xgboost": "2.0.3"},
            "plugins": {"xgboost": {"dist": "opsloop", "version": "0.1.0"}, "old": {"dist": "opsloop-old", "version": "1"}}}
    now = {"python": "3.11.9", "opsloop": "0.1.0", "libraries": {"numpy": "2.0.0", "xgboost": "2.0.3"},
           "plugins": {"xgboost": {"dist": "opsloop", "version": "0.2.0"}}}
    assert version_changes(then, now) == ["python 3.11.4 -> 3.11.9", "plugin xgboost (opsloop) 0.1.0 -> 0.2.0",
                                          "plugin old: opsloop-old 1 -> not used now", "library numpy 1.26.4 -> 2.0.0"]
    assert version_changes(then, then) == []


def test_json_differences_compare_floats_to_the_tolerance():
    state = {"median": {"m01": 0.5, "m02": float("nan")}, "windows": [12], "name": "a"}
    assert json_differences(state, {"median": {"m01": 0.5 + 1e-12, "m02": float("nan")}, "windows": [12],
                                    "name": "a"}, 1e-9) == []
    assert json_differences(state, {"median": {"m01": 0.6, "m02": 1.0}, "windows": [12, 24], "name": "a"},
                            1e-9) == ["median.m01: 0.5 -> 0.6", "median.m02: nan -> 1.0",
                                      "windows: 1 items -> 2 items"]


def test_result_differences_name_their_cause_or_nondeterminism():
    model = Difference(kind="model", message="predictions: max |score difference| 0.01")
    figures = Difference(kind="validation", message="validation figures: f1: 0.5 -> 0.6")
    hints = ["[train.xgboost] n_jobs = 0", "OMP_NUM_THREADS unset (all cores: 8)"]
    alone = explain([model, figures], hints)
    assert [d.kind for d in alone] == ["model", "validation", "nondeterminism"]
    assert "n_jobs = 0" in alone[-1].message and "OMP_NUM_THREADS" in alone[-1].message
    library = Difference(kind="versions", message="library xgboost 2.0.3 -> 2.1.0")
    caused = explain([library, model], hints)
    assert [d.kind for d in caused] == ["versions", "model"]
    assert caused[1].message.endswith("(explained by: versions changed)")
    assert explain([library], hints) == [library]  # nothing else differs: nothing to explain


#: `opsloop run` then `opsloop loop --once` (as tests/cli/test_loop.py): v1 by run, v2 retrained by run on
#: train + monitor, v3 by the loop on the source's and the prediction log's labelled rows.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import LOOP  # noqa: E402 - the loop scenario of test_loop.py


def test_versions_retrained_by_run_and_by_the_loop_reproduce(opsloop_project):
    from opsloop import config, data

    project = opsloop_project(config=LOOP)
    project.run("run").assert_ok()
    frame = data.load(config.read(workdir=project.path)).frame.query(LOOP["data"]["monitor"])
    labels = frame[["entity", "timestamp", "label"]].rename(columns={"entity": "series", "timestamp": "time"})
    labels.to_csv(project.path / "labels.csv", index=False)
    project.run("feedback", "--file", str(project.path / "labels.csv")).assert_ok()
    project.run("loop", "--once", "--json", "--quiet").assert_ok()
    for number, rows in ((2, "monitored labelled rows"), (3, "prediction log")):
        result = project.run("models", "reproduce", f"asd-loop:{number}", "--json").assert_ok().json
        assert result["reproduced"] is True
        assert any(rows in note for note in result["notes"]), result["notes"]
