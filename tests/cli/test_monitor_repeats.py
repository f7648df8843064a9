"""A row a version scored twice counts once (issue 12's loop reads the log; a rerun must not double its rows).

A second `opsloop run` that reuses the registered version batch-scores the
monitored period again and logs it under a new request: the log then holds
every row twice. `opsloop monitor` (and the loop, which reads rows the same
way) counts each series and time once, keeps the copy that has a label, and
says how many repeats it left out.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
from opsloop.monitoring import _once_each


def _monitor(project):
    return project.run("monitor", "--window", "28d", "--json").assert_ok().json


def test_a_rerun_that_logs_its_batch_again_is_monitored_once(opsloop_project):
    project = opsloop_project(small=True, config={"monitor": {"plugins": ["quality-monitor", "drift-monitor"]}})
    project.run("run").assert_ok()
    once = _monitor(project)
    assert once["rows"] > 0 and not once["notes"]

    rerun = project.run("run").assert_ok().json
    assert rerun["unchanged"], "the rerun was meant to reuse version 1"
    log = project.path / ".opsloop" / "serving" / "predictions.db"
    with sqlite3.connect(log) as con:
        requests = [r for (r,) in con.execute("SELECT DISTINCT request_id FROM segments ORDER BY id")]
        logged = con.execute("SELECT sum(rows) FROM segments").fetchone()[0]
    assert len(requests) == 2 and logged == 2 * once["rows"]

    twice = _monitor(project)
    assert twice["rows"] == once["rows"]
    assert [w["rows"] for w in twice["windows"]] == [w["rows"] for w in once["windows"]]
    drift = [[r["metrics"] for r in w["reports"] if r["monitor"] == "drift-monitor"] for w in twice["windows"]]
    assert drift == [[r["metrics"] for r in w["reports"] if r["monitor"] == "drift-monitor"]
                     for w in once["windows"]]
    assert any(f"{once['rows']:,} logged row(s) repeat a series and time" in n for n in twice["notes"])

    # a label given to the first run's copy of a row is kept, though the second copy was logged later
    project.run("feedback", requests[0], "1", "--row", "5").assert_ok()
    labelled = _monitor(project)
    assert labelled["rows"] == once["rows"] and labelled["labelled"] == 1


def test_once_each_keeps_the_labelled_copy_or_the_last_and_never_merges_rows_without_a_time():
    t = pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01 00:00", "2024-01-01 00:05", None,
                        None, "2024-01-01 00:00"], utc=True)
    frame = pd.DataFrame({"entity": ["a", "a", "a", "a", "a", "a", "b"], "timestamp": t})
    labels = np.array([1.0, np.nan, np.nan, np.nan, np.nan, np.nan, 0.0])
    keep = _once_each(frame, "entity", "timestamp", labels)
    # (a, 00:00): the labelled first copy; (a, 00:05): the later copy; both rows without a time; (b, 00:00)
    assert keep.tolist() == [True, False, False, True, True, True, True]
    assert _once_each(frame.iloc[[0, 1, 6]], "entity", "timestamp", labels[[0, 1, 6]]) is None
    assert _once_each(frame, "entity", None, labels) is None  # no time column: no identity beyond the request
