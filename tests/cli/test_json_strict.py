"""Every `--json` output is standard JSON: a figure that is not a number (PR AUC on rows of one class) is `null`,
never `NaN`, which `jq` and most JSON parsers refuse."""

from __future__ import annotations

import json
import math

import numpy as np

from opsloop.cli._render import strict


def _refuse_constants(name: str) -> None:
    raise AssertionError(f"not standard JSON: {name}")


def _nulls(data, path=""):
    """Paths of the nulls in `data`."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _nulls(v, f"{path}[{i}]")]
    return [path] if data is None else []


def test_run_json_is_standard_json_with_null_for_figures_that_are_not_numbers(opsloop_project, opsloop_console):
    opsloop_project(small=True)
    out = opsloop_console("run", "--json").assert_ok().stdout
    data = json.loads(out, parse_constant=_refuse_constants)
    # the small set's monitored window has incidents, but one of its per-series figures has no positive rows
    # (recall, ROC AUC, PR AUC there are not numbers): they are null, and the defined figures stay numbers
    nulls = _nulls(data)
    assert any(p.endswith(("pr_auc", "recall", "roc_auc")) for p in nulls), nulls
    monitored = data["monitor"][0]["metrics"]
    assert 0 < monitored["pr_auc"] <= 1


def test_strict_turns_every_non_finite_float_into_null_and_keeps_the_rest():
    data = {"a": float("nan"), "b": [np.float64("inf"), np.float32("nan"), np.float32(0.5), np.int64(3)],
            "c": (1.5, -math.inf), "d": {"e": "NaN", "f": None, "g": True}}
    assert strict(data) == {"a": None, "b": [None, None, 0.5, 3], "c": [1.5, None],
                            "d": {"e": "NaN", "f": None, "g": True}}
    json.dumps(strict(data), allow_nan=False)
