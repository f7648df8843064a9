"""`drift-monitor` on versions registered through the real store: profile vs exact figures, series, scores.

ASD as the default config splits it (trained on the first week of omi-1..6,
monitored on the second week of all twelve) and SMD machine-1-6 (trained
before row 11,844, monitored after: a strong shift), both registered with
their reference profile; the figures are checked against scipy and numpy on
the training rows themselves.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from opsloop import profile
from opsloop.bundle import MANIFEST
from opsloop.plugins import drift_monitor
from opsloop.testing import to_toml
from scipy.stats import ks_2samp

QUICK = {"preprocess": {"plugins": ["schema-check", "impute"]}, "train": {"xgboost": {"n_estimators": 40}},
         "validate": {"kfold": {"folds": 2}}}
ASD = {"project": {"name": "asd"},
       "data": {"source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
                "train": "entity in ['omi-1', 'omi-2', 'omi-3', 'omi-4', 'omi-5', 'omi-6'] "
                         "and timestamp < '2024-01-08 12:00'",
                "monitor": "timestamp >= '2024-01-08 12:00'"}, **QUICK}


def register(workdir: Path, config: dict):
    """Build and register a version as `opsloop run` does; the version, its loaded model and both periods."""
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    cfg = config_mod.read(workdir=workdir)
    runner = Runner(Session.open(cfg))
    try:
        train, monitored = data_mod.periods(data_mod.load(cfg), cfg)
        version = runner.build(train).version
        model = runner.load(version)
    finally:
        runner.close()
    return version, model, train, monitored


@pytest.fixture(scope="module")
def asd(tmp_path_factory):
    return register(tmp_path_factory.mktemp("asd"), ASD)


@pytest.fixture(scope="module")
def smd(tmp_path_factory, smd_machine_1_6):
    root = tmp_path_factory.mktemp("smd")
    frame = smd_machine_1_6()
    frame.to_parquet(root / "smd.parquet", index=False)
    split = frame["timestamp"].iloc[11844]
    config = {"project": {"name": "smd"},
              "data": {"source": str(root / "smd.parquet"), "target": "label", "time": "timestamp",
                       "series": "entity", "train": f"timestamp < '{split}'", "monitor": f"timestamp >= '{split}'"},
              **QUICK}
    return register(root / "work", config)


def watch(version, current, reference, predictions=None, **options):
    return drift_monitor.monitor(version=version, current=current, reference=reference,
                                 options=drift_monitor.Options(**options), predictions=predictions)


def features(report) -> list[str]:
    return [k[3:-1] for k in report.metrics if k.startswith("ks[")]


# ---------------------------------------------------------------------------
# The profile's figures against exact ones
# ---------------------------------------------------------------------------

#: KS read off 1,001 quantiles: within 1/1,000 (+ 1/rows) at each quantile, and the gap looked for there.
def ks_tolerance(rows: int) -> float:
    return 2 / profile.QUANTILES + 2 / rows


@pytest.mark.parametrize("case", ["asd", "smd"])
def test_ks_and_psi_on_the_profile_agree_with_scipy_and_the_training_rows(case, request):
    version, _, train, monitored = request.getfixturevalue(case)
    for current in (monitored, train):
        on_profile = watch(version, current, train)
        exact = watch(version, current, train, use_profile=False)
        assert on_profile.metrics["reference_rows"] == exact.metrics["reference_rows"] == len(train)
        assert features(on_profile) == features(exact) and len(features(exact)) in (19, 38)
        for column in features(exact):
            scipy_ks = ks_2samp(train.frame[column], current.frame[column]).statistic
            assert exact.metrics[f"ks[{column}]"] == pytest.approx(scipy_ks, abs=1e-12), column
            assert abs(on_profile.metrics[f"ks[{column}]"] - scipy_ks) <= ks_tolerance(len(train)), column
            psi = drift_monitor.population_stability_index(train.frame[column].to_numpy(float),
                                                           current.frame[column].to_numpy(float))
            assert exact.metrics[f"psi[{column}]"] == pytest.approx(psi, rel=1e-9, abs=1e-12), column
            assert on_profile.metrics[f"psi[{column}]"] == pytest.approx(psi, rel=0.01, abs=0.01), column


def test_the_training_rows_against_their_own_profile_show_no_drift(asd):
    version, model, train, _ = asd
    report = watch(version, train, train, predictions=model.predict(train.frame))
    assert report.metrics["drift_max_ks"] <= ks_tolerance(len(train))
    assert report.metrics["drift_max_psi"] < 1e-3
    assert report.metrics["series_max_ks"] < 0.03 and report.metrics["series_unseen"] == 0
    assert report.metrics["score_ks"] <= ks_tolerance(len(train)) and report.metrics["score_psi"] < 1e-3
    assert report.metrics["alert_rate_ratio"] == pytest.approx(1.0)
    assert report.alerts == ()


def test_a_bundle_without_a_profile_falls_back_to_the_reference_rows(asd, tmp_path):
    """Versions registered before profiles existed: exact figures on the rows handed in, no score figures."""
    import attrs

    version, model, train, monitored = asd
    old = tmp_path / "old"
    shutil.copytree(version.path, old)
    old.chmod(0o755)
    manifest = json.loads((old / MANIFEST).read_text())
    for name in (profile.PROFILE_FILE, profile.SAMPLE_FILE):
        del manifest["files"][name]
    (old / MANIFEST).chmod(0o644)
    (old / MANIFEST).write_text(json.dumps(manifest))
    from opsloop.bundle import manifest_digest

    old_version = attrs.evolve(version, path=old, digest=manifest_digest(old))
    reference = train.derive(train.frame.iloc[::3])  # not the rows the profile was made of

    report = watch(old_version, monitored, reference, predictions=model.predict(monitored.frame))

    assert report.metrics["reference_rows"] == len(reference.frame)
    ks = ks_2samp(reference.frame["m07"], monitored.frame["m07"]).statistic
    assert report.metrics["ks[m07]"] == pytest.approx(ks, abs=1e-12)
    assert "score_psi" not in report.metrics and "alert_rate" not in report.metrics
    # monitoring from the prediction log: no training rows at hand
    nothing = watch(old_version, monitored, None)
    assert nothing.metrics == {"rows": len(monitored), "reference_rows": 0, "drifted": 0}  # nothing judged
    assert nothing.alerts[0].startswith("no reference: asd:1 has no reference profile in its bundle")
    on_profile = watch(version, monitored, None, predictions=model.predict(monitored.frame))
    assert on_profile.metrics["reference_rows"] == len(train) and "score_ks" in on_profile.metrics
    assert on_profile.metrics["ks[m07]"] == watch(version, monitored, train).metrics["ks[m07]"]


# ---------------------------------------------------------------------------
# Series and scores
# ---------------------------------------------------------------------------


def test_a_server_that_moved_is_named_first_and_alerts_are_bounded(asd):
    version, _, train, monitored = asd
    frame = monitored.frame.copy()
    moved = {"omi-3": 1.0, "omi-5": 0.6}  # real rows, two training servers shifted on one metric (KS 1.00, 0.92)
    for server, shift in moved.items():
        rows = frame["entity"] == server
        frame.loc[rows, "m07"] = frame.loc[rows, "m07"] + np.float32(shift)
    current = monitored.derive(frame)

    report = watch(version, current, train)

    ranked = sorted((k[10:-1] for k in report.metrics if k.startswith("series_ks[")),
                    key=lambda s: -report.metrics[f"series_ks[{s}]"])
    seen = [s for s in ranked if s in {f"omi-{i}" for i in range(1, 7)}]
    assert seen[:2] == ["omi-3", "omi-5"]
    assert report.metrics["series_drifted"] == 2 and report.metrics["series_unseen"] == 6
    series_alerts = [a for a in report.alerts if a.startswith("series ")]
    assert len(series_alerts) == 2 and series_alerts[0].startswith("series omi-3: KS ")
    assert "on m07" in series_alerts[0] and "against its own training rows" in series_alerts[0]
    # its own figure is against its own training rows: the exact two-sample KS on them
    own = train.frame.loc[train.frame["entity"] == "omi-3", "m07"]
    exact = ks_2samp(own, frame.loc[frame["entity"] == "omi-3", "m07"]).statistic
    assert report.metrics["series_ks[omi-3]"] == pytest.approx(exact, abs=2 / profile.SERIES_QUANTILES + 2 / len(own))

    bounded = watch(version, current, train, max_alerts=1, series_ks_threshold=0.3)
    series_alerts = [a for a in bounded.alerts if a.startswith(("series ", "1 more series", "2 more series"))]
    drifted = int(bounded.metrics["series_drifted"])
    assert drifted >= 2 and len(series_alerts) == 2
    assert series_alerts[0].startswith("series omi-3: ")
    assert series_alerts[1].startswith(f"{drifted - 1} more series drifted: omi-5")


def test_scores_and_alert_rate_against_the_training_rows(asd):
    version, model, train, monitored = asd
    predictions = model.predict(monitored.frame)
    in_sample = model.predict(train.frame)

    report = watch(version, monitored, train, predictions=predictions)

    exact = ks_2samp(in_sample["score"], predictions["score"]).statistic
    assert abs(report.metrics["score_ks"] - exact) <= ks_tolerance(len(train))
    assert report.metrics["alert_rate"] == pytest.approx((predictions["prediction"] == 1).mean())
    assert report.metrics["reference_alert_rate"] == pytest.approx((in_sample["prediction"] == 1).mean())
    assert report.metrics["alert_rate_ratio"] == pytest.approx(report.metrics["alert_rate"]
                                                               / report.metrics["reference_alert_rate"])
    # a model that went silent: the ratio alert fires, with the figures
    silent = watch(version, monitored, train, predictions=predictions.assign(prediction=0, score=0.001))
    assert silent.metrics["alert_rate_ratio"] == 0 and silent.metrics["score_ks"] > 0.5
    assert any(re.fullmatch(r"alert rate 0\.00% is 0\.00x the training rows' \d+\.\d\d% \(outside 1/10x\.\.10x\)", a)
               for a in silent.alerts), silent.alerts
    assert any(a.startswith("scores: PSI ") for a in silent.alerts)


# ---------------------------------------------------------------------------
# The defaults on the real data (figures in docs/stages/deploy-monitor-retrain.md)
# ---------------------------------------------------------------------------


def daily(dataset):
    for _, rows in dataset.frame.groupby(dataset.frame[dataset.time].dt.floor("1D")).indices.items():
        yield dataset.derive(dataset.frame.iloc[rows])


def input_alerts(report) -> list[str]:
    return [a for a in report.alerts if not a.startswith(("alert rate", "scores:"))]


def test_defaults_flag_smd_every_day_and_asd_not_every_day(asd, smd):
    version, _, train, monitored = smd
    days = [watch(version, day, train) for day in daily(monitored)]
    assert len(days) == 9 and all(input_alerts(r) for r in days)
    assert all(r.metrics["drift_max_ks"] > 0.99 and r.metrics["series_drifted"] == 1 for r in days)
    assert all(any(a.startswith("series machine-1-6: KS ") for a in r.alerts) for r in days)

    version, _, train, monitored = asd
    days = [watch(version, day, train) for day in daily(monitored)]
    assert len(days) == 8
    quiet = [r for r in days if not input_alerts(r)]
    assert len(quiet) == len(days)  # measured: pooled KS <= 0.42, PSI <= 2.31; seen servers' KS <= 0.60
    assert max(r.metrics["drift_max_ks"] for r in days) < 0.5


def test_options_are_checked_and_named_features_must_exist(asd):
    version, _, train, monitored = asd
    with pytest.raises(ValueError):
        drift_monitor.Options(series_ks_threshold=1.5)
    with pytest.raises(ValueError):
        drift_monitor.Options(alert_rate_ratio=1.0)
    from opsloop import DataError

    with pytest.raises(DataError, match="nope"):
        watch(version, monitored, train, features=["m01", "nope"])
    only = watch(version, monitored, train, features=["m01"], max_series=0)
    assert features(only) == ["m01"] and not any(k.startswith("series_") for k in only.metrics)
    assert math.isfinite(only.metrics["psi[m01]"])


def test_feature_alerts_are_bounded_worst_first_with_the_old_conventional_limits(asd):
    """PSI 0.25 / KS 0.1 (the defaults before issue 9) on the servers the model never saw: most features drift."""
    version, _, train, monitored = asd
    unseen = monitored.derive(monitored.frame[monitored.frame["entity"].isin(["omi-9", "omi-12"])])

    report = watch(version, unseen, train, psi_threshold=0.25, ks_threshold=0.1, max_series=0)

    drifted = int(report.metrics["drifted"])
    assert drifted > 10 and len(report.alerts) == 11  # ten one by one, then the rest in one
    assert report.alerts[-1].startswith(f"{drifted - 10} more feature(s) drifted: ")
    assert re.match(r"m\d\d: PSI \d+\.\d{3} (>|<=) 0\.25, KS 0\.\d{3} (>|<=) 0\.1: distribution shifted",
                    report.alerts[0]), report.alerts[0]
    psis = [report.metrics[f"psi[{a[:3]}]"] for a in report.alerts[:10]]
    assert psis == sorted(psis, reverse=True) and psis[0] == report.metrics["drift_max_psi"]
