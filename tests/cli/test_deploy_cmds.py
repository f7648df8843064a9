"""`opsloop deploy status` and `opsloop deploy remove`: the deploy_status and undeploy hooks of the built-in
deploy targets (batch, local-http), on real runs of the small telemetry set (opsloop.testing.data), and what
the commands do with a target that lacks the hooks or breaks them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opsloop import hookimpl
from opsloop.errors import PluginLoadError
from opsloop.manager import PluginManager
from opsloop.serving.server import alive, read_state, state_path
from opsloop.testing.data import small_config, small_telemetry
from opsloop.types import Deployment, DeploymentStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import server_pids  # noqa: E402 - tests/conftest.py

MODEL = "small-telemetry"  # small_config's [project] name
TOKEN = "deploy-status-test-token-0123456789"


@pytest.fixture(scope="module")
def telemetry_csv(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("data") / "telemetry.csv"
    small_telemetry().to_csv(path, index=False)
    return path.read_bytes()


def _project(opsloop_project: Any, telemetry_csv: bytes, deploy: dict[str, Any], plugins: dict | None = None) -> Any:
    return opsloop_project(config=small_config(deploy=deploy), files={"telemetry.csv": telemetry_csv},
                           plugins=plugins)


def _stop(pid: int) -> None:
    """Cleanup after a failed test: the server must not outlive it."""
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _production(project: Any) -> int:
    (model,) = project.run("models", "list", "--json").assert_ok().json
    return model["aliases"]["production"]


# ---------------------------------------------------------------------------
# local-http: a real server, started by `opsloop run`'s deploy stage
# ---------------------------------------------------------------------------



def _started(project) -> tuple[Path, dict, int]:
    """`opsloop run` in the project: its local-http state file, the state, and the server's pid."""
    project.run("run").assert_ok()
    state_file = state_path(project.path, MODEL, "production")
    state = read_state(state_file)
    assert state is not None, "the deploy stage started no server"
    return state_file, state, state["pid"]


def test_local_http_status_asks_the_server_then_remove_stops_it(opsloop_project: Any, telemetry_csv: bytes,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLOOP_SERVE_TOKEN", TOKEN)  # every endpoint guarded: status must send the token
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["local-http"], "local-http": {
        "port": 0, "poll_interval": 0.1, "token_for": "all"}})
    state_file, state, pid = _started(project)
    try:
        project.run("run", "--promote", "--set", "train.xgboost.n_estimators=20").assert_ok()  # version 2, hot-swapped

        (row,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
        assert row["target"] == "local-http" and row["deployed"] is True and row["version"] == f"{MODEL}:2"
        assert row["details"]["pid"] == pid and alive(pid)
        assert row["location"] == f"{state['url']}/v2/models/{MODEL}"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(row["location"], timeout=10)
        request = urllib.request.Request(row["location"], headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as answer:  # it answers HTTP, as reported
            assert json.loads(answer.read())["versions"] == ["2"]

        removed = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
        assert [(r["target"], r["deployed"], r["version"]) for r in removed] == [("local-http", False, f"{MODEL}:2")]
        assert any(str(pid) in item for item in removed[0]["removed"])
        assert not alive(pid)
        with pytest.raises(OSError), socket.create_connection((state["host"], state["port"]), timeout=5):
            pass
        assert not state_file.exists()
        assert state_file.with_suffix(".log").exists()  # the server's log is kept

        (after,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
        assert after["deployed"] is False and after["version"] is None and after["location"] is None
        assert _production(project) == 2  # the alias did not move
        again = project.run("deploy", "remove")
        assert again.assert_ok().stdout.strip() == f"nothing deployed for {MODEL}"
    finally:
        _stop(pid)


def test_local_http_remove_clears_a_stale_state_file(opsloop_project: Any, telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["local-http"]})
    state_file = state_path(project.path, MODEL, "production")
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps({"pid": 999999, "url": "http://127.0.0.1:9", "port": 9}), encoding="utf-8")

    (row,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
    assert row["deployed"] is False and "999999" in row["details"]["stale"]
    (gone,) = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
    assert gone["removed"] == [f"state file {state_file}"] and not state_file.exists()


def test_local_http_does_not_orphan_a_live_server_that_does_not_answer(opsloop_project: Any,
                                                                      telemetry_csv: bytes) -> None:
    """A server that runs but does not answer (here: stopped with SIGSTOP, as a hung one) is not stale: the
    deploy fails naming it, keeps its state file and starts no second server (which, on port 0, would
    serve beside it where no command sees the first)."""
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["local-http"], "local-http": {
        "port": 0, "poll_interval": 0.1, "swap_timeout": 3}})
    state_file, state, pid = _started(project)
    try:
        os.kill(pid, signal.SIGSTOP)
        project.run("run", "--promote", "--set", "train.xgboost.n_estimators=20").assert_error(
            'plugin "local-http"', f"(pid {pid}, {state['url']}) runs but did not answer", "no second server")
        assert read_state(state_file) == state  # still the one server, still findable
        assert server_pids(project.path) == [pid]
        os.kill(pid, signal.SIGCONT)
        (row,) = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
        assert any(str(pid) in item for item in row["removed"]) and not alive(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        for server in {pid, *server_pids(project.path)}:  # a second one too, when the test fails
            _stop(server)


@pytest.mark.slow  # two whole runs at once
def test_two_runs_deploying_at_once_start_one_server(opsloop_project: Any, telemetry_csv: bytes) -> None:
    """Two `opsloop run` processes deploy to local-http at once (port 0): the deploys take turns, so one
    starts the server and the other hot-swaps it, and `deploy remove` stops every server there is."""
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["local-http"], "local-http": {
        "port": 0, "poll_interval": 0.1}})
    opsloop = Path(sys.executable).with_name("opsloop")
    cmd = [str(opsloop), "run", "--json", "--quiet"]
    runs = [subprocess.Popen(cmd, cwd=project.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    try:
        answers = [run.communicate(timeout=600) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], answers
        actions = sorted(d["details"]["action"] for out, _ in answers for d in json.loads(out)["deployments"])
        assert actions == ["hot-swap", "started"]
        state = read_state(state_path(project.path, MODEL, "production"))
        assert state is not None and server_pids(project.path) == [state["pid"]]
        (row,) = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
        assert not alive(state["pid"]) and server_pids(project.path) == []
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
        for server in server_pids(project.path):
            _stop(server)


def test_a_state_file_whose_pid_another_opsloop_process_reuses_is_stale(opsloop_project: Any,
                                                                       telemetry_csv: bytes) -> None:
    """The server died without removing its file (SIGKILL, OOM) and its pid went to another opsloop process
    (here one whose command line says opsloop, started after the file was written): status calls the file
    stale and remove deletes it without signalling that process."""
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["local-http"]})
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "opsloop", "loop", "--every",
                              "1h"], stdin=subprocess.PIPE)
    try:
        state_file = state_path(project.path, MODEL, "production")
        state_file.parent.mkdir(parents=True)
        state_file.write_text(json.dumps({"pid": other.pid, "url": "http://127.0.0.1:9", "port": 9,
                                          "started_at": time.time() - 86400}), encoding="utf-8")
        (row,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
        assert row["deployed"] is False and f"process {other.pid}" in row["details"]["stale"]
        (gone,) = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
        assert gone["removed"] == [f"state file {state_file}"] and not state_file.exists()
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait()


# ---------------------------------------------------------------------------
# batch: the predictions files it wrote, and nothing else
# ---------------------------------------------------------------------------


def test_batch_status_lists_its_files_and_remove_deletes_exactly_them(opsloop_project: Any,
                                                                      telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["batch"]})
    predictions = project.path / ".opsloop" / "predictions"
    predictions.mkdir(parents=True)
    (predictions / "mine.csv").write_text("a,b\n1,2\n", encoding="utf-8")  # an operator's file beside batch's
    project.run("run").assert_ok()
    project.run("run", "--promote", "--set", "train.xgboost.n_estimators=20").assert_ok()
    first, second = predictions / f"{MODEL}-v1.parquet", predictions / f"{MODEL}-v2.parquet"
    assert first.is_file() and second.is_file()

    (row,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
    assert row["deployed"] is True and row["version"] == f"{MODEL}:2" and row["location"] == str(second)
    assert row["details"]["files"] == [str(first), str(second)] and row["details"]["rows"] > 0
    table = project.run("deploy", "status").assert_ok().stdout
    assert "batch" in table and f"{MODEL}:2" in table

    before = sorted(p for p in project.path.rglob("*") if p.is_file())
    done = project.run("deploy", "remove").assert_ok().stdout
    assert done.startswith(f"batch: removed {MODEL}:2: ") and str(first) in done and str(second) in done
    after = sorted(p for p in project.path.rglob("*") if p.is_file())
    record = project.path / ".opsloop" / "deploy" / "batch" / f"{MODEL}.json"
    assert set(before) - set(after) == {first, second, record}
    assert (predictions / "mine.csv").read_text(encoding="utf-8") == "a,b\n1,2\n"
    assert (project.path / ".opsloop" / "serving" / "predictions.db").exists()  # the monitoring history stays

    (gone,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
    assert gone["deployed"] is False and gone["version"] is None
    assert _production(project) == 2


def test_batch_refuses_to_remove_a_recorded_file_outside_where_it_writes(opsloop_project: Any, telemetry_csv: bytes,
                                                                         tmp_path_factory: pytest.TempPathFactory
                                                                         ) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["batch"]})
    project.run("run").assert_ok()
    record = project.path / ".opsloop" / "deploy" / "batch" / f"{MODEL}.json"
    content = json.loads(record.read_text(encoding="utf-8"))
    outside = tmp_path_factory.mktemp("elsewhere") / "precious.parquet"
    outside.write_bytes(b"not batch's")
    content["files"].append({"path": str(outside), "version": f"{MODEL}:9"})
    record.write_text(json.dumps(content), encoding="utf-8")

    project.run("deploy", "remove").assert_error('plugin "batch"', "failed in undeploy", str(outside),
                                                 "nothing was removed")
    assert outside.read_bytes() == b"not batch's"
    assert (project.path / content["files"][0]["path"]).is_file() and record.is_file()


def test_batch_removes_its_configured_output_outside_the_default_directory(opsloop_project: Any,
                                                                          telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["batch"], "batch": {"output": "out/scores.csv"}})
    project.run("run").assert_ok()
    output = project.path / "out" / "scores.csv"
    (row,) = project.run("deploy", "status", "--json").assert_ok().json["targets"]
    assert row["deployed"] is True and row["location"] == str(output)
    (gone,) = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
    assert str(output) in gone["removed"] and not output.exists()


# ---------------------------------------------------------------------------
# Targets without the hooks, or breaking them; nothing deployed
# ---------------------------------------------------------------------------


def _deploy_only() -> types.SimpleNamespace:
    def deploy(version: Any) -> Deployment:
        return Deployment(target="bare", model=version.ref, location="nowhere")

    return types.SimpleNamespace(deploy=hookimpl(deploy))


def test_a_target_without_the_hooks_is_named_not_a_crash(opsloop_project: Any, telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["bare", "batch"]}, plugins={"bare": _deploy_only()})

    rows = project.run("deploy", "status", "--json").assert_ok().json["targets"]
    assert [(r["target"], r["deployed"], r.get("note")) for r in rows] == [("bare", None, "does not report status"),
                                                                           ("batch", False, None)]
    assert "does not report status" in project.run("deploy", "status").assert_ok().stdout

    out = project.run("deploy", "remove").assert_ok().stdout.splitlines()
    assert out == ["batch: nothing deployed",
                   'deploy target "bare" cannot remove what it deployed: it does not implement the undeploy hook '
                   "(take it down by hand)"]
    project.run("deploy", "remove", "--target", "bare").assert_error('deploy target "bare"', "undeploy")


def test_nothing_deployed_exits_0_and_says_so(opsloop_project: Any, telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["batch"]})
    assert project.run("deploy", "remove").assert_ok().stdout.strip() == f"nothing deployed for {MODEL}"
    # --target reaches a target the config no longer selects (no server: nothing to stop)
    assert project.run("deploy", "remove", "--target", "local-http").assert_ok().stdout.strip() == \
        f"nothing deployed for {MODEL}"
    project.run("deploy", "remove", "--target", "local-htp").assert_error("local-htp", "local-http")
    assert project.run("deploy", "status", "--model", "other", "--json").assert_ok().json["model"] == "other"
    project.run("deploy", "remove", "--model", "../../x").assert_error("invalid model name '../../x'")


def test_a_broken_target_is_one_line_naming_it_and_the_others_still_answer(opsloop_project: Any,
                                                                           telemetry_csv: bytes,
                                                                           register_plugin: Any) -> None:
    def deploy_status(model_name: str) -> dict:
        return {"deployed": True}  # not a DeploymentStatus

    def undeploy(model_name: str) -> DeploymentStatus:
        raise RuntimeError("the cluster said no\nsecond line")

    broken = types.SimpleNamespace(deploy=_deploy_only().deploy, deploy_status=hookimpl(deploy_status),
                                   undeploy=hookimpl(undeploy))
    register_plugin(broken, "broken", dist="opsloop-broken", version="0.3")
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["broken", "batch"]})

    status = project.run("deploy", "status", "--json")
    assert status.exit_code == 1
    rows = status.json["targets"]
    assert rows[0]["error"].startswith('plugin "broken" (opsloop-broken 0.3) failed in deploy_status: ')
    assert "returned dict, not a DeploymentStatus" in rows[0]["error"]
    assert rows[1]["target"] == "batch" and rows[1]["deployed"] is False
    assert status.stderr.startswith('error: plugin "broken"') and len(status.stderr.strip().splitlines()) == 1

    removed = project.run("deploy", "remove")
    removed.assert_error('plugin "broken" (opsloop-broken 0.3) failed in undeploy', "the cluster said no")
    assert len(removed.stderr.strip().splitlines()) == 1
    assert "batch: nothing deployed" in removed.stdout


# ---------------------------------------------------------------------------
# The hooks themselves
# ---------------------------------------------------------------------------


def test_a_target_implementing_deploy_status_and_undeploy_loads_and_is_called():
    def deploy_status(model_name, options, run):
        return DeploymentStatus(target="t", model=model_name, deployed=False)

    def undeploy(model_name, run):  # fewer arguments than the spec: pluggy passes only those named
        return DeploymentStatus(target="t", model=model_name, deployed=False, details={"removed": []})

    plugin = types.SimpleNamespace(deploy_status=hookimpl(deploy_status), undeploy=hookimpl(undeploy))
    pm = PluginManager(known={}, conflicts={})
    pm.register(plugin, "t")
    assert pm.call("t", "deploy_status", model_name="m", options=None, run=None).model == "m"
    assert pm.call("t", "undeploy", model_name="m", options=None, run=None).details == {"removed": []}


def test_a_misspelt_undeploy_is_refused_when_the_plugin_loads():
    plugin = types.SimpleNamespace(undeploy_model=hookimpl(lambda model_name: None))
    with pytest.raises(PluginLoadError, match="undeploy_model"):
        PluginManager(known={}, conflicts={}).register(plugin, "t")



# ---------------------------------------------------------------------------
# What `deploy remove` prints when a target removed many files
# ---------------------------------------------------------------------------


def _parts_target() -> types.SimpleNamespace:
    """A deploy target that writes, as dask-batch does, directories of part files under `out/` in the working
    directory, and whose undeploy deletes every file and directory there, reporting each (absolute paths, in
    the order deleted)."""
    def deploy(version: Any) -> Deployment:
        return Deployment(target="parts", model=version.ref, location="out")

    def undeploy(model_name: str, run: Any) -> DeploymentStatus:
        removed = []
        for directory in sorted(p for p in (Path(run.workdir) / "out").iterdir() if p.is_dir()):
            for part in sorted(directory.iterdir()):
                part.unlink()
                removed.append(str(part))
            directory.rmdir()
            removed.append(str(directory))
        return DeploymentStatus(target="parts", model=model_name, deployed=False, version=f"{model_name}:1",
                                details={"removed": removed})

    return types.SimpleNamespace(deploy=hookimpl(deploy), undeploy=hookimpl(undeploy))


def _write_parts(out: Path, directories: int, parts: int) -> list[str]:
    written = []
    for day in range(directories):
        directory = out / f"day={day:02d}"
        directory.mkdir(parents=True)
        for n in range(parts):
            (directory / f"part.{n}.parquet").write_bytes(b"PAR1")
            written.append(str(directory / f"part.{n}.parquet"))
        written.append(str(directory))
    return written


def test_remove_summarises_many_removed_files_by_directory_and_json_lists_them_all(opsloop_project: Any,
                                                                                   telemetry_csv: bytes) -> None:
    project = _project(opsloop_project, telemetry_csv, {"plugins": ["parts"]}, plugins={"parts": _parts_target()})
    out = project.path / "out"

    written = _write_parts(out, 14, 6)  # 14 directories of 6 part files: 98 paths
    lines = project.run("deploy", "remove").assert_ok().stdout.splitlines()
    assert lines[0] == f"parts: removed {MODEL}:1: 98 items (all of them: --json)"
    assert lines[1] == f"  6 in {out / 'day=00'}/: part.0.parquet, part.1.parquet, part.2.parquet and 3 more"
    assert lines[2] == f"  14 in {out}/: day=00, day=01, day=02 and 11 more"  # the directories themselves
    assert lines[3].startswith(f"  6 in {out / 'day=01'}/: ")
    assert len(lines) == 11 and lines[-1] == "  and 36 more in 6 directories"  # day=08 to day=13: 10 lines in all
    assert not any(out.iterdir())

    written = _write_parts(out, 14, 6)
    (row,) = project.run("deploy", "remove", "--json").assert_ok().json["targets"]
    assert sorted(row["removed"]) == sorted(written)  # every path, in the JSON

    written = _write_parts(out, 1, 2)  # three items: one line, as before
    assert project.run("deploy", "remove").assert_ok().stdout.splitlines() == \
        [f"parts: removed {MODEL}:1: {', '.join(written)}"]
