pytest_plugins = ["opsloop.testing"]

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: The real data sets (../shared/data beside the checkout, with its README on source and licence).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # a clone elsewhere (/tmp) on this machine
    DATA = Path("/work/shared/data")

#: A quick but real lifecycle on the embedded ASD data: two servers with many
#: anomalies for training, a later period of four for monitoring.
SMALL = {
    "project": {"name": "asd-anomaly"},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-08 12:00'",
        "monitor": "entity in ['omi-1', 'omi-9', 'omi-10', 'omi-11'] and timestamp >= '2024-01-08 12:00'",
    },
    # XGBoost alone, small: fast, and what these tests are about (the default's ensemble: tests/cli/test_ensemble.py)
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 60}},
    "validate": {"kfold": {"folds": 3}},
}


#: The loop scenario on ASD (tests/cli/test_loop.py, tests/cli/test_reproduce.py): a small XGBoost, a policy that
#: asks for a retrain every cycle, the gate, and 3-day monitor and holdout windows.
LOOP = {
    "project": {"name": "asd-loop"},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-06'",
        "monitor": "entity in ['omi-1', 'omi-9'] and timestamp >= '2024-01-10'",
    },
    "preprocess": {"plugins": ["schema-check", "impute"]},
    # early stopping on, as the scenario (a promotion, then a rejection) was built with it
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 30, "n_jobs": 1, "early_stopping_rounds": 20}},
    "validate": {"plugins": ["holdout"]},
    "deploy": {"plugins": ["batch"]},
    "monitor": {"plugins": ["quality-monitor"]},
    "retrain": {"plugins": ["threshold-policy"],
                "threshold-policy": {"min_f1": 0.99, "min_positives": 1, "cooldown": "0"}},
    "gate": {"plugins": ["champion-challenger"]},
    "loop": {"monitor_window": "3d", "holdout": "3d"},
}


def labelled_loop_project(path: Path, config: dict[str, Any] | None = None) -> Path:
    """The loop scenario in `path`: version 1 in production (`opsloop run`, which logs the batch it scored),
    then the true labels of those rows sent with `opsloop feedback --file`."""
    import tomli_w
    from opsloop import config as config_mod
    from opsloop import data
    from opsloop.testing import invoke

    config = config or LOOP
    path.mkdir(parents=True, exist_ok=True)
    (path / "opsloop.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    invoke(["run", "--json", "--quiet"], path).assert_ok()
    frame = data.load(config_mod.read(workdir=path)).frame.query(config["data"]["monitor"])
    labels = frame[["entity", "timestamp", "label"]].rename(columns={"entity": "series", "timestamp": "time"})
    labels.to_csv(path / "labels.csv", index=False)
    invoke(["feedback", "--file", str(path / "labels.csv")], path).assert_ok()
    return path


def server_pids(workdir: Path) -> list[int]:
    """The pids of the prediction servers running from `workdir` (Linux: read from /proc)."""
    import contextlib
    import os

    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and b"opsloop.serving" in (proc / "cmdline").read_bytes() \
                    and Path(os.readlink(proc / "cwd")) == workdir.resolve():
                found.append(int(proc.name))
    return sorted(found)


@pytest.fixture
def small_config():
    """A fresh copy of SMALL to change per test."""
    import copy

    return copy.deepcopy(SMALL)


class Mounts:
    """Real filesystems for a test (root and mount permission; the test skips with the reason otherwise)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.done: list[Path] = []

    def _mount(self, target: Path, *args: str) -> None:
        import subprocess

        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, check=False)
        if result.returncode:
            pytest.skip(f"cannot mount here (needs root and mount permission): mount {' '.join(args)}: "
                        f"{result.stderr.strip()}")

    def read_only(self, source: Path) -> Path:
        """A read-only bind mount of `source`: the same files, every write refused with EROFS."""
        target = self.tmp_path / f"ro-{len(self.done)}"
        target.mkdir()
        self._mount(target, "--bind", str(source))
        self.done.append(target)
        self._mount(target, "-o", "remount,bind,ro")
        return target

    def tmpfs(self, size: str) -> Path:
        """An empty filesystem of `size` ("256k", "1m"): a disk that fills up."""
        target = self.tmp_path / f"disk-{len(self.done)}"
        target.mkdir()
        self._mount(target, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")
        self.done.append(target)
        return target

    def unmount_all(self) -> None:
        import subprocess

        for target in reversed(self.done):
            subprocess.run(["umount", str(target)], capture_output=True, check=False)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    """`mounts.read_only(path)`, `mounts.tmpfs("1m")`: real mounts, unmounted after the test."""
    made = Mounts(tmp_path)
    yield made
    made.unmount_all()


@pytest.fixture(scope="session")
def smd_machine_1_6() -> Callable[[], Any]:
    """SMD machine-1-6's labelled half, one row a minute (restricted unpickler, checked against SHA256SUMS, as the
    benchmarks read it): a function giving a fresh copy each call. Skips where the data set is not present."""
    import importlib.util

    smd = DATA / "smd"
    if not (smd / "processed" / "machine-1-6_test.pkl").is_file():
        pytest.skip(f"SMD data not found under {DATA}")
    tool_path = Path(__file__).resolve().parents[1] / "tools" / "build_embedded_data.py"
    spec = importlib.util.spec_from_file_location("build_embedded_data", tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.smd_frame(smd).copy
