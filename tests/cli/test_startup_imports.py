"""Everyday commands start light: `models list --json` and `plugins list --json` (issue 8, item 14).

They used to import pydantic (Typer's parameter handling, even for options
left out) and Rich (for JSON output): 0.2 s of a 0.5 s command. Checked by
what the process imports (`python -X importtime`), not by timing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from opsloop import config as config_mod
from opsloop.bundle import FORMAT, MANIFEST, sha256_file
from opsloop.session import Session

HEAVY = ("pandas", "numpy", "scipy", "sklearn", "xgboost", "pyarrow", "rich", "pydantic")
NAME = "light"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """An opsloop.toml and a local store with 2 versions (small real bundles, through the store's API)."""
    workdir = tmp_path_factory.mktemp("startup")
    (workdir / "opsloop.toml").write_text(f'[project]\nname = "{NAME}"\n', encoding="utf-8")
    with Session.open(config_mod.read(workdir=workdir), sections=("store",)).open_store() as store:
        for number in (1, 2):
            staged = store.staging_dir()
            (staged / "model.txt").write_text(f"estimator {number}\n", encoding="utf-8")
            manifest = {"format": FORMAT, "flavor": "test", "task": "classification", "metrics": {"f1": 0.5},
                        "params": {}, "lineage": {}, "files": {"model.txt": sha256_file(staged / "model.txt")}}
            (staged / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            store.register(NAME, staged, manifest)
    return workdir


def imports_of(args, cwd):
    """Top-level modules the command imports, and its stdout."""
    code = f"import sys; sys.argv = ['opsloop', *{list(args)!r}]; from opsloop.cli import main; main()"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {m.group(1).strip().split(".")[0] for m in re.finditer(r"\|\s+\d+ \|\s*(\S+)", proc.stderr)}, proc.stdout


def test_models_list_json_imports_no_heavy_library_nor_rich_nor_pydantic(project):
    imported, out = imports_of(("models", "list", "--json"), project)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert [(m["name"], m["versions"]) for m in json.loads(out)] == [(NAME, 2)]
    # the table still prints, with Rich
    imported, out = imports_of(("models", "list"), project)
    assert "rich" in imported and NAME in out


def test_plugins_list_json_imports_no_heavy_library_nor_rich_nor_pydantic(project):
    imported, out = imports_of(("plugins", "list", "--json"), project)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["xgboost"]["status"] == "ok" and "train" in rows["xgboost"]["hooks"]


@pytest.mark.parametrize("args", [("tune", "--help"), ("models", "reproduce", "--help"), ("data", "list", "--help")])
def test_help_of_the_issue_14_commands_imports_no_heavy_library(project, args):
    """`opsloop tune --help` needs neither Optuna (nor SQLAlchemy) nor the data libraries; nor do reproduce's and
    data's."""
    modules, out = imports_of(args, project)
    assert "Usage" in out
    assert not modules & {"pandas", "numpy", "scipy", "sklearn", "xgboost", "pyarrow", "optuna", "sqlalchemy"}
