"""opsloop's own validators and gate pass the conformance suites a vendor runs on theirs (docs/conformance.md),
and the suites fail on plugins that break one promise each."""

import re
import subprocess
import sys

import pytest

from opsloop.testing.conformance import GateSuite, ValidatorSuite


class TestKfold(ValidatorSuite, plugin="kfold", options={"folds": 3}): pass
class TestKfoldGap(ValidatorSuite, plugin="kfold", options={"folds": 2, "gap": 12}): pass
class TestKfoldThreads(ValidatorSuite, plugin="kfold", options={"folds": 3, "n_jobs": 2}): pass
class TestHoldout(ValidatorSuite, plugin="holdout"): pass


class TestChampionChallenger(GateSuite, plugin="champion-challenger", options={"resamples": 200}): pass


# -- the suites fail on plugins that break the contract, and take only their keywords -----------------------------

#: A vendor's test module: validators and gates that break promises, run through the suites with one line apiece.
BROKEN = '''
import numpy as np
import types

from opsloop import DataError, GateVerdict, ValidationReport, hookimpl
from opsloop.bundle import predictions_frame
from opsloop.metrics import for_task
from opsloop.testing.conformance import GateSuite, ValidatorSuite


def plugin(**hooks):
    module = types.ModuleType("broken")
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function))
    return module


def report(dataset, model, test):
    frame = dataset.frame.iloc[test]
    predictions = predictions_frame(model.estimator, model.task, frame[list(model.features)])
    figures = {**for_task(model.task, frame[dataset.target].to_numpy(), predictions), "rows_test": len(test)}
    return ValidationReport(method="broken", folds=(figures,), mean={"roc_auc": figures["roc_auc"]})


def checked(dataset):
    if dataset.target not in dataset.frame.columns:
        raise DataError("no labels")
    if len(dataset.frame) < 10:
        raise DataError("too few rows")
    return len(dataset.frame)


def leaky_validate(dataset, fit):  # trains on every row, then scores the last quarter
    n = checked(dataset)
    return report(dataset, fit(dataset), np.arange(n - n // 4, n))


def shuffled_validate(dataset, fit, run):  # a seeded random split: disjoint, but the future trains
    n = checked(dataset)
    order = np.random.default_rng(run.seed).permutation(n)
    train, test = np.sort(order[: n * 3 // 4]), np.sort(order[n * 3 // 4:])
    return report(dataset, fit(dataset.derive(dataset.frame.iloc[train])), test)


def careless_validate(dataset, fit):  # edits the rows it is given; a bare IndexError on one row
    n = len(dataset.frame)
    if n == 1:
        raise IndexError("single positional indexer is out-of-bounds")
    checked(dataset)
    dataset.frame.iloc[0, dataset.frame.columns.get_loc("m01")] += 1.0
    times = dataset.frame[dataset.time].to_numpy()
    later = times >= np.sort(times)[n * 3 // 4]
    return report(dataset, fit(dataset.derive(dataset.frame[~later])), np.flatnonzero(later))


def eager_gate(champion, challenger):  # always promotes, margin 0, an interval upside down, no word on labels
    return GateVerdict(winner="challenger", metric="pr_auc", champion=0.5, challenger=0.5, margin=0.0,
                       ci=(1.0, 0.0), reasons=("always",))


def noisy_gate(champion, challenger, window):  # the right winner, but an unseeded draw in its figures
    from sklearn.metrics import roc_auc_score

    labels = window.frame[window.target]
    if labels.isna().all() or labels.nunique() < 2:
        raise DataError("the window cannot decide")
    auc = [roc_auc_score(labels, c.predictions["score"]) for c in (champion, challenger)]
    margin = auc[1] - auc[0] + np.random.default_rng().normal(0, 1e-9)
    return GateVerdict(winner="challenger" if margin > 0 else "champion", metric="roc_auc", champion=auc[0],
                       challenger=auc[1], margin=margin, reasons=(f"margin {margin}",))


class TestLeaky(ValidatorSuite, plugin="leaky", register=plugin(validate=leaky_validate)): pass
class TestShuffled(ValidatorSuite, plugin="shuffled", register=plugin(validate=shuffled_validate)): pass
class TestCareless(ValidatorSuite, plugin="careless", register=plugin(validate=careless_validate)): pass
class TestEager(GateSuite, plugin="eager", register=plugin(gate=eager_gate)): pass
class TestNoisy(GateSuite, plugin="noisy", register=plugin(gate=noisy_gate)): pass
'''


@pytest.mark.slow
def test_the_suites_fail_plugins_that_break_the_contract(tmp_path):
    """Each broken promise fails the check that names it, and only that one (pytest in a subprocess, as a
    vendor runs it)."""
    (tmp_path / "test_broken.py").write_text(BROKEN, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
                           "--import-mode=importlib", "-W", "ignore::DeprecationWarning", "test_broken.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    failed = set(re.findall(r"^FAILED test_broken.py::(\w+::\w+)", proc.stdout, re.MULTILINE))
    assert failed == {
        "TestLeaky::test_never_scores_a_row_it_trained_on",
        "TestLeaky::test_folds_train_on_the_past_of_what_they_score",
        "TestShuffled::test_folds_train_on_the_past_of_what_they_score",
        "TestCareless::test_leaves_the_rows_unchanged",
        "TestCareless::test_too_little_data_is_a_one_line_error",
        "TestEager::test_returns_a_verdict_with_figures_and_reasons",
        "TestEager::test_a_clearly_better_challenger_wins",
        "TestEager::test_a_clearly_worse_challenger_loses",
        "TestEager::test_a_window_without_labels_is_a_one_line_data_error",
        "TestEager::test_a_window_of_one_class_is_a_one_line_data_error",
        "TestNoisy::test_the_same_seed_gives_the_same_verdict",
    }, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert re.search(r"11 failed, \d+ passed", proc.stdout), proc.stdout[-2000:]


def test_suite_bases_are_not_collected_and_keywords_are_checked():
    """A suite base is never a test class; a subclass naming a plugin is; a misspelt keyword is a TypeError
    naming the ones the suite takes."""
    assert ValidatorSuite.__test__ is False and GateSuite.__test__ is False
    assert TestKfold.__test__ is True and TestKfold.options == {"folds": 3}
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) time_order .* time_ordered"):
        type("TestTypo", (ValidatorSuite,), {}, plugin="kfold", time_order=False)
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) clear .* clear_cases"):
        type("TestTypo", (GateSuite,), {}, plugin="champion-challenger", clear=False)
