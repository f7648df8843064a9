"""`[data] sensitive` on a partitioned source (docs/scale.md, docs/data.md): its columns are checked against the
partitions' columns as a frame's are (issue 14: a misspelt one would leave the real column where rows are kept),
with the same one-line ConfigError naming the column and the closest one. The source is a real engine of
partitions (`opsloop.partitions.InProcessEngine`: ASD, one pandas frame per day), no Dask needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from opsloop import hookimpl
from opsloop import partitions as P

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SMALL  # noqa: E402


class DaySource(P.InProcessEngine):
    """ASD as one partition per day; its own engine (`map_partitions`)."""

    @hookimpl
    def load_data(self, source, options, data, workdir):
        from opsloop import datasets

        asd = datasets.load("asd").sort_values(["timestamp", "entity"], kind="stable")
        return P.FrameList(g.reset_index(drop=True) for _, g in asd.groupby(asd.timestamp.dt.date, sort=True))


def _config(**data) -> dict:
    config = json.loads(json.dumps(SMALL))
    config["data"].update({"source": "days:asd", "plugin": "days", **data})
    return config


def test_a_misspelt_sensitive_column_of_a_partitioned_source_is_one_line_naming_the_closest(opsloop_project,
                                                                                           hook_recorder):
    project = opsloop_project(config=_config(sensitive=["m3"]), plugins={"days": DaySource()})
    for command in ("run", "validate"):
        result = project.run(command)
        result.assert_error("[data.sensitive]", "sensitive column 'm3' is not in days:asd (22 columns)",
                            'did you mean "m13"?')
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]  # one error line, no traceback
        assert line.startswith("error: config error:") and "Traceback" not in result.stderr
    # refused when the partitions are first looked at: nothing fitted, nothing registered
    assert not hook_recorder.named("fit_partitions") and not hook_recorder.named("train")
    assert project.run("models", "list", "--json").assert_ok().json == []


def test_a_sensitive_column_the_partitions_have_passes_the_check(opsloop_project):
    """A correct name is not refused: the partitions are read and the run reaches the trainer check (a trainer
    that takes one frame is refused only after the data and its columns were accepted)."""
    project = opsloop_project(config=_config(sensitive=["m03"]), plugins={"days": DaySource()})
    project.run("run").assert_error('trainer "xgboost"', "partitioned", "dask-xgboost")
