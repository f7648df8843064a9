"""`dask-batch`: partitioned Parquet scored on the cluster gives the scores of scoring the whole input at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")

from opsloop.testing import invoke  # noqa: E402 - the kit


@pytest.fixture(scope="module")
def version(dask_run: tuple[Path, dict[str, Any]]) -> Any:
    """The run's registered version, loaded from its bundle, with a RunContext to deploy it in."""
    from opsloop.bundle import read_bundle
    from opsloop.config import read
    from opsloop.manager import PluginManager
    from opsloop.types import ModelVersion, RunContext

    path, run = dask_run
    ref = run["versions"][0]["ref"]
    shown = invoke(["models", "show", ref, "--json"], path).assert_ok().json
    mv = ModelVersion(name=shown["name"], version=shown["version"], created_at=shown["created_at"],
                      path=Path(shown["path"]), digest=shown["digest"])
    model = read_bundle(mv.path, PluginManager(), ref=ref, digest=mv.digest)
    context = RunContext(run_id="t", workdir=path, model_name=mv.name, seed=0, config=read(workdir=path))
    return mv, model, context


@pytest.fixture(scope="module")
def by_day(asd_monitor: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The monitoring period as one Parquet file per day (every server in each), named in time order: every
    partition boundary cuts every series' last hour."""
    directory = tmp_path_factory.mktemp("by-day") / "rows"
    directory.mkdir()
    days = asd_monitor["timestamp"].dt.floor("D")
    for day, rows in asd_monitor.drop(columns=["label"]).groupby(days):
        rows.to_parquet(directory / f"{day:%Y-%m-%d}.parquet", index=False)
    return directory


def _scored(location: str) -> Any:
    import pandas as pd

    frame = pd.read_parquet(location)
    return frame.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)


def test_the_runs_dask_batch_equals_the_batch_target(dask_run):
    import numpy as np

    _, run = dask_run
    batch, on_dask = run["deployments"]
    assert (batch["target"], on_dask["target"]) == ("batch", "dask-batch")
    assert on_dask["details"]["partitions"] == 9 and on_dask["details"]["carry_seconds"] == 3600
    a, b = _scored(batch["location"]), _scored(on_dask["location"])
    assert len(a) == len(b) == 8640
    assert np.array_equal(a["score"].to_numpy(), b["score"].to_numpy())
    assert np.array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())


def test_day_partitions_score_as_the_whole_period_at_once(version, by_day, asd_monitor, scheduler, tmp_path):
    import numpy as np

    from opsloop_dask import batch
    from opsloop_dask.batch import Options

    mv, model, context = version
    whole = model.predict(asd_monitor.drop(columns=["label"]))  # one frame: every window sees its whole past
    out = tmp_path / "scored"
    deployed = batch.deploy(version=mv, model=model, dataset=None, run=context,
                            options=Options(scheduler=scheduler, input=str(by_day), output=str(out)))
    assert deployed.details["partitions"] == len(list(by_day.glob("*.parquet"))) > 2
    scored = _scored(deployed.location)
    assert len(scored) == len(whole) == len(asd_monitor)
    assert np.array_equal(scored["score"].to_numpy(), whole["score"].to_numpy())
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(len(list(out.iterdir())))]

    # Without the carried rows, the first hour of each day would lose its past: the carry is what makes it equal.
    cut = batch.deploy(version=mv, model=model, dataset=None, run=context,
                       options=Options(scheduler=scheduler, input=str(by_day), output=str(out), carry_rows=0))
    differ = _scored(cut.location)["score"].to_numpy() != whole["score"].to_numpy()
    assert differ.any()
    days = asd_monitor["timestamp"].dt.floor("D")
    first_hour = (asd_monitor["timestamp"] - days < np.timedelta64(1, "h")).to_numpy()
    assert not (differ & ~first_hour).any()


def test_partitions_out_of_time_order_are_refused_naming_the_partition(version, by_day, scheduler, tmp_path):
    from opsloop.errors import DataError
    from opsloop_dask import batch
    from opsloop_dask.batch import Options

    mv, model, context = version
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    files = sorted(by_day.glob("*.parquet"))
    for name, source in zip(["a", "b", "c", "d", "e", "f", "g"], [files[1], files[0], *files[2:]], strict=False):
        (shuffled / f"{name}.parquet").write_bytes(source.read_bytes())
    out = tmp_path / "never"
    with pytest.raises(DataError, match=r"dask-batch: partition 1 of .* goes back in time within series omi-1"):
        batch.deploy(version=mv, model=model, dataset=None, run=context,
                     options=Options(scheduler=scheduler, input=str(shuffled), output=str(out)))
    assert not out.exists() and not list(tmp_path.glob(".never.*"))


def test_missing_columns_and_inputs_are_one_line_errors(version, by_day, scheduler, tmp_path):
    from opsloop.errors import DataError
    from opsloop_dask import batch
    from opsloop_dask.batch import Options

    mv, model, context = version
    with pytest.raises(DataError, match="dask-batch: input not found: .*nowhere"):
        batch.deploy(version=mv, model=model, dataset=None, run=context,
                     options=Options(scheduler=scheduler, input=str(tmp_path / "nowhere")))
    thin = tmp_path / "thin.parquet"
    import pandas as pd

    pd.read_parquet(sorted(by_day.glob("*.parquet"))[0]).drop(columns=["m05"]).to_parquet(thin)
    with pytest.raises(DataError, match=r"dask-batch: .*thin.parquet lacks column\(s\) m05"):
        batch.deploy(version=mv, model=model, dataset=None, run=context,
                     options=Options(scheduler=scheduler, input=str(thin)))
