"""opsloop.deployrecord, the record a deploy target keeps of what it wrote, on a toy target that writes one
file per deploy: real files, real processes at once for the lock, real SIGKILL at each crash point.

The `batch` and `dask-batch` targets' own tests (tests/plugins/test_batch_record.py,
contrib/opsloop-dask/tests/test_dask_batch.py) check the same guarantees through their hooks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opsloop.deployrecord import DeployRecord, is_temporary_of, pending_of, temporary, unfinished
from opsloop.errors import OpsloopError, StoreError
from opsloop.types import RunContext

TARGET = "toy"

#: `python -c WRITER WORKDIR MODEL FIRST COUNT [DIE before|after]`: commits COUNT toy deploys of MODEL
#: (files out/<MODEL>-<n>.txt, n from FIRST) after a line on stdin; with DIE, SIGKILLs itself just before or
#: just after the first file is moved into place.
WRITER = """
import os, signal, sys
from pathlib import Path
from opsloop.deployrecord import DeployRecord, temporary
from opsloop.types import RunContext

workdir, model, first, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
die = sys.argv[5] if len(sys.argv) > 5 else None
run = RunContext(run_id=f"{model}{first}", workdir=workdir, model_name=model, config=None)
record = DeployRecord("toy", workdir)

def place(tmp, out):
    if die == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, out)
    if die == "after":
        os.kill(os.getpid(), signal.SIGKILL)

print("ready", flush=True)
sys.stdin.readline()
for n in range(first, first + count):
    out = workdir / "out" / f"{model}-{n}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(out)
    tmp.write_text(str(n), encoding="utf-8")
    record.commit(model, {"path": str(out), "version": f"{model}:{n}"}, run, pending=tmp,
                  place=lambda: place(tmp, out))
print("done", flush=True)
"""


def _run(workdir: Path, model: str = "m") -> RunContext:
    return RunContext(run_id="t", workdir=workdir, model_name=model, config=None)


def _deploy(workdir: Path, model: str, name: str, text: str = "x", **entry: Any) -> Path:
    """One toy deploy: a file written to a temporary name, recorded pending, moved into place, recorded."""
    out = workdir / "out" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(out)
    tmp.write_text(text, encoding="utf-8")
    DeployRecord(TARGET, workdir).commit(model, {"path": str(out), "version": f"{model}:1", **entry},
                                         _run(workdir, model), pending=tmp, place=lambda: os.replace(tmp, out))
    return out


def _raw(workdir: Path, model: str = "m") -> dict[str, Any]:
    return json.loads((workdir / ".opsloop" / "deploy" / TARGET / f"{model}.json").read_text(encoding="utf-8"))


def _start(workdir: Path, *args: str | int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(workdir), *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")
    return proc


def test_a_commit_records_the_path_relative_and_reads_it_absolute(tmp_path: Path) -> None:
    out = _deploy(tmp_path, "m", "a.txt", rows=3)
    raw = _raw(tmp_path)
    assert (raw["model"], raw["target"]) == ("m", TARGET)
    (entry,) = raw["files"]
    assert entry["path"] == os.path.join("out", "a.txt") and "pending" not in entry
    assert entry["rows"] == 3 and entry["run_id"] == "t" and entry["written_at"]
    (read,) = DeployRecord(TARGET, tmp_path).read("m")
    assert read["path"] == str(out) and out.read_text(encoding="utf-8") == "x"
    assert [p.name for p in out.parent.iterdir()] == ["a.txt"]  # the temporary file is gone

    _deploy(tmp_path, "m", "b.txt")
    _deploy(tmp_path, "m", "a.txt", text="y")  # the same path again: one entry, moved last
    assert [Path(e["path"]).name for e in DeployRecord(TARGET, tmp_path).read("m")] == ["b.txt", "a.txt"]


def test_a_path_outside_the_working_directory_stays_absolute(tmp_path: Path) -> None:
    workdir, elsewhere = tmp_path / "project", tmp_path / "elsewhere" / "out.txt"
    workdir.mkdir()
    elsewhere.parent.mkdir()
    tmp = temporary(elsewhere)
    tmp.write_text("x", encoding="utf-8")
    DeployRecord(TARGET, workdir).commit("m", {"path": str(elsewhere)}, _run(workdir), pending=tmp,
                                         place=lambda: os.replace(tmp, elsewhere))
    assert _raw(workdir)["files"][0]["path"] == str(elsewhere)


def test_a_record_in_the_format_before_this_module_is_read_and_removed(tmp_path: Path) -> None:
    """Absolute paths, `pending` a string, as written before opsloop.deployrecord (the `batch`
    target's format): read as it is, and remove deletes the file and the dead deploy's temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "v1.parquet").write_bytes(b"1")
    (out / "v2.parquet").write_bytes(b"2")
    (out / ".v2.parquet.0a1b2c3d.tmp").write_bytes(b"2")  # killed before it was put in place
    record = tmp_path / ".opsloop" / "deploy" / TARGET / "m.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"model": "m", "target": TARGET, "files": [
        {"path": str(out / "v1.parquet"), "version": "m:1", "rows": 60, "run_id": "r1",
         "written_at": "2026-11-30T10:00:00+00:00"},
        {"path": str(out / "v2.parquet"), "version": "m:2", "rows": 60, "run_id": "r2",
         "written_at": "2026-11-30T11:00:00+00:00", "pending": str(out / ".v2.parquet.0a1b2c3d.tmp")},
    ]}, indent=2) + "\n", encoding="utf-8")
    records = DeployRecord(TARGET, tmp_path)
    first, second = records.read("m")
    assert first["path"] == str(out / "v1.parquet") and not unfinished(first)
    assert pending_of(second) == [str(out / ".v2.parquet.0a1b2c3d.tmp")] and unfinished(second)
    gone = records.remove("m", _run(tmp_path), root=out)
    assert sorted(gone.details["removed"]) == sorted([str(out / "v1.parquet"), str(out / "v2.parquet"),
                                                      str(out / ".v2.parquet.0a1b2c3d.tmp"), str(record)])
    assert gone.version == "m:2" and list(out.iterdir()) == [] and not record.exists()


def test_a_moved_working_directory_keeps_its_record(tmp_path: Path) -> None:
    _deploy(tmp_path / "here", "m", "a.txt")
    shutil.move(tmp_path / "here", tmp_path / "there")
    there = tmp_path / "there"
    records = DeployRecord(TARGET, there)
    assert [e["path"] for e in records.read("m")] == [str(there / "out" / "a.txt")]
    gone = records.remove("m", _run(there), root=there / "out")
    assert gone.details["removed"][0] == str(there / "out" / "a.txt") and list((there / "out").iterdir()) == []


def test_concurrent_commits_lose_no_entry_and_readers_see_whole_records(tmp_path: Path) -> None:
    """Three processes commit 30 deploys each to one record at once while this one reads it without the lock:
    every entry ends in the record (read-modify-write without the lock loses some), no read sees half."""
    count = 30
    procs = [_start(tmp_path, "m", 100 * w, count) for w in range(3)]
    try:
        for proc in procs:  # all at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        records, reads = DeployRecord(TARGET, tmp_path), 0
        while any(proc.poll() is None for proc in procs):
            records.read("m")  # an OpsloopError here would be a half-written record
            reads += 1
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and out.strip() == "done", err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    entries = DeployRecord(TARGET, tmp_path).read("m")
    assert sorted(Path(e["path"]).name for e in entries) == sorted(f"m-{100 * w + i}.txt" for w in range(3)
                                                                   for i in range(count))
    assert not any("pending" in e for e in entries) and reads > 0


def test_a_holder_killed_with_the_lock_leaves_no_stale_lock(tmp_path: Path) -> None:
    """flock: the kernel releases the lock of a process killed while it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom opsloop.deployrecord import DeployRecord\n"
        f"with DeployRecord('toy', {str(tmp_path)!r}).locked():\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    taker = subprocess.run([sys.executable, "-c", (
        "from opsloop.deployrecord import DeployRecord\n"
        f"with DeployRecord('toy', {str(tmp_path)!r}).locked():\n    print('taken')\n")],
        capture_output=True, text=True, timeout=120, check=False)
    assert taker.stdout == "taken\n", taker.stderr


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_deploy_killed_next_to_placing_leaves_nothing_remove_misses(tmp_path: Path, when: str) -> None:
    """SIGKILL just before or just after the file is moved into place: the record names the file and its
    temporary file; `unfinished` tells which; remove leaves an empty directory."""
    proc = _start(tmp_path, "m", 1, 2, when)
    proc.communicate("go\n", timeout=300)
    assert proc.returncode == -signal.SIGKILL
    out = tmp_path / "out"
    (entry,) = DeployRecord(TARGET, tmp_path).read("m")
    assert entry["path"] == str(out / "m-1.txt") and is_temporary_of(pending_of(entry)[0], entry["path"])
    assert unfinished(entry) is (when == "before")
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == ([Path(pending_of(entry)[0]).name] if when == "before" else ["m-1.txt"])
    gone = DeployRecord(TARGET, tmp_path).remove("m", _run(tmp_path), root=out)
    assert len(gone.details["removed"]) == 2 and list(out.iterdir()) == []


def test_the_next_deploy_deletes_a_dead_deploys_temporary_file(tmp_path: Path) -> None:
    proc = _start(tmp_path, "m", 1, 1, "before")
    proc.communicate("go\n", timeout=300)
    assert proc.returncode == -signal.SIGKILL
    _deploy(tmp_path, "m", "m-1.txt")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m-1.txt"]
    (entry,) = DeployRecord(TARGET, tmp_path).read("m")
    assert "pending" not in entry


def test_a_failed_place_puts_the_record_back(tmp_path: Path) -> None:
    _deploy(tmp_path, "m", "a.txt")
    before = _raw(tmp_path)
    out = tmp_path / "out" / "b.txt"
    tmp = temporary(out)
    tmp.write_text("x", encoding="utf-8")

    def place() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        DeployRecord(TARGET, tmp_path).commit("m", {"path": str(out)}, _run(tmp_path), pending=tmp, place=place)
    assert _raw(tmp_path) == before
    with pytest.raises(OSError):  # a first deploy that fails leaves no record at all
        DeployRecord(TARGET, tmp_path).commit("n", {"path": str(out)}, _run(tmp_path, "n"), pending=tmp,
                                              place=place)
    assert not (tmp_path / ".opsloop" / "deploy" / TARGET / "n.json").exists()


def test_a_path_another_model_wrote_is_taken_over_and_an_emptied_record_deleted(tmp_path: Path,
                                                                                  caplog: pytest.LogCaptureFixture
                                                                                  ) -> None:
    _deploy(tmp_path, "a", "shared.txt")
    _deploy(tmp_path, "b", "own.txt")
    _deploy(tmp_path, "b", "shared2.txt")
    with caplog.at_level(logging.WARNING, logger="opsloop"):
        _deploy(tmp_path, "c", "shared.txt")
        _deploy(tmp_path, "c", "shared2.txt")
    records = DeployRecord(TARGET, tmp_path)
    assert not records.path("a").exists()  # its only entry was taken over: no empty record left
    assert [Path(e["path"]).name for e in records.read("b")] == ["own.txt"]
    assert "shared.txt held output of a and now holds c's" in caplog.text
    records.remove("b", _run(tmp_path, "b"), root=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shared.txt", "shared2.txt"]


def test_an_unreadable_record_is_an_error_then_moved_aside_by_a_deploy(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    records = DeployRecord(TARGET, tmp_path)
    path = records.path("m")
    path.parent.mkdir(parents=True)
    for text in ('{"files": [{"path": "/kept/by/hand"', '{"files": [{"no": "path"}]}', '[]'):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(OpsloopError, match=rf"^toy: cannot read the deploy record {path}: "):
            records.read("m")
        with pytest.raises(OpsloopError, match="cannot read the deploy record"):
            records.remove("m", _run(tmp_path), root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="opsloop"):
        _deploy(tmp_path, "m", "a.txt")
    assert path.with_name("m.json.unreadable").read_text(encoding="utf-8") == "[]"
    assert "moved it to" in caplog.text and len(records.read("m")) == 1


def test_an_entry_the_target_did_not_write_makes_the_record_unreadable(tmp_path: Path) -> None:
    records = DeployRecord(TARGET, tmp_path, key="outputs", valid=lambda e: isinstance(e.get("files"), list))
    path = records.path("m")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"outputs": [{"path": "out"}]}), encoding="utf-8")
    with pytest.raises(OpsloopError, match="not one this target wrote"):
        records.read("m")


def test_remove_refuses_what_is_outside_where_the_target_writes_deleting_nothing(tmp_path: Path) -> None:
    out = _deploy(tmp_path, "m", "a.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep", encoding="utf-8")
    (tmp_path / "out" / "link.txt").symlink_to(elsewhere / "precious.txt")
    (tmp_path / "out" / "folder").mkdir()
    honest = _raw(tmp_path)
    records = DeployRecord(TARGET, tmp_path)
    for forged, says in [({"path": str(elsewhere / "precious.txt")}, "it is outside where this target writes"),
                         ({"path": "out/../elsewhere/precious.txt"}, "it is outside where this target writes"),
                         ({"path": "out/link.txt"}, "it is outside where this target writes"),
                         ({"path": "out/a.txt", "pending": "elsewhere/precious.txt"}, "not a temporary name"),
                         ({"path": "out/folder"}, "it is not a file")]:
        records.path("m").write_text(json.dumps({**honest, "files": [*honest["files"], forged]}), encoding="utf-8")
        with pytest.raises(OpsloopError, match=rf"^toy: refusing to remove .*{says}.*nothing was removed$"):
            records.remove("m", _run(tmp_path), root=tmp_path / "out")
        assert out.is_file() and (elsewhere / "precious.txt").is_file() and records.path("m").is_file()
    records.path("m").write_text(json.dumps({**honest, "files": [*honest["files"],
                                                                 {"path": str(elsewhere / "precious.txt")}]}),
                                 encoding="utf-8")
    configured = records.remove("m", _run(tmp_path), root=tmp_path / "out", configured=elsewhere / "precious.txt")
    assert str(elsewhere / "precious.txt") in configured.details["removed"] and not out.exists()


def test_remove_without_a_record_creates_nothing(tmp_path: Path) -> None:
    gone = DeployRecord(TARGET, tmp_path).remove("m", _run(tmp_path), root=tmp_path / "out")
    assert gone.deployed is False and gone.details["removed"] == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../m", "a/b", "", ".hidden", "x" * 200])
def test_a_model_name_that_is_not_a_name_is_a_store_error_naming_the_target(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="^toy: invalid model name"):
        DeployRecord(TARGET, tmp_path).path(name)


def test_temporary_names() -> None:
    out = Path("/w/out/a.parquet")
    tmp = temporary(out, "old")
    assert tmp.parent == out.parent and tmp.name.startswith(".a.parquet.") and tmp.suffix == ".old"
    assert is_temporary_of(tmp, out) and tmp != temporary(out, "old")
    for other in ("/w/out/a.parquet", "/w/out/.a.parquet.", "/w/.a.parquet.x.tmp", "/w/out/.b.parquet.x.tmp",
                  "/w/out/.a.parquetx.tmp"):
        assert not is_temporary_of(other, out), other


def test_importing_the_module_imports_no_pandas() -> None:
    """Light to import (mypy --strict on it: tests/plugins/test_batch_record.py, with the deploy targets')."""
    light = subprocess.run([sys.executable, "-c", "import sys, opsloop.deployrecord; "
                            "print(sorted(m for m in ('pandas', 'numpy', 'pyarrow') if m in sys.modules))"],
                           capture_output=True, text=True, timeout=120, check=True)
    assert light.stdout.strip() == "[]"
