"""`opsloop.testing`: the pytest kit for plugin authors (and opsloop's own tests).

Install it with `pip install "opsloop[testing]"` (pytest and tomli-w, nothing
else), then opt in from the `conftest.py` at your tests' root:

    pytest_plugins = ["opsloop.testing"]

or on the command line (`pytest -p opsloop.testing`, or `addopts` in your
pytest config). Docs: docs/testing-plugins.md.

Fixtures:
    opsloop_project: a project in a temp dir (config, data, in-process plugins);
        `project.run("run")` runs a command in-process and returns a `Result`;
        `opsloop_project(small=True)` writes the small real telemetry set and its config.
    small_telemetry: that set as a frame (opsloop.testing.data: 3 ASD servers, 10 days, 8,640 rows).
    opsloop_console: run the installed `opsloop` console script in a subprocess; `Result.lines()` is
        pytest's `LineMatcher` over its output.
    register_plugin: make an in-process plugin known to every PluginManager
        built during the test, as if it were installed; forgotten on exit.
    override_plugin: replace an installed plugin by a test double for one test.
    hook_recorder: records every hook call (stage, observer and firstresult
        hooks) of every PluginManager built during the test.
    make_plugin_dist: write a plugin module and a `*.dist-info` with an
        `entry_points.txt` on sys.path: real entry-point discovery, without pip.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from opsloop import manager


@attrs.define
class Result:
    """What a command did: exit code, output, and the run's JSON when it printed some."""

    args: list[str]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        """stdout parsed as JSON (for commands run with `--json`)."""
        return json.loads(self.stdout)

    @property
    def stages(self) -> list[tuple[str, str]]:
        """`(stage, plugin)` for every plugin of every stage of a `run --json`."""
        return [(s["stage"], p) for s in self.json["stages"] for p in s["plugins"]]

    def assert_ok(self) -> Result:
        """Fail the test with the command's stderr unless it exited 0."""
        assert self.exit_code == 0, f"opsloop {' '.join(self.args)} exited {self.exit_code}:\n{self.stderr}"
        return self

    def assert_error(self, *fragments: str) -> Result:
        """Assert a clean failure: exit 1, one message containing every fragment, no traceback."""
        assert self.exit_code != 0, f"opsloop {' '.join(self.args)} succeeded:\n{self.stdout}"
        assert "Traceback" not in self.stderr, self.stderr
        for fragment in fragments:
            assert fragment in self.stderr, f"{fragment!r} not in stderr:\n{self.stderr}"
        return self

    def lines(self, stream: str = "stdout") -> pytest.LineMatcher:
        """pytest's `LineMatcher` over stdout (or "stderr"): `.fnmatch_lines([...])`, `.re_match_lines([...])`,
        `.no_fnmatch_line(...)`, as pytester's results offer."""
        return pytest.LineMatcher(getattr(self, stream).splitlines())


def invoke(args: list[str], cwd: Path) -> Result:
    """Run `opsloop ARGS` in-process in `cwd` (the CLI's own error boundary included)."""
    from opsloop.cli import invoke as cli_invoke

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_invoke(args)
    return Result(args=args, exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())


#: sys.path as it was when the kit loaded: what a test adds later (make_plugin_dist) is passed to subprocesses.
_BASE_PATH = list(sys.path)


def console_script() -> list[str]:
    """The installed `opsloop` console script beside this Python (a virtualenv's bin/), else the one on PATH."""
    here = Path(sys.executable).parent / ("opsloop.exe" if os.name == "nt" else "opsloop")
    found = str(here) if here.exists() else shutil.which("opsloop")
    if found is None:
        pytest.fail("the `opsloop` console script is not installed beside this Python nor on PATH: pip install opsloop")
    return [found]


def console(args: list[str], cwd: Path, *, env: Mapping[str, str] | None = None, timeout: float = 600) -> Result:
    """Run the real `opsloop ARGS` console script in a subprocess in `cwd`.

    It sees installed plugins and those of `make_plugin_dist` (their folder
    goes on PYTHONPATH), not `register_plugin`'s in-process ones.
    """
    extra = [p for p in sys.path if p not in _BASE_PATH and p]
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    if extra:
        full["PYTHONPATH"] = os.pathsep.join([*extra, *filter(None, [full.get("PYTHONPATH")])])
    done = subprocess.run([*console_script(), *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Result(args=list(args), exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr)


def to_toml(table: Mapping[str, Any]) -> str:
    """A config dict as TOML text."""
    import tomli_w

    return tomli_w.dumps(dict(table))


@attrs.define
class Project:
    """A working directory with an `opsloop.toml`."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "opsloop.toml"

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """(Re)write opsloop.toml from a dict."""
        self.config_path.write_text(to_toml(config), encoding="utf-8")
        return self.config_path

    def run(self, *args: str) -> Result:
        """Run a command in the project; `run` gets `--json --quiet` unless given."""
        argv = list(args)
        if argv[:1] == ["run"] and "--json" not in argv:
            argv += ["--json", "--quiet"]
        return invoke(argv, self.path)

    def console(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600) -> Result:
        """Run the real console script in the project, in a subprocess (as `console`)."""
        return console(list(args), self.path, env=env, timeout=timeout)


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., None]]:
    """`register_plugin(obj, name="my-trainer")`: known to every PluginManager of this test."""
    added: list[tuple[str, object, str, str]] = []

    def add_to(pm: manager.PluginManager) -> None:
        for name, obj, dist, version in added:
            pm.add(obj, name, dist=dist, version=version)

    manager.ON_NEW_MANAGER.append(add_to)

    def register(obj: object, name: str, *, dist: str = manager.IN_PROCESS, version: str = "") -> None:
        added.append((name, obj, dist, version))

    yield register
    manager.ON_NEW_MANAGER.remove(add_to)


@pytest.fixture
def override_plugin() -> Iterator[Callable[..., None]]:
    """`override_plugin("xgboost", double)`: every PluginManager of this test loads `double` for that name instead
    of the installed plugin (which `register_plugin` refuses, as two distributions of one name are refused)."""
    doubles: dict[str, object] = {}

    def swap(pm: manager.PluginManager) -> None:
        for name, obj in doubles.items():
            seen = pm.known.get(name)
            label = f"(test double of {seen.label})" if seen is not None else "(test double)"
            pm.conflicts.pop(name, None)
            pm.known[name] = manager.PluginInfo(name=name, dist=label, version="",
                                                value=getattr(obj, "__name__", type(obj).__name__), obj=obj)

    manager.ON_NEW_MANAGER.append(swap)

    def override(name: str, double: object) -> None:
        doubles[name] = double

    yield override
    manager.ON_NEW_MANAGER.remove(swap)


@attrs.define
class HookCall:
    """One recorded hook call: which hook, on which plugin, with what, returning what."""

    hook: str
    plugin: str
    kwargs: dict[str, Any]
    result: Any = None


@attrs.define
class HookRecorder:
    """Every hook call of every PluginManager built during a test, in order:
    stage hooks (one call per selected plugin), observers and firstresult hooks."""

    calls: list[HookCall] = attrs.field(factory=list)

    def named(self, hook: str) -> list[HookCall]:
        """The calls of one hook."""
        return [c for c in self.calls if c.hook == hook]


@pytest.fixture
def hook_recorder() -> Iterator[HookRecorder]:
    """Records the hook calls of every PluginManager built during the test (as pytester's HookRecorder)."""
    recorder = HookRecorder()

    def attach(pm: manager.PluginManager) -> None:
        pm.recorders.append(lambda hook, plugin, kwargs, result: recorder.calls.append(
            HookCall(hook=hook, plugin=plugin, kwargs=kwargs, result=result)))

    manager.ON_NEW_MANAGER.append(attach)
    yield recorder
    manager.ON_NEW_MANAGER.remove(attach)


@pytest.fixture
def small_telemetry() -> Any:
    """The small real telemetry set (opsloop.testing.data.small_telemetry), a fresh frame per test."""
    from opsloop.testing.data import small_telemetry as load

    return load()


@pytest.fixture
def opsloop_console(tmp_path: Path) -> Callable[..., Result]:
    """`opsloop_console("plugins", "list", cwd=None, env=None)`: the real console script in a subprocess
    (in the test's tmp_path unless `cwd`); `result.lines().fnmatch_lines([...])` matches its output."""

    def run(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 600) -> Result:
        return console(list(args), cwd or tmp_path, env=env, timeout=timeout)

    return run


@pytest.fixture
def opsloop_project(tmp_path: Path, register_plugin: Callable[..., None]) -> Callable[..., Project]:
    """`opsloop_project(config={...}, plugins={"name": module}, files={"data.csv": text}, small=False)`.

    With `small=True` the project holds `telemetry.csv` (the small real set) and its config
    (opsloop.testing.data.SMALL_CONFIG), each table of `config` merged over it: trains in seconds.
    """

    def make(config: Mapping[str, Any] | None = None, plugins: Mapping[str, object] | None = None,
             files: Mapping[str, str | bytes] | None = None, small: bool = False) -> Project:
        project = Project(path=tmp_path)
        if small:
            from opsloop.testing.data import small_config
            from opsloop.testing.data import small_telemetry as load

            load().to_csv(tmp_path / "telemetry.csv", index=False)
            config = small_config(**(config or {}))
        for name, obj in (plugins or {}).items():
            register_plugin(obj, name)
        for rel, content in (files or {}).items():
            target = tmp_path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        if config is not None:
            project.write_config(config)
        return project

    return make


@pytest.fixture
def make_plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """`make_plugin_dist(dist="opsloop-foo", version="1.0", modules={"opsloop_foo": source},
    entry_points={"foo": "opsloop_foo"})`: an importable module and its dist-info on sys.path."""
    site = tmp_path / "site-packages"
    site.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(site))

    def make(*, dist: str, version: str = "1.0", modules: Mapping[str, str],
             entry_points: Mapping[str, str]) -> Path:
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{manager.GROUP}]\n{lines}", encoding="utf-8")
        import importlib

        importlib.invalidate_caches()
        for module in modules:
            sys.modules.pop(module, None)
        return site

    return make
