"""The `batch` deploy target's record of the files it wrote (`.opsloop/deploy/batch/<name>.json`), under
concurrency and crashes, and mypy --strict on the two built-in deploy targets.

The concurrency test runs real processes: each scores real ASD rows with a fitted scikit-learn model through
the `batch` plugin's `deploy` hook, many times, all at once (they start together on one line sent to their
stdin), and one of them also runs `undeploy` now and then, while this process reads `deploy_status` without
pause. Afterwards every predictions file on disk must be in the record and every recorded file on disk:
before the record had a lock, two deploys that read it at the same moment each wrote back their own entry
only, and `opsloop deploy remove` then left the other's file behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import opsloop
import opsloop.config
import pandas as pd
import pytest
from opsloop import ModelVersion, PluginCallError, RunContext, datasets
from opsloop.manager import PluginManager
from opsloop.plugins.batch_deploy import Options

ROOT = Path(__file__).resolve().parents[2]
METRICS = [f"m{j:02d}" for j in range(1, 20)]

#: One worker: `python worker.py WORKDIR ROWS.csv FIRST COUNT REMOVE_EVERY [DIE_AT before|after]`. It fits a
#: logistic regression on the rows, prints "ready", waits for a line on stdin, then deploys versions FIRST ..
#: FIRST+COUNT-1 of model "m" (one predictions file each, the default path) and, when REMOVE_EVERY > 0,
#: runs `undeploy` after every REMOVE_EVERY deploys. With DIE_AT, the process kills itself with SIGKILL just
#: before or just after the predictions file of that version is moved into place (the crash the record must
#: survive).
WORKER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path

    import opsloop.config
    import pandas as pd
    from opsloop import Dataset, ModelVersion, RunContext
    from opsloop.bundle import LoadedModel, input_schema
    from opsloop.manager import PluginManager
    from opsloop.plugins.batch_deploy import Options
    from sklearn.linear_model import LogisticRegression

    workdir, rows_csv = Path(sys.argv[1]), sys.argv[2]
    first, count, remove_every = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    die_at, when = (int(sys.argv[6]), sys.argv[7]) if len(sys.argv) > 7 else (None, None)
    rows = pd.read_csv(rows_csv, parse_dates=["timestamp"])
    metrics = [c for c in rows.columns if c.startswith("m")]
    estimator = LogisticRegression(max_iter=1000, class_weight="balanced").fit(rows[metrics], rows["label"])
    pm = PluginManager()
    pm.load("batch")
    run = RunContext(run_id=f"w{first}", workdir=workdir, model_name="m", config=opsloop.config.read(workdir=workdir))
    raw = Dataset.from_frame(rows.head(10), target="label", time="timestamp", series="entity")
    manifest = {"task": "classification", "features": metrics, "input_schema": input_schema(raw), "steps": [],
                "target": "label", "time": "timestamp", "series": "entity"}
    model = LoadedModel(manifest=manifest, estimator=estimator, path=workdir, plugins=pm, run=run, ref="m:1")
    options = Options(input=rows_csv, log_predictions=False)
    if die_at is not None:
        real_replace = os.replace

        def replace(src, dst):  # the crash: SIGKILL next to moving the predictions file into place
            ours = str(dst).endswith(f"m-v{die_at}.parquet")
            if ours and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
            if ours and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)

        os.replace = replace
    print("ready", flush=True)
    sys.stdin.readline()
    for i, n in enumerate(range(first, first + count), 1):
        version = ModelVersion(name="m", version=n, created_at="2024-01-15T00:00:00Z", path=workdir)
        pm.call("batch", "deploy", version=version, model=model, dataset=None, options=options, run=run)
        if remove_every and i % remove_every == 0:
            pm.call("batch", "undeploy", model_name="m", options=options, run=run)
    print("done", flush=True)
''')


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real ASD rows of one server, both classes present."""
    asd = datasets.load("asd")
    server = asd[asd["entity"] == "omi-9"]
    picked = pd.concat([server[server["label"] == 1].head(20), server[server["label"] == 0].head(40)])
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    picked.sort_values("timestamp")[["entity", "timestamp", *METRICS, "label"]].to_csv(path, index=False)
    return path


@pytest.fixture
def pm() -> PluginManager:
    plugins = PluginManager()
    plugins.load("batch")
    return plugins


def _run(workdir: Path) -> RunContext:
    return RunContext(run_id="t", workdir=workdir, model_name="m", config=opsloop.config.read(workdir=workdir))


def _start(tmp_path: Path, rows_csv: Path, *args: int | str) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(WORKER, encoding="utf-8")
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), str(rows_csv), *map(str, args)],
                            cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _ready(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")


def _record(workdir: Path, name: str = "m") -> dict[str, Any]:
    return json.loads((workdir / ".opsloop" / "deploy" / "batch" / f"{name}.json").read_text(encoding="utf-8"))


def _paths(workdir: Path, name: str = "m") -> list[str]:
    """The recorded paths, absolute (recorded relative to the working directory when inside it)."""
    return [str(workdir / f["path"]) for f in _record(workdir, name)["files"]]


def _written(workdir: Path) -> set[str]:
    """The predictions files on disk (temporary files of a write in progress excluded)."""
    return {str(p) for p in (workdir / ".opsloop" / "predictions").glob("*.parquet")}


def test_concurrent_deploys_and_removes_lose_no_entry_and_readers_see_whole_records(tmp_path: Path,
                                                                                    rows_csv: Path,
                                                                                    pm: PluginManager) -> None:
    workers, count = 3, 20
    procs = [_start(tmp_path, rows_csv, 1000 * (w + 1), count, 8 if w == 0 else 0) for w in range(workers)]
    try:
        _ready(procs)
        for proc in procs:  # all at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reads = 0
        run = _run(tmp_path)
        while any(proc.poll() is None for proc in procs):  # a reader: never a half-written record
            status = pm.call("batch", "deploy_status", model_name="m", options=None, run=run)
            assert status.target == "batch"
            reads += 1
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0 and out.strip() == "done", err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    recorded = set(_paths(tmp_path))
    assert recorded == _written(tmp_path), (f"on disk, not recorded: {sorted(_written(tmp_path) - recorded)}; "
                                            f"recorded, not on disk: {sorted(recorded - _written(tmp_path))}")
    assert 0 < len(recorded) < workers * count  # the removes removed something, the deploys after them stayed
    assert reads > 0

    removed = pm.call("batch", "undeploy", model_name="m", options=None, run=_run(tmp_path))
    assert sorted(removed.details["removed"][:-1]) == sorted(recorded)
    assert _written(tmp_path) == set()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_deploy_killed_next_to_placing_its_file_leaves_nothing_remove_does_not_delete(tmp_path: Path,
                                                                                        rows_csv: Path,
                                                                                        pm: PluginManager,
                                                                                        when: str) -> None:
    """SIGKILL just before or just after the predictions file of version 2 is moved into place: the record
    names it (and its temporary file), status says what is there, and remove leaves an empty directory."""
    proc = _start(tmp_path, rows_csv, 1, 3, 0, 2, when)
    try:
        _ready([proc])
        out, err = proc.communicate("go\n", timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    predictions = tmp_path / ".opsloop" / "predictions"
    first, second = str(predictions / "m-v1.parquet"), str(predictions / "m-v2.parquet")
    assert _paths(tmp_path) == [first, second]
    leftovers = sorted(p.name for p in predictions.iterdir())

    status = pm.call("batch", "deploy_status", model_name="m", options=None, run=_run(tmp_path))
    if when == "before":  # the new file never arrived: its temporary file is there, unfinished
        assert leftovers[0].startswith(".m-v2.parquet.") and leftovers[1:] == ["m-v1.parquet"]
        assert status.deployed is False and status.location == second and "unfinished" in status.details
        assert status.details["files"] == [first]
    else:  # it arrived, and is what status reports
        assert leftovers == ["m-v1.parquet", "m-v2.parquet"]
        assert status.deployed is True and status.version == "m:2" and status.details["files"] == [first, second]
        assert len(pd.read_parquet(second)) == 60

    removed = pm.call("batch", "undeploy", model_name="m", options=None, run=_run(tmp_path))
    assert len(removed.details["removed"]) == 3  # two files (one of them temporary, before) and the record
    assert list(predictions.iterdir()) == []


def test_a_redeploy_over_a_killed_one_deletes_its_temporary_file(tmp_path: Path, rows_csv: Path,
                                                                 pm: PluginManager) -> None:
    """Version 2's deploy killed before its file was in place, then version 2 deployed again: the new entry
    replaces the unfinished one, and the dead deploy's temporary file goes with it (nothing names it else)."""
    proc = _start(tmp_path, rows_csv, 1, 3, 0, 2, "before")
    try:
        _ready([proc])
        proc.communicate("go\n", timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    predictions = tmp_path / ".opsloop" / "predictions"
    assert len(list(predictions.glob(".m-v2.parquet.*.tmp"))) == 1
    run = _run(tmp_path)
    _deploy(pm, _model(pm, rows_csv, run), run, "m", 2, input=str(rows_csv))
    assert sorted(p.name for p in predictions.iterdir()) == ["m-v1.parquet", "m-v2.parquet"]
    assert [(f["version"], "pending" in f) for f in _record(tmp_path)["files"]] == [("m:1", False), ("m:2", False)]
    assert pm.call("batch", "deploy_status", model_name="m", options=None, run=run).deployed is True


def _model(pm: PluginManager, rows_csv: Path, run: RunContext) -> Any:
    from opsloop import Dataset
    from opsloop.bundle import LoadedModel, input_schema
    from sklearn.linear_model import LogisticRegression

    rows = pd.read_csv(rows_csv, parse_dates=["timestamp"])
    estimator = LogisticRegression(max_iter=1000, class_weight="balanced").fit(rows[METRICS], rows["label"])
    raw = Dataset.from_frame(rows.head(10), target="label", time="timestamp", series="entity")
    manifest = {"task": "classification", "features": METRICS, "input_schema": input_schema(raw), "steps": [],
                "target": "label", "time": "timestamp", "series": "entity"}
    return LoadedModel(manifest=manifest, estimator=estimator, path=run.workdir, plugins=pm, run=run, ref="x:1")


def _deploy(pm: PluginManager, model: Any, run: RunContext, name: str, number: int, **options: Any) -> Any:
    version = ModelVersion(name=name, version=number, created_at="2024-01-15T00:00:00Z", path=run.workdir)
    return pm.call("batch", "deploy", version=version, model=model, dataset=None,
                   options=Options(log_predictions=False, **options), run=run)


def test_a_shared_output_belongs_to_the_model_that_wrote_it_last(tmp_path: Path, rows_csv: Path,
                                                                  pm: PluginManager) -> None:
    """Two models with one `output`: the second's deploy takes the file over, so the first's remove leaves it."""
    run = _run(tmp_path)
    model = _model(pm, rows_csv, run)
    shared = tmp_path / "out" / "scores.csv"
    _deploy(pm, model, run, "a", 1, input=str(rows_csv), output="out/scores.csv")
    _deploy(pm, model, run, "a", 2, input=str(rows_csv))  # a's own file too
    _deploy(pm, model, run, "b", 1, input=str(rows_csv), output="out/scores.csv")
    assert _paths(tmp_path, "a") == [str(tmp_path / ".opsloop/predictions/a-v2.parquet")]

    gone = pm.call("batch", "undeploy", model_name="a", options=Options(output="out/scores.csv"), run=run)
    assert gone.details["removed"][0].endswith("a-v2.parquet") and shared.is_file()
    status = pm.call("batch", "deploy_status", model_name="b", options=None, run=run)
    assert status.deployed is True and status.version == "b:1" and status.location == str(shared)
    pm.call("batch", "undeploy", model_name="b", options=Options(output="out/scores.csv"), run=run)
    assert not shared.exists()


def test_an_unreadable_record_is_moved_aside_not_overwritten(tmp_path: Path, rows_csv: Path,
                                                             pm: PluginManager) -> None:
    run = _run(tmp_path)
    record = tmp_path / ".opsloop" / "deploy" / "batch" / "m.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"files": [{"path": "/kept/by/hand.parquet"', encoding="utf-8")  # cut short
    with pytest.raises(PluginCallError, match=r"cannot read the deploy record .*m\.json"):
        pm.call("batch", "deploy_status", model_name="m", options=None, run=run)
    _deploy(pm, _model(pm, rows_csv, run), run, "m", 1, input=str(rows_csv))
    assert [f["version"] for f in _record(tmp_path)["files"]] == ["m:1"]
    aside = record.with_name("m.json.unreadable")
    assert aside.read_text(encoding="utf-8") == '{"files": [{"path": "/kept/by/hand.parquet"'


# ---------------------------------------------------------------------------
# mypy --strict on the built-in deploy targets
# ---------------------------------------------------------------------------


def test_the_builtin_deploy_targets_pass_mypy_strict(tmp_path: Path) -> None:
    """plugins/batch_deploy.py and plugins/local_http.py, and core/deployrecord.py (the record `batch` and
    third-party deploy targets keep), checked themselves (tests/core/test_kinds.py checks
    only that the built-ins match their kinds, following imports silently), with the settings a plugin
    author's are: tests/core/typed_plugins/mypy.ini (strict)."""
    import importlib.util

    tree = tmp_path / "path" / "opsloop"  # as test_kinds.py: an editable install hides opsloop from mypy
    tree.mkdir(parents=True)
    spec = importlib.util.find_spec("opsloop")
    assert spec is not None and spec.submodule_search_locations
    for entry in Path(next(iter(spec.submodule_search_locations))).iterdir():
        (tree / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if not (tree / "plugins").exists():
        plugins = importlib.util.find_spec("opsloop.plugins")
        assert plugins is not None and plugins.submodule_search_locations
        (tree / "plugins").symlink_to(next(iter(plugins.submodule_search_locations)), target_is_directory=True)
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                          str(ROOT / "tests" / "core" / "typed_plugins" / "mypy.ini"), "--strict",
                          "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
                          "-m", "opsloop.plugins.batch_deploy", "-m", "opsloop.plugins.local_http",
                          "-m", "opsloop.deployrecord"],
                         cwd=tmp_path, env={"MYPYPATH": str(tree.parent), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("plugin", ["batch", "local-http"])
def test_log_retention_takes_a_duration_or_seconds_and_holds_seconds(plugin: str) -> None:
    """The option's type is what TOML may hold (a duration or a number); the value, seconds (a number), which
    is what the prediction log is given: mypy --strict checks that use above."""
    plugins = PluginManager()
    plugins.load(plugin)
    cls = plugins.options_class(plugin)
    for written, seconds in (("30d", 30 * 86400), (3600, 3600), (1.5, 1.5), ("0", 0)):
        options = opsloop.config.structure({"log_retention": written}, cls, section=f"deploy.{plugin}", source=None)
        assert options.log_retention == seconds and not isinstance(options.log_retention, str)
    with pytest.raises(opsloop.ConfigError, match=rf"\[deploy.{plugin}.log_retention\]"):
        opsloop.config.structure({"log_retention": True}, cls, section=f"deploy.{plugin}", source=None)


def test_a_record_written_before_opsloop_deployrecord_is_read_and_removed(tmp_path: Path, rows_csv: Path,
                                                                          pm: PluginManager) -> None:
    """The record as plugins/_batch_record.py wrote it (absolute paths, `pending` a string): status reads it,
    the next deploy keeps its entries (rewritten relative), remove deletes every file it names."""
    predictions = tmp_path / ".opsloop" / "predictions"
    predictions.mkdir(parents=True)
    old = pd.read_csv(rows_csv).head(5)
    old.to_parquet(predictions / "m-v1.parquet")
    old.to_parquet(predictions / ".m-v2.parquet.5e1f0c2a.tmp")  # a deploy killed before putting it in place
    record = tmp_path / ".opsloop" / "deploy" / "batch" / "m.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"model": "m", "target": "batch", "files": [
        {"path": str(predictions / "m-v1.parquet"), "version": "m:1", "rows": 5, "run_id": "r1",
         "written_at": "2026-11-30T10:00:00+00:00", "request_id": "batch-0123456789abcdef"},
        {"path": str(predictions / "m-v2.parquet"), "version": "m:2", "rows": 5, "run_id": "r2",
         "written_at": "2026-11-30T11:00:00+00:00", "pending": str(predictions / ".m-v2.parquet.5e1f0c2a.tmp")},
    ]}, indent=2) + "\n", encoding="utf-8")
    run = _run(tmp_path)
    status = pm.call("batch", "deploy_status", model_name="m", options=None, run=run)
    assert status.deployed is False and "unfinished" in status.details and status.version == "m:2"
    assert status.details["files"] == [str(predictions / "m-v1.parquet")]

    _deploy(pm, _model(pm, rows_csv, run), run, "m", 3, input=str(rows_csv))
    assert [f["path"] for f in _record(tmp_path)["files"]] == [
        os.path.join(".opsloop", "predictions", name) for name in ("m-v1.parquet", "m-v2.parquet", "m-v3.parquet")]
    removed = pm.call("batch", "undeploy", model_name="m", options=None, run=run)
    assert sorted(removed.details["removed"]) == sorted([str(predictions / "m-v1.parquet"), str(record),
                                                         str(predictions / ".m-v2.parquet.5e1f0c2a.tmp"),
                                                         str(predictions / "m-v3.parquet")])
    assert removed.details["already_gone"] == [str(predictions / "m-v2.parquet")]
    assert list(predictions.iterdir()) == []


def test_a_moved_project_removes_its_predictions(tmp_path: Path, rows_csv: Path, pm: PluginManager) -> None:
    """Before, the record held absolute paths: once the project moved, remove refused them as outside."""
    import shutil

    here = tmp_path / "here"
    here.mkdir()
    run = _run(here)
    _deploy(pm, _model(pm, rows_csv, run), run, "m", 1, input=str(rows_csv))
    there = tmp_path / "there"
    shutil.move(here, there)
    moved = _run(there)
    status = pm.call("batch", "deploy_status", model_name="m", options=None, run=moved)
    assert status.deployed is True and status.location == str(there / ".opsloop" / "predictions" / "m-v1.parquet")
    removed = pm.call("batch", "undeploy", model_name="m", options=None, run=moved)
    assert removed.details["removed"][0] == status.location
    assert list((there / ".opsloop" / "predictions").iterdir()) == []
