"""What every conformance suite shares: the one-line subclassing, the plugin found as a vendor installed it, and
a bench that works the small real telemetry set through opsloop's own machinery.

A suite is a class of `test_*` methods that pytest collects only on a subclass naming a plugin:

    class TestMyTrainer(TrainerSuite, plugin="my-trainer"): pass

`__init_subclass__` stores the plugin's name, its options (the table it would have in `opsloop.toml`) and the
suite's own keywords as class attributes; the suite base itself is never collected (`__test__ = False`).
Keywords every suite takes: `plugin`, `options`, `register` (an in-process plugin object to register under
`plugin` for the suite's tests, as the kit's `register_plugin` does) and `config` (tables merged into the small
config, for what the plugin needs beside its own table).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop import manager
from opsloop.testing import data as small

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.runner import Runner
    from opsloop.session import Session
    from opsloop.types import Dataset, RunContext

#: The model name the suites register versions under.
MODEL = small.SMALL_CONFIG["project"]["name"]
_COMMON = {"plugin": "", "options": {}, "register": None, "config": {}}


class Suite:
    """Base of the conformance suites: subclass it with `plugin="name"` (and `options={...}`) to run it."""

    __test__ = False
    #: The stage table the plugin's options live under (`train`, `preprocess`, ...); each suite sets its own.
    section: ClassVar[str] = ""
    #: Keywords a suite takes besides the common ones, with their defaults (each suite sets its own).
    keywords: ClassVar[dict[str, Any]] = {}
    plugin: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    register: ClassVar[object | None] = None
    config: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, *, plugin: str | None = None, **keywords: Any) -> None:
        super().__init_subclass__()
        allowed = {**_COMMON, **cls.keywords}
        unknown = sorted(set(keywords) - set(allowed))
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown keyword(s) {', '.join(unknown)} for this suite "
                            f"(it takes: plugin, {', '.join(k for k in allowed if k != 'plugin')})")
        for key, value in keywords.items():
            setattr(cls, key, copy.deepcopy(value) if isinstance(value, (dict, list)) else value)
        if plugin is None:  # an intermediate base (a suite, or a vendor's own base): not collected
            cls.__test__ = False
            return
        cls.plugin = plugin
        cls.__test__ = True

    # -- fixtures every suite uses (methods, so that a vendor's conftest needs nothing) --------------------------

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _conformance_plugin(cls) -> Iterator[None]:
        """Registers the `register=` object under the plugin's name in every PluginManager built meanwhile,
        in place of an installed plugin of that name (a double, or the version of it being developed)."""
        obj = cls.register
        if obj is None:
            yield
            return
        name = cls.plugin

        def add(pm: manager.PluginManager) -> None:  # in place of an installed plugin of that name, if any
            pm.conflicts.pop(name, None)
            pm.known[name] = manager.PluginInfo(name=name, dist=manager.IN_PROCESS, version="",
                                                value=getattr(obj, "__name__", type(obj).__name__), obj=obj)

        manager.ON_NEW_MANAGER.append(add)
        try:
            yield
        finally:
            manager.ON_NEW_MANAGER.remove(add)

    @classmethod
    def stage(cls, **table: Any) -> dict[str, Any]:
        """A table that selects the plugin under test (`plugins = [plugin]` unless `table` is given), with its
        `options` as its own sub-table."""
        out: dict[str, Any] = table or {"plugins": [cls.plugin]}
        if cls.options:
            out[cls.plugin] = cls.options
        return out

    @classmethod
    def table(cls, **sections: Any) -> dict[str, Any]:
        """The small config with the suite's `config` tables and then `sections` merged in."""
        table = small.small_config()
        for key, value in [*cls.config.items(), *sections.items()]:
            if isinstance(value, dict) and isinstance(table.get(key), dict):
                table[key] = _merge(table[key], value)
            else:
                table[key] = copy.deepcopy(value)
        return table


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


@functools.cache
def _telemetry() -> pd.DataFrame:
    return small.small_telemetry()


def telemetry() -> pd.DataFrame:
    """The small real set (a fresh copy: a plugin under test may not change another test's rows)."""
    return _telemetry().copy()


@attrs.define
class Bench:
    """A project directory with the small set as `telemetry.csv` and a config: opened as a command would."""

    path: Path
    table: dict[str, Any]

    @classmethod
    def create(cls, path: Path, table: dict[str, Any]) -> Bench:
        from opsloop.testing import to_toml

        path.mkdir(parents=True, exist_ok=True)
        if not (path / "telemetry.csv").exists():
            telemetry().to_csv(path / "telemetry.csv", index=False)
        (path / "opsloop.toml").write_text(to_toml(table), encoding="utf-8")
        return cls(path=path, table=table)

    def session(self) -> Session:
        """The config read and its plugins loaded and checked, as `opsloop run` does."""
        from opsloop import config as config_mod
        from opsloop.session import Session

        return Session.open(config_mod.read(self.path / "opsloop.toml", workdir=self.path))

    def runner(self) -> Runner:
        from opsloop.runner import Runner

        return Runner(self.session())

    def periods(self, runner: Runner) -> tuple[Dataset, Dataset]:
        """The configured rows, loaded by the source plugin and split into training and monitoring periods."""
        from opsloop import data as data_mod

        raw = data_mod.load(runner.config, runner.session)
        train, later = data_mod.periods(raw, runner.config)
        assert later is not None, "the small config has a monitoring period"
        return train, later

    def invoke(self, *args: str) -> Any:
        """`opsloop ARGS` in-process in the project (run gets `--json --quiet`)."""
        from opsloop.testing import Project

        return Project(path=self.path).run(*args)


def run_context(path: Path, session: Session | None = None) -> RunContext:
    """A RunContext outside a run (for calling one hook), on the project's config."""
    from opsloop import config as config_mod
    from opsloop.types import RunContext

    config = session.config if session is not None else config_mod.read(workdir=path)
    return RunContext(run_id=uuid.uuid4().hex[:12], workdir=path, model_name=MODEL, seed=7, config=config)


def call(session: Session, plugin: str, hook: str, **kwargs: Any) -> Any:
    """One plugin's hook, as the runner calls it (errors name the plugin)."""
    return session.plugins.call(plugin, hook, **kwargs)


def one_line(error: BaseException) -> str:
    """Assert an error is an opsloop error of one line, naming what went wrong; return its text."""
    from opsloop.errors import OpsloopError

    text = str(error)
    assert isinstance(error, OpsloopError), (
        f"expected an opsloop.errors exception (ConfigError, DataError, StoreError, OpsloopError), got "
        f"{type(error).__name__}: {text}")
    assert text.strip() and "\n" not in text.strip(), f"the error is not one line: {text!r}"
    return text


def is_figure(value: Any) -> bool:
    """A real number that is finite or NaN (never inf, never a string)."""
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not math.isinf(number)


class NoUnpickling:
    """`with NoUnpickling():` any unpickling of a class while the block runs raises (Python's
    `pickle.find_class` audit event, raised by every unpickler, C or Python, joblib's included)."""

    active: ClassVar[int] = 0
    installed: ClassVar[bool] = False

    def __enter__(self) -> NoUnpickling:
        import sys

        if not NoUnpickling.installed:  # an audit hook cannot be removed: one, switched by `active`
            sys.addaudithook(_refuse_unpickling)
            NoUnpickling.installed = True
        NoUnpickling.active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        NoUnpickling.active -= 1


def _refuse_unpickling(event: str, args: tuple[Any, ...]) -> None:
    if event == "pickle.find_class" and NoUnpickling.active:
        raise RuntimeError(f"loading the model unpickled {args[0]}.{args[1]}: a bundle must load without pickle")


def pickled_files(directory: Path) -> list[str]:
    """Files under `directory` that are pickles (protocol 2+ header) or zip archives holding one (joblib, torch)."""
    import zipfile

    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        head = path.read_bytes()[:2]
        if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            found.append(str(path.relative_to(directory)))
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(n.endswith((".pkl", ".pickle")) for n in archive.namelist()):
                    found.append(str(path.relative_to(directory)))
    return found


def frames_equal(left: pd.DataFrame, right: pd.DataFrame, what: str) -> None:
    """Same columns, dtypes and values (NaN equal to NaN), with a message naming `what`."""
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(left.reset_index(drop=True), right.reset_index(drop=True), check_exact=True)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from None


def later_rows(bench: Bench, per_series: int) -> Any:
    """The first rows of each series in the monitoring period, as raw rows (the label dropped)."""
    import pandas as pd

    from opsloop.testing.data import SPLIT

    frame = pd.read_csv(bench.path / "telemetry.csv", parse_dates=["timestamp"])
    later = frame[frame["timestamp"] >= SPLIT]
    return later.groupby("entity", sort=False).head(per_series).drop(columns=["label"]).reset_index(drop=True)


def records(frame: Any) -> list[dict[str, Any]]:
    """Rows as a client sends them: JSON types, times as ISO strings, NaN as null."""
    import pandas as pd

    out = []
    for row in frame.to_dict("records"):
        out.append({k: (v.isoformat() if isinstance(v, pd.Timestamp) else None if isinstance(v, float)
                        and math.isnan(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


def post(url: str, path: str, body: Any) -> tuple[int, Any]:
    """POST a JSON body to a server on 127.0.0.1: its status and decoded answer."""
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def check_serving(bench: Bench, version: Mapping[str, Any], log: Path, per_series: int = 200) -> None:
    """`opsloop serve` (a real server on 127.0.0.1, in this process) on the project's `production` answers the
    first rows of each series of the later period with the predictions and scores `LoadedModel.predict` gives
    for the same rows (`version`: one of `opsloop run --json`'s versions)."""
    import numpy as np

    from opsloop.bundle import read_bundle
    from opsloop.manager import PluginManager
    from opsloop.serving.app import create_app
    from opsloop.serving.server import ServerThread

    rows = later_rows(bench, per_series)
    loaded = read_bundle(Path(version["path"]), PluginManager(), ref=version["ref"], threshold=version["threshold"])
    expected = loaded.predict(rows)
    app = create_app(model=MODEL, workdir=bench.path, port=0, log_path=log)
    with ServerThread(app) as server:
        status, body = post(server.url, "/predict", {"instances": records(rows)})
    assert status == 200, f"the server answered {status}: {body}"
    answered = body["predictions"]
    assert len(answered) == len(rows), f"{len(answered)} answers for {len(rows)} rows"
    assert [p["prediction"] for p in answered] == expected["prediction"].tolist(), (
        "served predictions differ from LoadedModel.predict's")
    if "score" in expected:
        np.testing.assert_allclose([p["score"] for p in answered], expected["score"].to_numpy(dtype=float),
                                   rtol=1e-9, atol=0, err_msg="served scores differ from LoadedModel.predict's")
