"""opsloop's own built-ins pass the conformance suites a vendor runs on its plugin (docs/conformance.md).

One line per built-in; postgres-store runs on the test server of store_contract.py (OPSLOOP_TEST_PG, or
tests/services/postgres.sh), skipped with the reason when there is none.
"""

import pytest
import store_contract  # registered by conftest.py: the PostgreSQL test server, shared with the store tests

from opsloop.testing.conformance import DeploySuite, MonitorSuite, PolicySuite, PreprocessSuite, SourceSuite, StoreSuite, TrainerSuite


class TestXGBoost(TrainerSuite, plugin="xgboost", options={"n_estimators": 30, "n_jobs": 1}): pass
class TestSklearn(TrainerSuite, plugin="sklearn", options={"estimator": "sklearn.ensemble.RandomForestClassifier",
                                                           "params": {"n_estimators": 20, "max_depth": 6}}): pass
class TestIsolationForest(TrainerSuite, plugin="isolation-forest", options={"n_estimators": 50}): pass
class TestEnsemble(TrainerSuite, plugin="ensemble",
                   config={"train": {"isolation-forest": {"n_estimators": 50}}}): pass


class TestSchemaCheck(PreprocessSuite, plugin="schema-check"): pass
class TestImpute(PreprocessSuite, plugin="impute", options={"add_indicator": True}): pass
class TestScale(PreprocessSuite, plugin="scale", options={"method": "robust"}): pass
class TestClip(PreprocessSuite, plugin="clip"): pass
class TestRollingFeatures(PreprocessSuite, plugin="rolling-features", before=["impute"]): pass
class TestLabelHorizon(PreprocessSuite, plugin="label-horizon", options={"horizon": 6}): pass


class TestQualityMonitor(MonitorSuite, plugin="quality-monitor"): pass
class TestDriftMonitor(MonitorSuite, plugin="drift-monitor"): pass
class TestEstimateMonitor(MonitorSuite, plugin="estimate-monitor"): pass
class TestSchemaCheckMonitor(MonitorSuite, plugin="schema-check"): pass


class TestThresholdPolicy(PolicySuite, plugin="threshold-policy"): pass


class TestLocalStore(StoreSuite, plugin="local-store"): pass


class TestPostgresStore(StoreSuite, plugin="postgres-store", foreign_uri=".opsloop"):
    @pytest.fixture
    def store_uri(self, tmp_path):
        backend = store_contract.PostgresBackend(store_contract.require_pg())
        yield backend.uri(tmp_path / "bundles")
        backend.cleanup()


class TestFilesSource(SourceSuite, plugin="files", source="telemetry.csv"): pass


#: The embedded ASD set cut to the small set's servers and days, so that its run takes seconds.
SMALL_ASD = "entity in ['omi-1', 'omi-9', 'omi-10'] and timestamp >= '2024-01-03'"


class TestEmbeddedSource(SourceSuite, plugin="embedded", source="embedded:asd",
                         data={"train": f"{SMALL_ASD} and timestamp < '2024-01-09'",
                               "monitor": f"{SMALL_ASD} and timestamp >= '2024-01-09' and timestamp < '2024-01-13'"}):
    pass


class TestBatchDeploy(DeploySuite, plugin="batch"): pass
class TestLocalHttp(DeploySuite, plugin="local-http", options={"port": 0}): pass


# -- the suites themselves: they fail on plugins that break the contract, and take only their keywords ----------

#: A vendor's test module: plugins that break one promise each, run through the suites with one line apiece.
BROKEN = '''
import math
import pickle
import types

from opsloop import DeploymentStatus, Deployment, MonitorReport, Preprocessed, RetrainDecision, TrainedModel, hookimpl
from opsloop.testing.conformance import DeploySuite, MonitorSuite, PolicySuite, PreprocessSuite, TrainerSuite


def plugin(**hooks):
    module = types.ModuleType("broken")
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    return module


def pickling_train(dataset, options, run):  # no params recorded, saved with pickle
    from sklearn.linear_model import LogisticRegression
    model = LogisticRegression(max_iter=300).fit(dataset.X.fillna(0), dataset.y)
    return TrainedModel(estimator=model, flavor="pickled")


def pickling_save(model, path):
    if model.flavor != "pickled":
        return None
    (path / "model.pkl").write_bytes(pickle.dumps(model.estimator))
    return ["model.pkl"]


def pickling_load(flavor, path):
    return pickle.loads((path / "model.pkl").read_bytes()) if flavor == "pickled" else None


def windowed_in_place(dataset, state, options, run):  # mutates its input, reads the past without window_reach
    frame = dataset.frame
    frame["m01"] = frame.groupby("entity")["m01"].transform(lambda s: s.rolling(3, min_periods=1).mean())
    return Preprocessed(dataset=dataset.derive(frame), state={"window": 3})


def infinite_monitor(current):  # an inf figure; a bare KeyError when labels have not arrived
    if current.frame[current.target].isna().all():
        raise KeyError(current.target)
    return MonitorReport(rows=len(current), metrics={"f1": math.inf})


def eager_policy(reports):  # retrains on anything
    return RetrainDecision(retrain=True, reasons=("always",))


def sticky_deploy(version):  # says deployed whatever happened
    return Deployment(target="sticky", model=version.ref, location="nowhere")


def sticky_status(model_name):
    return DeploymentStatus(target="sticky", model=model_name, deployed=True, version=f"{model_name}:1")


def sticky_undeploy(model_name):
    return DeploymentStatus(target="sticky", model=model_name, deployed=False)


class TestPickling(TrainerSuite, plugin="pickling", register=plugin(
        train=pickling_train, save_model=pickling_save, load_model=pickling_load)): pass
class TestWindowed(PreprocessSuite, plugin="windowed", register=plugin(preprocess=windowed_in_place)): pass
class TestInfinite(MonitorSuite, plugin="infinite", register=plugin(monitor=infinite_monitor)): pass
class TestEager(PolicySuite, plugin="eager", register=plugin(decide_retrain=eager_policy)): pass
class TestSticky(DeploySuite, plugin="sticky", register=plugin(
        deploy=sticky_deploy, deploy_status=sticky_status, undeploy=sticky_undeploy)): pass
'''


@pytest.mark.slow
def test_the_suites_fail_plugins_that_break_the_contract(tmp_path):
    """Each broken promise fails the check that names it, and only that one (pytest in a subprocess, as a
    vendor runs it)."""
    import re
    import subprocess
    import sys

    (tmp_path / "test_broken.py").write_text(BROKEN, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
                           "--import-mode=importlib", "-W", "ignore::DeprecationWarning", "test_broken.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    failed = set(re.findall(r"^FAILED test_broken.py::(\w+::\w+)", proc.stdout, re.MULTILINE))
    assert failed == {
        "TestPickling::test_fit_returns_a_trained_model_with_flavor_task_and_params",
        "TestPickling::test_bundle_holds_no_pickle_and_loads_without_unpickling",
        "TestPickling::test_scores_the_same_rows_identically_after_the_round_trip",
        "TestWindowed::test_does_not_mutate_its_input",
        "TestWindowed::test_a_later_piece_scores_as_in_the_whole_frame",
        "TestWindowed::test_a_version_with_it_serves_as_it_replays",
        "TestInfinite::test_returns_a_report_of_named_figures",
        "TestInfinite::test_labels_not_arrived_yet",
        "TestInfinite::test_a_short_period",
        "TestEager::test_keeps_the_model_on_healthy_reports",
        "TestEager::test_unmeasured_figures",
        "TestSticky::test_status_of_a_model_never_deployed",
        "TestSticky::test_deploy_status_undeploy_status",
        "TestSticky::test_a_model_name_that_is_not_a_name",
    }, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert re.search(r"14 failed, 18 passed", proc.stdout), proc.stdout[-2000:]


def test_suite_bases_are_not_collected_and_keywords_are_checked():
    """A suite base is never a test class; a subclass naming a plugin is; a misspelt keyword is a TypeError
    naming the ones the suite takes; SourceSuite needs a source."""
    from opsloop.testing.conformance import SourceSuite, Suite

    for suite in (TrainerSuite, PreprocessSuite, MonitorSuite, PolicySuite, DeploySuite, StoreSuite, SourceSuite,
                  Suite):
        assert suite.__test__ is False
    assert TestXGBoost.__test__ is True and TestXGBoost.plugin == "xgboost"
    assert TestXGBoost.options == {"n_estimators": 30, "n_jobs": 1}
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) optoins .* options"):
        type("TestTypo", (TrainerSuite,), {}, plugin="xgboost", optoins={})
    with pytest.raises(TypeError, match="needs source="):
        type("TestNoSource", (SourceSuite,), {}, plugin="files")
