"""`opsloop backtest`: the loop's own cycles replayed over a labelled history, beside never and always retraining
(issue 12, item 4).

A small real project (XGBoost on two ASD servers, four days replayed in
three chunks) with a policy that asks for a retrain at every chunk, so that
the loop retrains, gates and promotes within the replay. The never-retrained
model's figures are checked against a version trained the same way by
`opsloop run` and scored with scikit-learn here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w
from opsloop.testing import invoke
from sklearn import metrics as skm

MODEL = "asd-bt"
CONFIG: dict[str, Any] = {
    "project": {"name": MODEL},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-2'] and timestamp < '2024-01-06'",
        "monitor": "entity in ['omi-1', 'omi-2'] and timestamp >= '2024-01-12'",
    },
    "preprocess": {"plugins": ["schema-check", "impute"]},
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 30, "n_jobs": 1}},
    "validate": {"plugins": ["holdout"]},
    "deploy": {"plugins": []},
    "monitor": {"plugins": ["quality-monitor"]},
    "retrain": {"plugins": ["threshold-policy"],
                "threshold-policy": {"min_f1": 0.99, "min_positives": 1, "cooldown": "0", "max_retrains": 100}},
    "gate": {"plugins": ["champion-challenger"], "champion-challenger": {"require_ci": False}},
    "loop": {"window": "expanding", "holdout": "12h"},
}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("backtest")
    (path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    keep = path / "kept"
    out = invoke(["backtest", "--chunks", "3", "--json", "--keep", str(keep)], path).assert_ok().json
    return path, out


def test_chunks_cover_the_replayed_rows_in_time_order(replayed: tuple[Path, dict[str, Any]]) -> None:
    path, out = replayed
    chunks = out["chunks"]
    assert len(chunks) == 3
    assert all(set(c) >= {"start", "end", "loop", "stale", "always"} for c in chunks)
    assert [c["end"] for c in chunks[:-1]] == [c["start"] for c in chunks[1:]]
    assert chunks[0]["start"] == "2024-01-12T00:00:00Z"
    assert sum(c["rows"] for c in chunks) == 2 * 4 * 288  # two servers, four days of 5-minute steps
    assert not (path / ".opsloop").exists()  # the project's registry is never touched


def test_the_first_chunk_is_scored_by_the_first_version_for_every_strategy(replayed: tuple[Path, Any]) -> None:
    first = replayed[1]["chunks"][0]
    assert first["loop"] == first["stale"] == first["always"]
    assert first["models"] == {"loop": f"{MODEL}:1", "stale": f"{MODEL}:1", "always": f"{MODEL}:1"}


def test_the_loop_retrains_gates_and_scores_with_what_it_promoted(replayed: tuple[Path, Any]) -> None:
    chunks, summary = replayed[1]["chunks"], replayed[1]["summary"]
    cycles = [c["cycle"] for c in chunks]
    for chunk, cycle in zip(chunks, cycles, strict=True):  # the F1 floor holds on a chunk with an incident
        if chunk["positives"]:
            assert cycle["decision"] == "retrain"
        else:
            assert cycle["decision"] == "keep" and "min_positives" in " ".join(cycle["reasons"])
    assert summary["retrains"] == sum(c["candidate"] is not None for c in cycles) >= 1
    assert summary["promotions"] == sum(c["promoted"] for c in cycles)
    for before, after in zip(chunks, chunks[1:], strict=False):
        cycle = before["cycle"]
        if cycle["promoted"]:
            assert after["models"]["loop"] == f"{MODEL}:{cycle['candidate']}"
            assert cycle["gate"]["winner"] == "challenger"
        else:
            assert after["models"]["loop"] == before["models"]["loop"]
    for chunk in chunks:
        if chunk["models"]["loop"] == chunk["models"]["stale"]:
            assert chunk["loop"] == chunk["stale"]
    # The always strategy's model is retrained at every chunk's end, beside the loop's.
    assert [c["models"]["always"] for c in chunks[1:]] == [f"{MODEL}-always:1", f"{MODEL}-always:2"]


def test_the_summary_means_are_the_chunks_means(replayed: tuple[Path, Any]) -> None:
    chunks, mean = replayed[1]["chunks"], replayed[1]["summary"]["mean"]
    for strategy in ("loop", "stale", "always"):
        for metric in ("pr_auc", "f1", "recall"):
            values = [c[strategy][metric] for c in chunks if c[strategy].get(metric) is not None]
            assert mean[strategy][metric] == pytest.approx(sum(values) / len(values))
        # incident figures per chunk, and over the whole replay instead of a mean (issue 13, item 2)
        assert all("incident_recall" in c[strategy] and "alerts_per_day" in c[strategy] for c in chunks)
        assert "incident_recall" not in mean[strategy]
        assert "incident_recall" in replayed[1]["summary"]["incidents"][strategy]


def test_the_stale_figures_are_those_of_the_first_version_scored_here(replayed: tuple[Path, Any],
                                                                      tmp_path: Path) -> None:
    from opsloop import config, data
    from opsloop.bundle import read_bundle
    from opsloop.session import Session

    _, out = replayed
    (tmp_path / "opsloop.toml").write_text(tomli_w.dumps(CONFIG), encoding="utf-8")
    invoke(["run", "--json", "--quiet"], tmp_path).assert_ok()
    cfg = config.read(workdir=tmp_path)
    session = Session.open(cfg)
    with session.open_store() as store:
        version = store.get(MODEL, 1)
    model = read_bundle(version.path, session.plugins, ref=version.ref, digest=version.digest)
    frame = data.load(cfg).frame.query(CONFIG["data"]["monitor"])
    times = pd.to_datetime(frame["timestamp"], utc=True)
    for chunk in out["chunks"]:
        rows = frame[((times >= pd.Timestamp(chunk["start"])) & (times < pd.Timestamp(chunk["end"]))).to_numpy()]
        predicted = model.predict(rows.reset_index(drop=True))
        scores = predicted["score"]
        caught = _caught(rows, predicted["prediction"])
        assert chunk["stale"]["incidents"] == len(caught) and chunk["stale"]["incidents_caught"] == caught.sum()
        assert len(rows) == chunk["rows"] and int(rows["label"].sum()) == chunk["positives"]
        if 0 < chunk["positives"] < chunk["rows"]:
            assert chunk["stale"]["pr_auc"] == pytest.approx(skm.average_precision_score(rows["label"], scores),
                                                             abs=1e-9)
        else:
            assert chunk["stale"]["pr_auc"] is None or math.isnan(chunk["stale"]["pr_auc"])
    # over the whole replay, an incident cut by a chunk's end counts once
    caught = _caught(frame, model.predict(frame.reset_index(drop=True))["prediction"])
    whole = out["summary"]["incidents"]["stale"]
    assert whole["incidents"] == len(caught) > 0 and whole["incidents_caught"] == caught.sum()
    assert whole["incident_recall"] == pytest.approx(caught.mean())


def _caught(rows: pd.DataFrame, prediction: pd.Series) -> pd.Series:
    """Per incident (run of label 1 per server, in time order): whether a row of it was predicted 1."""
    rows = rows.assign(alert=prediction.to_numpy()).sort_values(["entity", "timestamp"])
    on = rows["label"].eq(1)
    incident = (on & ~on.groupby(rows["entity"]).shift(fill_value=False)).cumsum().where(on)
    return rows["alert"].eq(1).groupby(incident).any()


def test_kept_registry_holds_the_journal_of_every_cycle(replayed: tuple[Path, Any]) -> None:
    path, out = replayed
    entries = invoke(["loop", "history", "--json", "--set", f"store.uri={path / 'kept' / '.opsloop'}"],
                     path).assert_ok().json
    assert len(entries) == len(out["chunks"])
    assert [e["status"] for e in reversed(entries)] == [c["cycle"]["status"] for c in out["chunks"]]
    assert all(e["at"] for e in entries)


def test_the_table_shows_the_strategies_and_what_the_loop_did(replayed: tuple[Path, Any]) -> None:
    path, out = replayed
    result = invoke(["backtest", "--chunks", "2", "--quiet"], path).assert_ok()
    text = result.stdout
    assert "loop" in text and "stale" in text and "always" in text and "mean over chunks" in text
    assert "retrain(s)" in text
    # the pager's view per strategy over the whole replay: "caught of all" as the JSON gives it
    two = invoke(["backtest", "--chunks", "2", "--json"], path).assert_ok().json["summary"]["incidents"]
    assert "alerting over the whole replay" in text
    table = text.split("alerting over the whole replay", 1)[1].splitlines()
    for strategy, figures in two.items():
        line = next(row for row in table if row.strip("│ ").startswith(strategy))
        assert f"{figures['incidents_caught']:.0f} of {figures['incidents']:.0f}" in line


def test_bad_chunking_is_one_line(replayed: tuple[Path, Any]) -> None:
    path, _ = replayed
    invoke(["backtest", "--every", "1d", "--chunks", "3"], path).assert_error("not both")
    invoke(["backtest", "--every", "1s"], path).assert_error("chunks; at most 500")
    invoke(["backtest", "--every", "soon"], path).assert_error("--every 'soon'")
