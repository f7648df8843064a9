"""`opsloop monitor`: the configured monitors on what production really scored, window by window (issue 9, item 3).

One project for the module: a real XGBoost version trained on two ASD
servers, served by the real server (in-process, 127.0.0.1), which logs what
it answers; labels arrive through `opsloop feedback`, by series and time and
by request id, one of them corrected later. Figures are checked against what
was sent and against scikit-learn on the same joined rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd
import pytest
import tomli_w
from opsloop import MonitorReport, hookimpl
from opsloop.testing import invoke
from sklearn import metrics as skm

MODEL = "asd-mon"
CONFIG = {
    "project": {"name": MODEL},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-06'",
        "monitor": "entity in ['omi-1', 'omi-9', 'omi-10'] and timestamp >= '2024-01-12'",
    },
    "preprocess": {"plugins": ["schema-check", "impute"]},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 25, "n_jobs": 1}},
    "validate": {"plugins": []},
    "deploy": {"plugins": []},
    "monitor": {"plugins": ["quality-monitor", "drift-monitor"]},
    "retrain": {"plugins": []},
}
DAY1, DAY2, DAY3 = "2024-01-12", "2024-01-13", "2024-01-14"


@attrs.define
class Served:
    """The project, and what the server answered: one row per logged prediction."""

    path: Path
    rows: pd.DataFrame  # sent rows with request_id, row, prediction, score, and truth (the final label or NaN)

    @property
    def log(self) -> Path:
        return self.path / ".opsloop" / "serving" / "predictions.db"

    def monitor(self, *args: str) -> Any:
        return invoke(["monitor", *args], self.path)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.drop(columns=["label"]).to_dict("records"):
        out.append({k: (v.isoformat() if isinstance(v, pd.Timestamp) else v.item() if hasattr(v, "item") else v)
                    for k, v in row.items()})
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Version 1 in production; two days of three servers (every 4th step) served and logged; labels: all of
    day 1 by series and time, half of day 2 by request id and row (one corrected later), none of day 3's."""
    import http.client

    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread
    from opsloop.session import Session

    path = tmp_path_factory.mktemp("monitor")
    (path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    cfg = config_mod.read(path / "opsloop.toml")
    runner = Runner(Session.open(cfg))
    try:
        train, later = data_mod.periods(data_mod.load(cfg), cfg)
        version = runner.build(train).version
        runner.place(version)
    finally:
        runner.close()
    frame = later.frame
    frame = frame[(frame["timestamp"] >= DAY1) & (frame["timestamp"] < "2024-01-15")].iloc[::4].reset_index(drop=True)
    app = create_app(workdir=path)
    answers = []
    with ServerThread(app) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for start in range(0, len(frame), 50):
            conn.request("POST", "/predict", json.dumps({"instances": _records(frame.iloc[start:start + 50])}),
                         {"Content-Type": "application/json"})
            answer = json.loads(conn.getresponse().read())
            for i, p in enumerate(answer["predictions"]):
                answers.append((answer["request_id"], i, p["prediction"], p["score"]))
        conn.close()
    rows = frame.assign(**dict(zip(("request_id", "row", "prediction", "score"), map(list, zip(*answers)))))
    truth = pd.Series(np.nan, index=rows.index)
    day1 = rows["timestamp"] < DAY2
    (path / "day1.csv").write_text("series,time,label\n" + "".join(
        f"{e},{t.isoformat()},{int(y)}\n" for e, t, y in rows.loc[day1, ["entity", "timestamp", "label"]].itertuples(
            index=False)), encoding="utf-8")
    assert invoke(["feedback", "--file", "day1.csv"], path).assert_ok()
    truth[day1] = rows.loc[day1, "label"]
    # one row of day 1 relabelled by request id and row (newer than its key's label), then by key again
    moved = rows.index[day1][7]
    request, row, y = rows.loc[moved, "request_id"], int(rows.loc[moved, "row"]), int(rows.loc[moved, "label"])
    invoke(["feedback", request, str(1 - y), "--row", str(row)], path).assert_ok()
    (path / "again.csv").write_text(f"series,time,label\n{rows.loc[moved, 'entity']},"
                                    f"{rows.loc[moved, 'timestamp'].isoformat()},{y}\n", encoding="utf-8")
    invoke(["feedback", "--file", "again.csv"], path).assert_ok()
    day2 = rows.index[(rows["timestamp"] >= DAY2) & (rows["timestamp"] < DAY3)][::2]
    (path / "day2.csv").write_text("request_id,row,label\n" + "".join(
        f"{r},{w},{int(y)}\n" for r, w, y in rows.loc[day2, ["request_id", "row", "label"]].itertuples(index=False)),
        encoding="utf-8")
    assert invoke(["feedback", "--file", "day2.csv"], path).assert_ok()
    truth[day2] = rows.loc[day2, "label"]
    fixed = day2[0]  # labelled wrongly first by key, then again by request id: the latest label wins
    wrong = 1 - int(rows.loc[fixed, "label"])
    invoke(["feedback", rows.loc[fixed, "request_id"], str(wrong), "--row", str(rows.loc[fixed, "row"])],
           path).assert_ok()
    invoke(["feedback", rows.loc[fixed, "request_id"], str(int(rows.loc[fixed, "label"])), "--row",
            str(rows.loc[fixed, "row"])], path).assert_ok()
    return Served(path=path, rows=rows.assign(truth=truth))


def _window(out: dict[str, Any], start: str) -> dict[str, Any]:
    return next(w for w in out["windows"] if w["start"].startswith(start))


def _report(window: dict[str, Any], monitor: str) -> dict[str, Any]:
    return next(r for r in window["reports"] if r["monitor"] == monitor)


def test_daily_windows_count_the_logged_and_labelled_rows_and_judge_them_as_sklearn_does(served: Served) -> None:
    result = served.monitor("--window", "1d", "--json").assert_ok()
    out = result.json
    rows = served.rows
    assert out["version"] == f"{MODEL}:1" and out["alias"] == "production" and out["by"] == "time"
    assert out["monitors"] == ["quality-monitor", "drift-monitor"]
    assert [w["start"][:10] for w in out["windows"]] == [DAY1, DAY2, DAY3]
    assert out["rows"] == len(rows) and out["labelled"] == int(rows["truth"].notna().sum())
    for day, window in zip((DAY1, DAY2, DAY3), out["windows"], strict=True):
        sent = rows[(rows["timestamp"] >= day) & (rows["timestamp"] < pd.Timestamp(day) + pd.Timedelta("1D"))]
        assert window["rows"] == len(sent) and window["labelled"] == int(sent["truth"].notna().sum())
        assert _report(window, "drift-monitor")["rows"] == len(sent)
    for day in (DAY1, DAY2):  # quality on the labelled rows alone, the corrected label as it was corrected
        sent = rows[(rows["timestamp"] >= day) & (rows["timestamp"] < pd.Timestamp(day) + pd.Timedelta("1D"))]
        judged = sent[sent["truth"].notna()]
        quality = _report(_window(out, day), "quality-monitor")["metrics"]
        y, p = judged["truth"].to_numpy(), judged["prediction"].to_numpy()
        assert quality["rows"] == len(judged)
        assert quality["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
        assert quality["f1"] == pytest.approx(skm.f1_score(y, p, zero_division=0))
        assert quality["positives"] == int(y.sum()) > 0
        assert quality["roc_auc"] == pytest.approx(skm.roc_auc_score(y, judged["score"]))
    assert _report(_window(out, DAY2), "quality-monitor")["metrics"]["unlabelled"] == \
        _window(out, DAY2)["rows"] - _window(out, DAY2)["labelled"]
    day3 = _window(out, DAY3)
    assert day3["labelled"] == 0 and any("no labels" in a["alert"] for a in day3["alerts"])
    json.dumps(out, allow_nan=False)  # strict JSON: NaN is null


def test_drift_compares_the_logged_inputs_with_the_versions_reference_profile(served: Served) -> None:
    out = served.monitor("--json").assert_ok().json
    (window,) = out["windows"]
    drift = _report(window, "drift-monitor")["metrics"]
    assert drift["rows"] == len(served.rows) and drift["reference_rows"] > 0
    assert {k for k in drift if k.startswith("psi[")} == {f"psi[{c}]" for c in served.rows.columns
                                                            if c.startswith("m")}
    assert not out["notes"]


def test_the_table_shows_each_monitors_figures_and_the_alerts(served: Served) -> None:
    result = served.monitor("--window", "1d").assert_ok()
    text = result.stdout
    assert f"{MODEL}:1 (@production): {len(served.rows):,} logged rows" in text
    assert "2024-01-12 → 2024-01-13" in text and "2024-01-14 → 2024-01-15" in text
    for figure in ("accuracy", "roc_auc", "drift_max_psi", "reference_rows", "psi[", "ks["):
        assert figure in text, figure
    assert "more, all <=" in text  # 19 features' PSI: the worst 5 shown, the rest summed up
    assert "alert quality-monitor: no labels" in text


def test_check_exits_1_on_an_alert_and_0_without(served: Served) -> None:
    # day 3 has no labels: quality-monitor says so in an alert
    assert served.monitor("--window", "1d", "--check", "--set", 'monitor.plugins=["quality-monitor"]').exit_code == 1
    quiet = served.monitor("--since", DAY1, "--until", DAY2, "--check", "--json", "--set",
                           'monitor.plugins=["quality-monitor"]')
    assert quiet.exit_code == 0 and quiet.json["alerts"] == 0 and quiet.json["rows"] > 0


class AlertRate:
    """A third-party monitor, written against the hook alone: the share of rows flagged, per server."""

    def __init__(self) -> None:
        self.seen: list[tuple[pd.DataFrame, pd.DataFrame]] = []

    @hookimpl
    def monitor(self, version, current, predictions, options):
        self.seen.append((current.frame, predictions))
        rate = float((predictions["prediction"] == 1).mean())
        by_server = predictions["prediction"].groupby(current.frame[current.series].to_numpy()).mean()
        figures = {"alert_rate": rate, **{f"alert_rate[{s}]": float(r) for s, r in by_server.items()}}
        return MonitorReport(rows=len(current), metrics=figures, alerts=(f"alert rate {rate:.3f} > 0",) if rate else ())


def test_a_third_party_monitor_gets_the_logged_rows_through_the_same_hook(served: Served,
                                                                          register_plugin: Any) -> None:
    plugin = AlertRate()
    register_plugin(plugin, "alert-rate")
    out = served.monitor("--json", "--set", 'monitor.plugins=["alert-rate"]').assert_ok().json
    ((frame, predictions),) = plugin.seen
    rows = served.rows
    assert len(frame) == len(predictions) == len(rows)
    # the inputs as the clients sent them, with the dtypes of training; the label column from feedback
    assert frame["timestamp"].dtype == rows["timestamp"].dtype and (frame["timestamp"] == rows["timestamp"]).all()
    assert (frame["entity"] == rows["entity"]).all()
    assert np.allclose(frame["m01"].to_numpy(), rows["m01"].to_numpy())
    assert np.array_equal(frame["label"].to_numpy(), rows["truth"].to_numpy(), equal_nan=True)
    assert (predictions["prediction"].to_numpy() == rows["prediction"].to_numpy()).all()
    assert np.allclose(predictions["score"].to_numpy(), rows["score"].to_numpy())
    metrics = _report(out["windows"][0], "alert-rate")["metrics"]
    assert metrics["alert_rate"] == pytest.approx(float((rows["prediction"] == 1).mean()))
    assert metrics["alert_rate[omi-10]"] == pytest.approx(float(rows.loc[rows["entity"] == "omi-10",
                                                                         "prediction"].mean()))
    text = served.monitor("--set", 'monitor.plugins=["alert-rate"]').assert_ok().stdout
    assert "alert_rate[omi-1]" in text and "alert_rate[omi-10]" in text


def test_the_same_third_party_monitor_on_a_batch_in_opsloop_run_shows_its_figures(served: Served,
                                                                                  register_plugin: Any) -> None:
    """`opsloop run`'s summary printed an empty table for figures it did not know (drift's, a plugin's)."""
    plugin = AlertRate()
    register_plugin(plugin, "alert-rate")
    result = invoke(["run", "--quiet", "--set", 'monitor.plugins=["drift-monitor", "alert-rate"]'], served.path)
    text = result.assert_ok().stdout
    ((frame, predictions),) = plugin.seen
    assert frame["label"].notna().all() and len(frame) == len(predictions) > 0  # the labelled later period
    assert "unchanged: asd-mon:1" in text  # nothing retrained: the same version, on a batch this time
    for figure in ("alert_rate", "alert_rate[omi-10]", "drift_max_psi", "reference_rows", "psi[", "ks["):
        assert figure in text, figure
    assert "more, all <=" in text


def test_windows_by_when_rows_were_scored(served: Served) -> None:
    out = served.monitor("--by", "at", "--json").assert_ok().json
    (window,) = out["windows"]
    assert out["by"] == "at" and window["rows"] == len(served.rows)
    assert window["labelled"] == int(served.rows["truth"].notna().sum())
    assert window["start"][:4] >= "2026" or window["start"][:4] >= str(pd.Timestamp.now(tz="UTC").year)


class Tracker:
    """An observer, as a tracking integration is: it hears every stage."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    @hookimpl
    def on_stage_start(self, stage, plugins):
        self.events.append(("start", stage, list(plugins)))

    @hookimpl
    def on_stage_end(self, stage, result):
        self.events.append(("end", stage, [r.rows for r in result]))


def test_each_window_is_a_monitor_stage_for_observers(served: Served, register_plugin: Any) -> None:
    tracker = Tracker()
    register_plugin(tracker, "tracker")
    out = served.monitor("--window", "1d", "--json", "--set", 'plugins.enable=["tracker"]').assert_ok().json
    monitors = ["quality-monitor", "drift-monitor"]
    assert tracker.events == [event for w in out["windows"]
                              for event in (("start", "monitor", monitors), ("end", "monitor", [w["rows"]] * 2))]


# -- bad input: one line each, exit 1, nothing written ---------------------------------------------------------

def _refused(served: Served, *args: str) -> str:
    before = _digest(served.path)
    result = served.monitor(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines[0]
    assert _digest(served.path) == before  # nothing written, nothing created
    return lines[0]


@contextlib.contextmanager
def _copy(log: Path, to: Path) -> Iterator[sqlite3.Connection]:
    """A copy of a log (SQLite's backup), open for changes; both connections closed after."""
    src, dst = sqlite3.connect(log), sqlite3.connect(to, isolation_level=None)
    try:
        src.backup(dst)
        yield dst
    finally:
        src.close()
        dst.close()


def _digest(path: Path) -> dict[str, str]:
    """The prediction log's files and the project's own (the registry is the store's business). SQLite's shared
    memory index and an empty -wal, which a read-only reader of a WAL database may leave, hold no data."""
    files = [p for p in (path / ".opsloop" / "serving").iterdir()
             if not p.name.endswith("-shm") and not (p.name.endswith("-wal") and p.stat().st_size == 0)]
    files += [p for p in path.iterdir() if p.is_file()]
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def test_an_alias_or_a_model_that_does_not_exist(served: Served) -> None:
    assert 'model asd-mon has no alias "canary"' in _refused(served, "--alias", "canary")
    assert 'unknown model "nosuch"' in _refused(served, "--model", "nosuch")
    assert "asd-mon" in _refused(served, "--version", "7")


def test_an_empty_window(served: Served) -> None:
    line = _refused(served, "--since", "2025-01-01", "--until", "2025-01-02")
    assert "no predictions of asd-mon:1" in line and "2025-01-01T00:00:00Z" in line and "logged ones run from" in line


def test_a_log_of_another_model(served: Served, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with _copy(served.log, other) as dst:
        dst.execute("UPDATE predictions SET model = 'disk-full'")
    line = _refused(served, "--log-path", str(other))
    assert str(other) in line and "no predictions of model asd-mon" in line and "disk-full" in line


def test_a_log_that_does_not_exist_or_is_not_a_prediction_log(served: Served, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "predictions.db"
    assert f"{missing}: does not exist" in _refused(served, "--log-path", str(missing))
    assert not missing.parent.exists()
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 100, encoding="utf-8")
    assert "is not a prediction log" in _refused(served, "--log-path", str(text))
    assert text.read_text(encoding="utf-8") == "not a database\n" * 100
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE things (x)")
    con.close()
    assert "not a prediction log (no predictions or feedback table" in _refused(served, "--log-path", str(foreign))
    usage = served.monitor("--log-path", str(tmp_path))  # a usage error, as for serve and feedback
    assert usage.exit_code == 2 and "is a directory" in usage.stderr and "Traceback" not in usage.stderr


def test_labels_that_a_0_1_classifier_cannot_have(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "bad-labels.db"
    with _copy(served.log, bad):
        pass
    first = served.rows.iloc[0]
    invoke(["feedback", first["request_id"], "2", "--row", str(first["row"]), "--log-path", str(bad)],
           served.path).assert_ok()
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    line = _refused(served, "--log-path", str(bad))
    assert str(bad) in line and f"the label of request {first['request_id']} row {first['row']} is 2" in line
    assert "0/1 classification model" in line
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest


def test_bad_window_and_times(served: Served) -> None:
    assert "--window '1x'" in _refused(served, "--window", "1x")
    assert "--since 'yesterday'" in _refused(served, "--since", "yesterday")
    assert "is not before --until" in _refused(served, "--since", DAY2, "--until", DAY1)
    assert "into 258,001 windows; at most 1,000" in _refused(served, "--window", "1s")
    assert "no monitor selected" in _refused(served, "--set", "monitor.plugins=[]")


def test_a_version_registered_without_a_profile_gets_an_empty_reference_and_a_note(served: Served,
                                                                                    tmp_path: Path) -> None:
    """A bundle as written before profiles: the same version without its profile files."""
    from opsloop import config as config_mod
    from opsloop.bundle import MANIFEST, sha256_file
    from opsloop.profile import PROFILE_FILE, SAMPLE_FILE
    from opsloop.session import Session

    with Session.open(config_mod.read(workdir=served.path), sections=("store",)).open_store() as store:
        v1 = store.get(MODEL, 1)
        staged = store.staging_dir()
        for f in Path(v1.path).iterdir():
            if f.name not in (PROFILE_FILE, SAMPLE_FILE):
                shutil.copy(f, staged / f.name)
        manifest = json.loads((staged / MANIFEST).read_text(encoding="utf-8"))
        manifest["files"] = {k: v for k, v in manifest["files"].items() if k not in (PROFILE_FILE, SAMPLE_FILE)}
        (staged / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        assert all(sha256_file(staged / k) == v for k, v in manifest["files"].items())
        old = store.register(MODEL, staged, manifest)
    # the log's rows were scored by version 1; call them the old version's
    log = tmp_path / "old.db"
    with _copy(served.log, log) as dst:
        dst.execute("UPDATE predictions SET version = ?", (old.version,))
    out = served.monitor("--version", str(old.version), "--log-path", str(log), "--json").assert_ok().json
    assert out["alias"] is None and out["version"] == old.ref
    (note,) = out["notes"]
    assert "no reference profile" in note and "drift needs a version registered with a profile" in note
    drift = _report(out["windows"][0], "drift-monitor")["metrics"]
    assert drift["reference_rows"] == 0 and not any(k.startswith(("psi[", "ks[")) for k in drift)
    text = served.monitor("--version", str(old.version), "--log-path", str(log)).assert_ok().stdout
    assert "drift needs a version registered with a profile" in text


def test_a_log_on_a_read_only_filesystem_is_read(served: Served, tmp_path: Path, mounts: Any) -> None:
    """Closed cleanly (no -wal, no -shm beside it) where SQLite cannot make them: read as it is on disk."""
    (tmp_path / "logs").mkdir()
    with _copy(served.log, tmp_path / "logs" / "predictions.db"):
        pass
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["predictions.db"]
    ro = mounts.read_only(tmp_path / "logs")
    out = served.monitor("--log-path", str(ro / "predictions.db"), "--json").assert_ok().json
    assert out["rows"] == len(served.rows) and out["labelled"] == int(served.rows["truth"].notna().sum())
