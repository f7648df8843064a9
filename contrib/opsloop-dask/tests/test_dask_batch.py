"""`dask-batch`: partitioned Parquet scored on the cluster gives the scores of scoring the whole input at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opsloop_dask", reason="opsloop-dask is not installed (pip install -e ./contrib/opsloop-dask)")

from opsloop.testing import invoke  # noqa: E402 - the kit


@pytest.fixture(scope="module")
def version(dask_run: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The run's registered version, loaded from its bundle, with a RunContext to deploy it in (a working
    directory of its own: the deploys here are not recorded in the run's project)."""
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
    context = RunContext(run_id="t", workdir=tmp_path_factory.mktemp("deploys"), model_name=mv.name, seed=0,
                         config=read(workdir=path))
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


# -- what it wrote: opsloop deploy status / deploy remove ------------------------------------------------------------


@pytest.fixture
def project(scheduler: str, tmp_path: Path) -> Path:
    """A working directory whose config deploys with `dask-batch` on the test cluster (nothing deployed yet)."""
    from opsloop.testing import to_toml

    path = tmp_path / "project"
    path.mkdir()
    config = {"project": {"name": "asd-anomaly"},
              "deploy": {"plugins": ["dask-batch"], "dask-batch": {"scheduler": scheduler}}}
    (path / "opsloop.toml").write_text(to_toml(config), encoding="utf-8")
    return path


def _deploy(version: Any, workdir: Path, by_day: Path, scheduler: str, **options: Any) -> Any:
    """The run's version scored by `dask-batch` from `by_day` in `workdir`, as a deploy of `opsloop run` there."""
    import uuid

    from opsloop.config import read
    from opsloop.types import RunContext
    from opsloop_dask import batch
    from opsloop_dask.batch import Options

    mv, model, _ = version
    run = RunContext(run_id=uuid.uuid4().hex[:12], workdir=workdir, model_name=mv.name,
                     config=read(workdir=workdir))
    return batch.deploy(version=mv, model=model, dataset=None, run=run,
                        options=Options(scheduler=scheduler, input=str(by_day), **options))


def _target(result: Any) -> dict[str, Any]:
    (row,) = [r for r in result.assert_ok().json["targets"] if r["target"] == "dask-batch"]
    return row


def test_deploy_status_reports_the_runs_dask_batch_directory(dask_run):
    path, run = dask_run
    on_dask = run["deployments"][1]
    row = _target(invoke(["deploy", "status", "--json"], path))
    assert row["deployed"] is True and row["version"] == on_dask["model"] == run["versions"][0]["ref"]
    assert row["location"] == on_dask["location"]
    assert row["details"]["files"] == on_dask["details"]["files"] == len(list(Path(on_dask["location"]).iterdir()))
    assert row["details"]["rows"] == 8640 and row["details"]["partitions"] == 9
    table = invoke(["deploy", "status"], path).assert_ok().stdout
    assert "dask-batch" in table and "does not report status" not in table


def test_deploy_remove_deletes_exactly_what_it_wrote(version, by_day, scheduler, project):
    """Deploys into two directories (the first twice); status names the newer, then a missing file; remove
    deletes the recorded files, the directory they leave empty and the record, and leaves a file it did not
    write, with its folder (which a redeploy keeps too)."""
    import os

    assert "nothing deployed for asd-anomaly" in invoke(["deploy", "remove"], project).assert_ok().stdout
    assert not (project / ".opsloop").exists()  # asking created nothing (no record, no lock)
    first = _deploy(version, project, by_day, scheduler)
    assert first.location == str(project / ".opsloop" / "predictions" / "asd-anomaly-v1")
    (Path(first.location) / "notes.txt").write_text("not dask-batch's", encoding="utf-8")
    first = _deploy(version, project, by_day, scheduler)  # a redeploy replaces its files, keeps the notes
    assert (Path(first.location) / "notes.txt").read_text(encoding="utf-8") == "not dask-batch's"
    second = _deploy(version, project, by_day, scheduler, output=".opsloop/predictions/again")
    ours = sorted(str(p) for p in Path(first.location).glob("part-*")) + sorted(
        str(p) for p in Path(second.location).iterdir())
    assert len(ours) == 2 * first.details["files"] == 16

    row = _target(invoke(["deploy", "status", "--json"], project))
    assert (row["deployed"], row["version"], row["location"]) == (True, version[0].ref, second.location)
    assert sorted(row["details"]["outputs"]) == sorted([first.location, second.location])
    gone = Path(second.location) / "part-00003.parquet"
    gone.unlink()
    row = _target(invoke(["deploy", "status", "--json"], project))
    assert row["deployed"] is False and row["details"]["missing"] == "1 of 8 files (part-00003.parquet)"
    assert "missing 1 of 8 files" in invoke(["deploy", "status"], project).assert_ok().stdout

    row = _target(invoke(["deploy", "remove", "--json"], project))
    record = project / ".opsloop" / "deploy" / "dask-batch" / "asd-anomaly.json"
    assert sorted(row["removed"]) == sorted([*(p for p in ours if p != str(gone)), second.location, str(record)])
    assert row["details"]["already_gone"] == [str(gone)] and row["version"] == version[0].ref
    assert os.listdir(first.location) == ["notes.txt"] and not Path(second.location).exists()
    assert not record.exists()

    row = _target(invoke(["deploy", "status", "--json"], project))
    assert row["deployed"] is False and row["version"] is None
    assert "nothing deployed for asd-anomaly" in invoke(["deploy", "remove"], project).assert_ok().stdout


def test_deploy_remove_refuses_a_recorded_path_outside_where_it_writes(version, by_day, scheduler, project,
                                                                       tmp_path):
    """A record edited to name a directory elsewhere, a path out of the directory, or a link to elsewhere: one
    line naming the plugin and the path, exit 1, and nothing deleted (not even what it did write)."""
    import json
    import os

    deployed = _deploy(version, project, by_day, scheduler)
    ours = sorted(Path(deployed.location).iterdir())
    record = project / ".opsloop" / "deploy" / "dask-batch" / "asd-anomaly.json"
    honest = json.loads(record.read_text(encoding="utf-8"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "part-00000.parquet").write_bytes(ours[0].read_bytes())
    link = project / ".opsloop" / "predictions" / "link"
    link.symlink_to(elsewhere)
    for path, files, says in [(str(elsewhere), ["part-00000.parquet"], "it is outside where this target writes"),
                              (deployed.location, ["../../../opsloop.toml"], "not a file name in that directory"),
                              (str(link), ["part-00000.parquet"], "it is outside where this target writes")]:
        forged = {**honest, "outputs": [{"path": path, "files": files, "version": "asd-anomaly:1"},
                                        *honest["outputs"]]}
        record.write_text(json.dumps(forged), encoding="utf-8")
        result = invoke(["deploy", "remove"], project)
        result.assert_error('"dask-batch"', "refusing to remove", says, "nothing was removed")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert sorted(Path(deployed.location).iterdir()) == ours and record.exists()
        assert (elsewhere / "part-00000.parquet").exists() and (project / "opsloop.toml").exists()
    record.write_text(json.dumps(honest), encoding="utf-8")
    assert _target(invoke(["deploy", "remove", "--json"], project))["removed"]
    assert not os.path.exists(deployed.location)


def test_two_deploys_of_one_model_at_once_keep_both_entries(version, by_day, scheduler, project):
    """Two deploys of the model on the cluster at the same time, into two directories: both end in the record."""
    import threading

    start = threading.Barrier(2)
    done: dict[str, Any] = {}

    def deploy(name: str) -> None:
        start.wait()
        done[name] = _deploy(version, project, by_day, scheduler, output=f".opsloop/predictions/{name}")

    threads = [threading.Thread(target=deploy, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(done) == ["one", "two"]
    row = _target(invoke(["deploy", "status", "--json"], project))
    assert row["deployed"] is True
    assert sorted(row["details"]["outputs"]) == sorted(d.location for d in done.values())


def test_an_unreadable_record_is_kept_aside_by_the_next_deploy(version, by_day, scheduler, project):
    """Status and remove refuse a record they cannot read in one line; the next deploy moves it aside (it may
    name files only it knows) and starts a new one."""
    record = project / ".opsloop" / "deploy" / "dask-batch" / "asd-anomaly.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json", encoding="utf-8")
    for command in (["deploy", "status"], ["deploy", "remove"]):
        invoke(command, project).assert_error('"dask-batch"', "cannot read the deploy record", str(record))
    _deploy(version, project, by_day, scheduler)
    assert record.with_name("asd-anomaly.json.unreadable").read_text(encoding="utf-8") == "{not json"
    assert _target(invoke(["deploy", "status", "--json"], project))["deployed"] is True


#: Each process commits this many entries of its own to one model's record, all at once with the others.
COMMITS = 40
WRITER = """
import sys
from pathlib import Path
from opsloop.types import RunContext
from opsloop_dask import record

workdir, tag = Path(sys.argv[1]), sys.argv[2]
run = RunContext(run_id=tag, workdir=workdir, model_name="m", config=None)
for i in range(int(sys.argv[3])):
    out = workdir / ".opsloop" / "predictions" / f"{tag}-{i}"
    staged = out.with_name(f".{out.name}.0.tmp")
    staged.mkdir(parents=True)
    record.commit(workdir, "m", {"path": str(out), "files": [], "version": "m:1"}, run, staged,
                  put=lambda: staged.rename(out))
"""


def test_records_written_by_processes_at_once_lose_no_entry(tmp_path):
    """Three processes each committing deploys to one model's record at the same time: every entry is there
    (without the lock, read-modify-write loses some)."""
    import subprocess
    import sys

    from opsloop_dask import record

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag, str(COMMITS)],
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b", "c")]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    entries = record.records(tmp_path).read("m")
    assert len(entries) == 3 * COMMITS and not any("pending" in e for e in entries)
    assert {Path(e["path"]).name for e in entries} == {f"{t}-{i}" for t in "abc" for i in range(COMMITS)}


KILLED = """
import os, sys
from pathlib import Path
from opsloop.types import RunContext
from opsloop_dask import record

workdir, part = Path(sys.argv[1]), Path(sys.argv[2])
out = workdir / ".opsloop" / "predictions" / "asd-anomaly-v1"
staged = out.with_name(f".{out.name}.dead.tmp")
staged.mkdir(parents=True)
(staged / "part-00000.parquet").write_bytes(part.read_bytes())
run = RunContext(run_id="killed", workdir=workdir, model_name="asd-anomaly", config=None)
record.commit(workdir, "asd-anomaly", {"path": str(out), "files": ["part-00000.parquet"], "version": "asd-anomaly:1"},
              run, staged, put=lambda: os._exit(9))
"""


def test_a_deploy_killed_before_placing_its_directory_is_unfinished_and_removed(by_day, project):
    """A process killed between recording its entry and putting its directory in place: status says unfinished
    (not deployed), remove deletes its staged files; nothing is left that the record does not name."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED, str(project), str(sorted(by_day.iterdir())[0])],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 9, proc.stderr
    staged = project / ".opsloop" / "predictions" / ".asd-anomaly-v1.dead.tmp"
    row = _target(invoke(["deploy", "status", "--json"], project))
    assert row["deployed"] is False and "has not put" in row["details"]["unfinished"] and str(staged) in \
        row["details"]["unfinished"]
    row = _target(invoke(["deploy", "remove", "--json"], project))
    assert str(staged / "part-00000.parquet") in row["removed"] and str(staged) in row["removed"]
    assert not staged.exists() and not list((project / ".opsloop" / "predictions").iterdir())


def test_a_directory_another_model_wrote_last_is_taken_over(version, by_day, scheduler, project):
    """Another model's record names the directory this deploy replaces: the entry moves to this model, so the
    other model's remove deletes nothing of it."""
    from opsloop.types import RunContext
    from opsloop_dask import record

    shared = project / ".opsloop" / "predictions" / "shared"
    staged = shared.with_name(".shared.x.tmp")
    staged.mkdir(parents=True)
    (staged / "part-00000.parquet").write_bytes(sorted(by_day.iterdir())[0].read_bytes())
    other = RunContext(run_id="other", workdir=project, model_name="other", config=None)
    record.commit(project, "other", {"path": str(shared), "files": ["part-00000.parquet"], "version": "other:1"},
                  other, staged, put=lambda: staged.rename(shared))
    assert record.status(project, "other").deployed is True

    _deploy(version, project, by_day, scheduler, output=".opsloop/predictions/shared")
    assert record.status(project, "other").deployed is False
    assert record.remove(project, "other", None, other).details["removed"] == []
    assert not (project / ".opsloop" / "deploy" / "dask-batch" / "other.json").exists()  # emptied: deleted
    assert len(list(shared.iterdir())) == 8
    assert _target(invoke(["deploy", "status", "--json"], project))["location"] == str(shared)


#: A real `dask-batch` deploy in its own process, on the session's cluster, killed with SIGKILL inside its
#: directory swap: `python -c SWAP WORKDIR VERSION_JSON SCHEDULER INPUT WHEN`. WHEN "aside": just after the
#: previous output was moved aside (`.NAME.*.old`), before the new one took its place; "swap": just after.
SWAP = """
import json, os, signal, sys
from pathlib import Path
from opsloop.bundle import read_bundle
from opsloop.config import read
from opsloop.manager import PluginManager
from opsloop.types import ModelVersion, RunContext
from opsloop_dask import batch

workdir, shown, scheduler, source, when = Path(sys.argv[1]), json.loads(sys.argv[2]), *sys.argv[3:]
mv = ModelVersion(name=shown["name"], version=shown["version"], created_at=shown["created_at"],
                  path=Path(shown["path"]), digest=shown["digest"])
model = read_bundle(mv.path, PluginManager(), ref=mv.ref, digest=mv.digest)
output = workdir / ".opsloop" / "predictions" / f"{mv.name}-v{mv.version}"
real = os.replace

def replace(src, dst):
    real(src, dst)
    if (when == "aside" and str(dst).endswith(".old")) or (when == "swap" and str(dst) == str(output)):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
run = RunContext(run_id="killed", workdir=workdir, model_name=mv.name, config=read(workdir=workdir))
batch.deploy(version=mv, model=model, dataset=None, run=run,
             options=batch.Options(scheduler=scheduler, input=source))
"""


@pytest.mark.parametrize("when, then", [("aside", "remove"), ("swap", "remove"), ("swap", "redeploy")])
def test_a_deploy_killed_inside_its_directory_swap_leaves_nothing_behind(version, by_day, scheduler, project,
                                                                         when, then):
    """The previous output moved aside to `.NAME.*.old` and the process killed (before or after the new
    directory took its place): the record names the aside directory, so `deploy remove` deletes it (or the
    next deploy does), and the file that was not dask-batch's ends in the output directory, as a finished
    swap leaves it. Before, the `.old` directory and its part files stayed, named by no record."""
    import json
    import signal
    import subprocess
    import sys

    first = _deploy(version, project, by_day, scheduler)
    (Path(first.location) / "notes.txt").write_text("not dask-batch's", encoding="utf-8")
    mv = version[0]
    shown = {"name": mv.name, "version": mv.version, "created_at": mv.created_at, "path": str(mv.path),
             "digest": mv.digest}
    proc = subprocess.run([sys.executable, "-c", SWAP, str(project), json.dumps(shown), scheduler, str(by_day),
                           when], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    predictions = project / ".opsloop" / "predictions"
    assert len(list(predictions.glob(".*.old"))) == 1  # the crash happened where it should
    row = _target(invoke(["deploy", "status", "--json"], project))
    assert row["deployed"] is (when == "swap")

    if then == "redeploy":
        _deploy(version, project, by_day, scheduler)
        assert sorted(p.name for p in predictions.iterdir()) == [Path(first.location).name]
        assert _target(invoke(["deploy", "status", "--json"], project))["deployed"] is True
    invoke(["deploy", "remove"], project).assert_ok()
    left = sorted(str(p.relative_to(predictions)) for p in predictions.rglob("*"))
    assert left == [Path(first.location).name, f"{Path(first.location).name}/notes.txt"]
    assert (Path(first.location) / "notes.txt").read_text(encoding="utf-8") == "not dask-batch's"


def test_a_moved_project_removes_what_it_wrote(version, by_day, scheduler, project, tmp_path):
    """Paths inside the working directory are recorded relative to it: after the project moves, remove deletes
    the files in their new place (before, they were absolute and refused as outside); status finds them."""
    import json
    import shutil

    deployed = _deploy(version, project, by_day, scheduler)
    record = project / ".opsloop" / "deploy" / "dask-batch" / "asd-anomaly.json"
    assert json.loads(record.read_text(encoding="utf-8"))["outputs"][0]["path"] == \
        str(Path(".opsloop") / "predictions" / "asd-anomaly-v1")
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    row = _target(invoke(["deploy", "status", "--json"], moved))
    assert row["deployed"] is True and row["location"] == str(moved / Path(deployed.location).relative_to(project))
    row = _target(invoke(["deploy", "remove", "--json"], moved))
    assert len(row["removed"]) == deployed.details["files"] + 2  # the files, their directory, the record
    assert list((moved / ".opsloop" / "predictions").iterdir()) == []
