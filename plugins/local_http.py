"""Local HTTP server: serves the deployed version over the Open Inference Protocol, hot-swapping on redeploy.

The `local-http` deploy target points `alias` (default `production`) at the
version being deployed, then makes sure a prediction server (`opsloop serve`,
docs/serving.md) serves it:

- when a server for this model and alias already runs, moving the alias is
  all it takes: the server sees the move within `poll_interval` seconds and
  swaps without a restart or a failed request; the target waits until the
  server answers with the new version;
- otherwise it starts one in the background (`python -m opsloop.serving`, in
  its own session, so it outlives the run) and waits until it is ready.

Tracking: a running server keeps `.opsloop/serving/<model>@<alias>.json`
(pid, host, port, URL) in the working directory and removes it when it stops
cleanly; its output goes to `.opsloop/serving/<model>@<alias>.log`. A file
whose process is gone, or started after the file was written (a reused pid),
is stale: a new server is started, and `undeploy` signals nothing. A live server that
does not answer within `swap_timeout` is an error naming it (its file kept, no
second server started: one beside it would be invisible to every command).
A deploy that fails (the server does not start, or the running one does not
serve the version within `swap_timeout`) puts the alias back where it was
before the run moved it (this target's move, or the run's own promotion: the
changes whose reason names the run), as a rollback whose reason names the
failure, and the error says so. An alias the run created stays (a store cannot
remove one), as does one moved again meanwhile; the error says that too.
Deploys of one model@alias take turns (flock on `<model>@<alias>.lock` beside
the state file, from the alias move until the server answers), so two runs
deploying at once start one server, not two. `opsloop serve --stop --model NAME --alias ALIAS` stops it (SIGTERM:
logged predictions are written before it exits).

`deploy_status` (`opsloop deploy status`) reads that file: deployed when its
process is a live opsloop server, and the version is the one the server says
it serves (its model metadata), not what the alias says. `undeploy`
(`opsloop deploy remove`) stops that server with SIGTERM, as `--stop` does,
waits up to a minute for it to exit, and removes the state file (a stale one
too). Neither moves the alias; the server's log file is kept.

Options (`[deploy.local-http]`):
    alias: Alias served and moved (default "production").
    host: Interface (default "127.0.0.1").
    port: TCP port (default 8080; 0 picks a free one, see the state file).
    max_body_bytes: Largest request body (default 8 MiB).
    max_rows: Most rows per request (default 100000).
    max_series: Most series whose recent rows the server keeps for windowed
        features (default 100000; least recently seen evicted).
    poll_interval: Seconds between the server's looks at the alias (default 0.5).
    log_predictions: Log predictions for monitoring and feedback (default true).
    log_retention: Delete logged rows older than this, e.g. "30d" or seconds (default "0": keep all).
    threads: XGBoost threads per prediction (default 1; 0: all cores).
    read_timeout, idle_timeout, max_connections, max_feedback: As `opsloop serve`'s
        options of those names (defaults 30 s, 5 s, 1000, 10000).
    token_env: Environment variable holding the bearer token (default
        "OPSLOOP_SERVE_TOKEN"); the server inherits the run's environment.
    token_for: What the token guards: "write" (feedback, default) or "all".
    start_timeout: Seconds to wait for a new server to be ready (default 120).
    swap_timeout: Seconds to wait for a running one to serve the new version (default 30).

Numbers have `opsloop serve`'s ranges (`opsloop.serving.settings.BOUNDS`), so
`config check` refuses what the server would; the two waits go up to a day.
A token variable that is set but empty is refused before the alias moves.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeGuard

import attrs
from opsloop import Deployment, hookimpl
from opsloop.errors import OpsloopError
from opsloop.serving.server import alive, is_server, read_state, state_path
from opsloop.types import DeploymentStatus
from opsloop.serving.settings import TOKEN_ENV, bounded, default, read_token, retention, within
from opsloop.store import check_name

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.store import AliasChange
    from opsloop.types import Dataset, ModelVersion, RunContext


def _alias(_: Any, attribute: attrs.Attribute[str], value: Any) -> None:
    check_name(value, "alias")


#: This target's own waits: a positive, finite number of seconds (inf would wait forever; NaN fails).
_wait = within(0.01, 86400, "seconds", integer=False)


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `local-http` deploy target (`[deploy.local-http]`).

    Attributes:
        alias: The alias the server follows; deploying points it at the version.
        host: Interface the server listens on.
        port: TCP port; 0 lets the system pick one (the state file records it).
        max_body_bytes: Largest request body the server accepts.
        max_rows: Most rows per request.
        max_series: Most series whose recent rows the server keeps (`--max-series`).
        poll_interval: Seconds between the server's looks at the alias.
        log_predictions: Log predictions (inputs, outputs, version, time,
            request id) to `.opsloop/serving/predictions.db`.
        log_max_pending: Most predicted rows waiting to be logged; beyond,
            predictions are answered but not logged (`--log-max-pending`).
        log_retention: Delete logged predictions and labels older than this
            (`"30d"`, `"12h"`; `"0"`: keep everything; `--log-retention`).
        threads: XGBoost threads per prediction; 0 means every core.
        read_timeout: Seconds a client has to send a whole request.
        idle_timeout: Seconds an idle keep-alive connection stays open.
        max_connections: Most open connections.
        max_feedback: Most feedback entries per request.
        token_env: Environment variable holding the bearer token; when it is
            set in the run's environment, the server requires the token (and
            this target sends it when it asks the server what it serves).
        token_for: `"write"` (feedback) or `"all"` (every endpoint but the
            health checks).
        start_timeout: Seconds to wait for a newly started server.
        swap_timeout: Seconds to wait for a running server to answer with the
            deployed version.
    """

    alias: str = attrs.field(default=default("alias"), validator=_alias)
    host: str = default("host")
    port: int = attrs.field(default=default("port"), validator=bounded("port"))
    max_body_bytes: int = attrs.field(default=default("max_body_bytes"), validator=bounded("max_body_bytes"))
    max_rows: int = attrs.field(default=default("max_rows"), validator=bounded("max_rows"))
    max_series: int = attrs.field(default=default("max_series"), validator=bounded("max_series"))
    poll_interval: float = attrs.field(default=default("poll_interval"), validator=bounded("poll_interval"))
    log_predictions: bool = default("log_predictions")
    log_max_pending: int = attrs.field(default=default("log_max_pending"), validator=bounded("log_max_pending"))
    # A duration ("30d") or seconds as written in TOML; seconds (a number) once converted.
    log_retention: str | float = attrs.field(default="0", converter=retention, validator=bounded("log_retention"))
    threads: int = attrs.field(default=default("threads"), validator=bounded("threads"))
    read_timeout: float = attrs.field(default=default("read_timeout"), validator=bounded("read_timeout"))
    idle_timeout: float = attrs.field(default=default("idle_timeout"), validator=bounded("idle_timeout"))
    max_connections: int = attrs.field(default=default("max_connections"), validator=bounded("max_connections"))
    max_feedback: int = attrs.field(default=default("max_feedback"), validator=bounded("max_feedback"))
    token_env: str = attrs.field(default=TOKEN_ENV, validator=attrs.validators.min_len(1))
    token_for: str = attrs.field(default=default("token_for"), validator=attrs.validators.in_(("write", "all")))
    start_timeout: float = attrs.field(default=120.0, validator=_wait)
    swap_timeout: float = attrs.field(default=30.0, validator=_wait)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def deploy(version: ModelVersion, model: LoadedModel, dataset: Dataset | None, options: Options | None,
           run: RunContext) -> Deployment:
    """Point the alias at `version`; hot-swap a running server, or start one."""
    options = options or Options()
    workdir = Path(run.workdir).absolute()
    token = read_token(options.token_env, options.token_for)  # what the server reads: refused before the alias moves
    path = state_path(workdir, version.name, options.alias)
    with _deploying(path):
        _move_alias(version, options.alias, run)
        try:
            return _serve(version, options, run, workdir, path, token)
        except Exception as exc:  # no server serves the version: the alias must not say one does
            restored = _restore_alias(version, options.alias, run, _first_line(exc))
            message = str(exc) if isinstance(exc, OpsloopError) else f"local-http: deploying failed: {exc!r}"
            head, ends, tail = message.partition("; the log ends:")  # the note before the log's lines
            raise OpsloopError(f"{head}; {restored}{ends}{tail}") from exc


@contextlib.contextmanager
def _deploying(path: Path) -> Iterator[None]:
    """One deploy of a model@alias at a time in a working directory (flock on `<model>@<alias>.lock` beside the
    state file; the kernel releases it when the process ends). Two runs deploying at once would each find no
    server and start one, and the second's state file would hide the first; or each wait for its own version
    while the other moves the alias on."""
    import fcntl

    lock_path = path.with_suffix(".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole deploy
    except OSError as exc:
        raise OpsloopError(f"local-http: cannot lock {lock_path}: {exc.strerror or exc}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _serve(version: ModelVersion, options: Options, run: RunContext, workdir: Path, path: Path,
           token: str | None) -> Deployment:
    """Hot-swap the running server of the state file `path`, or start one (the alias has moved)."""
    state = read_state(path)
    if _is_its_server(state):
        # A live server follows the alias: wait for it to swap. One that does not answer (hung, busy, or
        # wanting a token this run lacks) is not stale: removing its state file and starting another would
        # leave it running where `deploy status`, `deploy remove` and `serve --stop` cannot see it.
        url = str(state.get("url"))
        served = _wait_for(url, version, options.swap_timeout, None, token, state=(int(state["pid"]), path))
        run.log.info("local-http: %s@%s on %s now serves %s", version.name, options.alias, url, version.ref)
        return Deployment(target="local-http", model=version.ref, location=_endpoint(url, version.name),
                          details={"action": "hot-swap", "pid": state["pid"], "url": url,
                                   "previous_version": served})
    if state is not None:  # its process is gone (its pid may be another process's now): stale
        with contextlib.suppress(OSError):
            path.unlink()
    proc, log = _start(version, options, run, workdir)
    deadline = time.monotonic() + options.start_timeout
    started: dict[str, Any] | None = None
    while started is None:
        state = read_state(path)
        if state is not None and state.get("pid") == proc.pid:
            started = state
        elif proc.poll() is not None or time.monotonic() > deadline:
            _fail(proc, log, "did not start")
        else:
            time.sleep(0.1)
    _wait_for(started["url"], version, max(deadline - time.monotonic(), 1.0), (proc, log), token)
    run.log.info("local-http: started a server for %s@%s on %s (pid %d)", version.name, options.alias,
                 started["url"], proc.pid)
    return Deployment(target="local-http", model=version.ref, location=_endpoint(started["url"], version.name),
                      details={"action": "started", "pid": proc.pid, "url": started["url"], "log": str(log)})


def _is_its_server(state: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether the process of a state file is the server that wrote it (`is_server`: alive, opsloop, not a
    reused pid), and not this process."""
    return state is not None and state.get("pid") != os.getpid() and is_server(state)


#: Seconds `undeploy` waits for a server to drain its log and exit after SIGTERM.
STOP_TIMEOUT = 60.0


def _served(name: str, state: dict[str, Any], token: str | None) -> str | None:
    """`name:version` the server of `state` says it serves, or None when it does not answer."""
    served = _version_of(_metadata(state["url"], name, token))
    return f"{name}:{served}" if served is not None else None


def _version_of(meta: dict[str, Any] | None) -> str | None:
    """The version a model metadata answer names first (the Open Inference Protocol's `versions`), or None."""
    versions = (meta or {}).get("versions")
    return str(versions[0]) if isinstance(versions, list) and versions and versions[0] is not None else None


@hookimpl
def deploy_status(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """Whether a server for `model_name@alias` runs from this working directory, and what it serves (asked)."""
    options = options or Options()
    path = state_path(Path(run.workdir).absolute(), check_name(model_name, "model name"), options.alias)
    state = read_state(path)
    details: dict[str, Any] = {"alias": options.alias}
    if state is None:
        if path.exists():
            details["state_file"] = f"{path} (unreadable)"
        return DeploymentStatus(target="local-http", model=model_name, deployed=False, details=details)
    if not _is_its_server(state):
        details.update(state_file=str(path), stale=f"process {state.get('pid')} is gone (or is no longer the "
                                                    "server: its pid was reused)")
        return DeploymentStatus(target="local-http", model=model_name, deployed=False, details=details)
    version = _served(model_name, state, read_token(options.token_env, options.token_for))
    details.update(pid=state["pid"], url=state.get("url"), answering=version is not None, state_file=str(path))
    return DeploymentStatus(target="local-http", model=model_name, deployed=True, version=version,
                            location=_endpoint(state["url"], model_name), details=details)


@hookimpl
def undeploy(model_name: str, options: Options | None, run: RunContext) -> DeploymentStatus:
    """Stop the server for `model_name@alias` (SIGTERM, then wait for it to exit) and remove its state file."""
    options = options or Options()
    path = state_path(Path(run.workdir).absolute(), check_name(model_name, "model name"), options.alias)
    if not path.exists():
        return DeploymentStatus(target="local-http", model=model_name, deployed=False,
                                details={"alias": options.alias, "removed": []})
    with _deploying(path):  # not while a deploy starts or swaps a server
        return _stop_server(model_name, options, path, run)


def _stop_server(model_name: str, options: Options, path: Path, run: RunContext) -> DeploymentStatus:
    import signal

    state = read_state(path)
    removed: list[str] = []
    if state is None:
        if path.exists():  # unreadable: no process to stop, and nothing else reads it
            path.unlink()
            removed.append(f"unreadable state file {path}")
        return DeploymentStatus(target="local-http", model=model_name, deployed=False,
                                details={"alias": options.alias, "removed": removed})
    version = location = None
    if _is_its_server(state):
        pid = int(state["pid"])
        with contextlib.suppress(OpsloopError):  # an empty token variable: the version is only for the report
            version = _served(model_name, state, read_token(options.token_env, options.token_for))
        location = _endpoint(state["url"], model_name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(pid):
            if time.monotonic() > deadline:
                raise OpsloopError(f"local-http: the server for {model_name}@{options.alias} (pid {pid}, "
                                   f"{state.get('url')}) did not stop within {STOP_TIMEOUT:.0f} s of SIGTERM; "
                                   f"see its log {path.with_suffix('.log')}")
            time.sleep(0.05)
        with contextlib.suppress(ChildProcessError, OSError):  # our own child (deployed by this process): reap it
            os.waitpid(pid, os.WNOHANG)
        removed.append(f"server pid {pid} at {state.get('url')}")
        run.log.info("local-http: stopped the server for %s@%s (pid %d)", model_name, options.alias, pid)
    if (read_state(path) or {}).get("pid") == state.get("pid"):  # a clean stop removes it; a stale one is left
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    removed.append(f"state file {path}")
    return DeploymentStatus(target="local-http", model=model_name, deployed=False, version=version,
                            location=location, details={"alias": options.alias, "removed": removed})


def _move_alias(version: ModelVersion, alias: str, run: RunContext) -> None:
    """Record the alias move (observers in `[plugins] enable` hear it) before any server looks."""
    from opsloop.session import Session

    session = Session.open(run.config, sections=("store", "plugins"))
    with session.open_store() as store:
        session.set_alias(store, version.name, alias, version.version,
                          reason=f"deployed by run {run.run_id} to local-http", run=run)


def _first_line(exc: BaseException) -> str:
    """What went wrong, short enough for an alias change's reason."""
    text = str(exc).partition("\n")[0].removeprefix("local-http: ") or repr(exc)
    return text if len(text) <= 300 else text[:299] + "…"


def _moved_by_run(changes: list[AliasChange], run_id: str, version: int) -> tuple[bool, int | None]:
    """Whether this run's moves (their reasons name it: the run's promotion, this target's own move) are what
    put the alias on `version`, and where it pointed before the first of them (None: the run created it)."""
    mine = f"run {run_id}"
    ours = []
    for change in reversed(changes):  # newest first: this run's moves are the last ones
        if mine not in change.reason or change.action == "threshold":
            break
        ours.append(change)
    if not ours or ours[0].to_version != version:
        return False, None
    return True, ours[-1].from_version


def _restore_alias(version: ModelVersion, alias: str, run: RunContext, what: str) -> str:
    """Put `alias` back where it was before this run moved it (a rollback, with a reason naming the failure,
    told to observers); the sentence the deploy's error adds about it."""
    from opsloop.session import Session

    try:
        session = Session.open(run.config, sections=("store", "plugins"))
        with session.open_store() as store:
            moved, before = _moved_by_run(store.history(version.name, alias), run.run_id, version.version)
            if not moved:
                return f"{alias} was on {version.ref} before this run and is left there"
            current = store.alias(version.name, alias)
            if current != version.version:
                return f"{alias} was moved again meanwhile (to version {current}) and is left there"
            if before is None:  # the store has no way to remove an alias (ModelStore: set, rollback)
                return (f"{alias} was new, and the model store cannot remove an alias: it still names "
                        f"{version.ref}, which no server serves")
            change = session.rollback(store, version.name, alias, run=run,
                                      reason=f"rollback: the local-http deploy of {version.ref} by run "
                                             f"{run.run_id} failed: {what}")
    except Exception as exc:  # the deploy's own error stays the one reported, with this said
        return (f"restoring {alias} failed too ({_first_line(exc)}): it still names {version.ref}, which no "
                f"server serves; opsloop models rollback {version.name} --alias {alias}")
    run.log.info("local-http: %s of %s is back on version %s", alias, version.name, change.to_version)
    return f"{alias} restored to version {change.to_version} (rolled back: opsloop models history)"


def _start(version: ModelVersion, options: Options, run: RunContext,
           workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    from opsloop.session import STORE_ENV

    cmd = [sys.executable, "-m", "opsloop.serving", "--model", version.name, "--alias", options.alias,
           "--host", options.host, "--port", str(options.port), "--max-body-bytes", str(options.max_body_bytes),
           "--max-rows", str(options.max_rows), "--max-series", str(options.max_series),
           "--poll-interval", str(options.poll_interval),
           "--threads", str(options.threads), "--read-timeout", str(options.read_timeout),
           "--idle-timeout", str(options.idle_timeout), "--max-connections", str(options.max_connections),
           "--max-feedback", str(options.max_feedback), "--token-env", options.token_env,
           "--token-for", options.token_for]
    if options.log_predictions:
        cmd += ["--log-max-pending", str(options.log_max_pending), "--log-retention", str(options.log_retention)]
    else:
        cmd.append("--no-log")
    if run.config.path is not None:
        cmd += ["--config", str(Path(run.config.path).absolute())]
    # The run's store, whatever chose it (file, --set, environment): the server must watch the same registry.
    env = {**os.environ, STORE_ENV: os.environ.get(STORE_ENV) or run.config.store.uri}
    log = state_path(workdir, version.name, options.alias).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _endpoint(url: str, name: str) -> str:
    return f"{url}/v2/models/{name}"


def _metadata(url: str, name: str, token: str | None) -> dict[str, Any] | None:
    """The server's model metadata, or None when it does not answer."""
    import urllib.request  # 20 ms of http.client and ssl, kept out of `opsloop plugins list`

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(_endpoint(url, name), headers=headers),
                                    timeout=2) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError):  # URLError is an OSError
        return None
    return answer if isinstance(answer, dict) else None


def _wait_for(url: str, version: ModelVersion, timeout: float,
              started: tuple[subprocess.Popen[bytes], Path] | None, token: str | None,
              state: tuple[int, Path] | None = None) -> str | None:
    """Wait until the server serves `version`; the first version seen on the way. `state`: the pid and state
    file of a server that was running already, named in the error when it never answers."""
    deadline = time.monotonic() + timeout
    first = None
    while True:
        served = _version_of(_metadata(url, version.name, token))
        first = first or served
        if served == str(version.version):
            return first
        if started is not None and started[0].poll() is not None:
            _fail(*started, "stopped")
        if time.monotonic() > deadline and served is None and state is not None:
            raise OpsloopError(f"local-http: the server for {version.name} (pid {state[0]}, {url}) runs but did "
                               f"not answer within {timeout:.0f} s (hung, overloaded, or it wants a token this "
                               f"run lacks); its state file {state[1]} is kept and no second server was started: "
                               "stop it with `opsloop deploy remove` or `opsloop serve --stop`, then deploy again")
        if time.monotonic() > deadline:
            raise OpsloopError(f"local-http: the server at {url} still serves version {served} of {version.name} "
                               f"{timeout:.0f} s after the alias moved to {version.version} "
                               "(see its log in .opsloop/serving/)")
        time.sleep(0.1)


def _fail(proc: subprocess.Popen[bytes], log: Path, what: str) -> NoReturn:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:]) if log.exists() else ""
    raise OpsloopError(f"local-http: the server {what} (exit code {proc.returncode}, log {log}); the log ends:\n{tail}")
