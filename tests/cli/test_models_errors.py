"""Issue 8 through the command line: a lost or damaged index, broken bundles, bad references, bad bytes,
read-only and full filesystems. Real runs, real SQLite files, real mounts where the sandbox allows them.

Every failure must be one line on stderr, exit 1, no traceback, no "internal error", and must leave
every registered bundle byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from opsloop import TrainedModel, hookimpl
from opsloop.testing import Project, invoke, to_toml

SMALL = {
    "project": {"name": "asd-anomaly"},
    "data": {
        "source": "embedded:asd", "target": "label", "time": "timestamp", "series": "entity",
        "train": "entity in ['omi-1', 'omi-9'] and timestamp < '2024-01-08 12:00'",
        "monitor": "entity in ['omi-1', 'omi-9', 'omi-10', 'omi-11'] and timestamp >= '2024-01-08 12:00'",
    },
    "train": {"plugins": ["xgboost"], "xgboost": {"n_estimators": 30}},
    "validate": {"kfold": {"folds": 2}},
    "retrain": {"act": False},
}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A project with asd-anomaly:1..3 (production 1 -> 2 -> 3), built once per module."""
    path = tmp_path_factory.mktemp("template")
    (path / "opsloop.toml").write_text(to_toml(SMALL), encoding="utf-8")
    for depth in (3, 4, 5):
        result = invoke(["run", "--json", "--quiet", "--promote", "--set", f"train.xgboost.max_depth={depth}"], path)
        assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture
def project(template, tmp_path):
    path = tmp_path / "project"
    shutil.copytree(template, path, symlinks=True)
    return Project(path=path)


def bundles(project: Project) -> dict[str, str]:
    """sha256 of every bundle file: must not change while the index is broken."""
    root = project.path / ".opsloop" / "bundles"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(result, *fragments: str) -> str:
    result.assert_error(*fragments)
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    return errors[0]


def db(project: Project) -> Path:
    return project.path / ".opsloop" / "registry.db"


def garble_page(path: Path, table: str) -> None:
    """Random bytes over the first page of `table`, a page in the middle of the file."""
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = con.execute("SELECT min(pageno) FROM dbstat WHERE name = ?", (table,)).fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        assert 1 < page < con.execute("PRAGMA page_count").fetchone()[0]
    with open(path, "r+b") as fh:
        fh.seek((page - 1) * size)
        fh.write(os.urandom(size))


COMMANDS = [("models", "list"), ("models", "show", "asd-anomaly"), ("models", "promote", "asd-anomaly", "1"),
            ("models", "history", "asd-anomaly"), ("run",)]


# -- defect 4: the index lost or damaged ----------------------------------------------------------


def test_an_emptied_registry_db_is_refused_everywhere_and_reindex_restores_it(project):
    before = bundles(project)
    db(project).write_bytes(b"")  # : > .opsloop/registry.db
    for args in COMMANDS:
        line = one_line_error(project.run(*args), "registry.db is empty (0 bytes)",
                              "holds 3 version(s) of 1 model(s)", "run `opsloop models reindex`")
        assert "failed in open_store" not in line
        assert bundles(project) == before, args  # run refused before it trained, let alone overwrote 1
    done = project.run("models", "reindex", "--json").assert_ok().json
    assert done["versions"] == ["asd-anomaly:1", "asd-anomaly:2", "asd-anomaly:3"] and done["aliases"] == {}
    assert Path(done["old_index"]).name.startswith("registry.db.broken-") and Path(done["old_index"]).is_file()
    listed = project.run("models", "list", "--json").assert_ok().json
    assert [(m["name"], m["versions"], m["latest"], m["aliases"]) for m in listed] == [("asd-anomaly", 3, 3, {})]
    shown = project.run("models", "show", "asd-anomaly:2", "--json").assert_ok().json
    assert shown["lineage"]["config"]["train"]["xgboost"]["max_depth"] == 4 and shown["metrics"]
    result = project.run("run").assert_ok()  # the next version is 4; 1 to 3 stay as they were
    assert result.json["versions"][0]["ref"] == "asd-anomaly:4"
    assert {k: v for k, v in bundles(project).items() if not k.startswith("asd-anomaly/4/")} == before


def test_the_text_output_of_reindex_says_no_alias_could_be_restored(project):
    db(project).write_bytes(b"")
    out = project.run("models", "reindex").assert_ok().stdout
    assert "3 version(s) indexed" in out and "registry.db.broken-" in out
    assert "no alias could be recovered" in out and "opsloop models promote" in out


def test_a_garbage_page_in_the_middle_is_refused_everywhere_and_reindex_keeps_aliases(project):
    before = bundles(project)
    garble_page(db(project), "versions")
    for args in COMMANDS:
        one_line_error(project.run(*args), "registry.db is corrupt", "PRAGMA integrity_check",
                       "run `opsloop models reindex`")
        assert bundles(project) == before, args
    done = project.run("models", "reindex", "--json").assert_ok().json
    assert done["versions"] == ["asd-anomaly:1", "asd-anomaly:2", "asd-anomaly:3"]
    assert done["aliases"] == {"asd-anomaly@production": 3}  # the aliases page was intact
    history = project.run("models", "history", "asd-anomaly", "--json").assert_ok().json
    assert [(h["from_version"], h["to_version"]) for h in history] == [(None, 1), (1, 2), (2, 3)]
    project.run("models", "promote", "asd-anomaly", "1").assert_ok()
    assert bundles(project) == before


def test_reindex_of_a_healthy_registry_changes_nothing(project):
    one_line_error(project.run("models", "reindex"), "nothing to rebuild", "--force")
    assert not list((project.path / ".opsloop").glob("registry.db.b*"))


# -- defect 5: bundles that cannot load are neither registered nor promoted -----------------------------


def break_bundle(project: Project, version: int) -> None:
    """Replace a version's estimator with garbage and fix up its manifest and the registry's digest,
    as someone editing files by hand would: only loading it can tell."""
    bundle = project.path / ".opsloop" / "bundles" / "asd-anomaly" / str(version)
    bundle.chmod(0o755)
    model = bundle / "model.ubj"
    model.chmod(0o644)
    model.write_bytes(b"{not a model at all")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.ubj"] = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    (bundle / "manifest.json").chmod(0o644)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    digest = "sha256:" + hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    with sqlite3.connect(db(project)) as con:
        con.execute("UPDATE versions SET digest = ? WHERE name = 'asd-anomaly' AND version = ?", (digest, version))


def test_promote_refuses_a_version_whose_bundle_does_not_load(project):
    break_bundle(project, 1)
    line = one_line_error(project.run("models", "promote", "asd-anomaly", "1"),
                          "cannot promote it to asd-anomaly@production: asd-anomaly:1 fails its checks",
                          "not a valid XGBoost model")
    assert "model.ubj" in line
    assert project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json["version"] == 3
    project.run("models", "promote", "asd-anomaly", "2", "--alias", "candidate").assert_ok()  # a sound one moves


def test_promote_refuses_a_tampered_bundle(project):
    bundle = project.path / ".opsloop" / "bundles" / "asd-anomaly" / "2"
    bundle.chmod(0o755)
    (bundle / "xgboost.json").chmod(0o644)
    (bundle / "xgboost.json").write_text("{}")
    one_line_error(project.run("models", "promote", "asd-anomaly", "2"), "asd-anomaly:2 fails its checks",
                   "xgboost.json", "sha256 mismatch")


def test_rollback_refuses_to_go_back_to_a_broken_version(project):
    break_bundle(project, 2)
    one_line_error(project.run("models", "rollback", "asd-anomaly"),
                   "cannot roll asd-anomaly@production back to it: asd-anomaly:2 fails its checks")
    history = project.run("models", "history", "asd-anomaly", "--json").assert_ok().json
    assert history[-1]["to_version"] == 3 and history[-1]["action"] == "set"


def test_an_old_one_class_version_cannot_be_promoted(project):
    """What the issue saw: a version registered (by an older opsloop) from a single-class target."""
    import xgboost as xgb

    from opsloop.bundle import read_bundle, write_bundle
    from opsloop.manager import PluginManager
    from opsloop.plugins.local_store import LocalStore
    from opsloop.types import Dataset

    shown = project.run("models", "show", "asd-anomaly:1", "--json").assert_ok().json
    pm = PluginManager()
    loaded = read_bundle(Path(shown["path"]), pm, ref="asd-anomaly:1", digest=shown["digest"])
    frame = loaded.transform(loaded_frame(loaded)).frame
    features = loaded.features
    estimator = xgb.XGBClassifier(n_estimators=5).fit(frame[features], [0] * len(frame))  # one class
    raw = Dataset.from_frame(loaded_frame(loaded).assign(label=0), target="label", time="timestamp",
                             series="entity")
    staged = project.path / "one-class-bundle"
    manifest = write_bundle(staged, model=TrainedModel(estimator=estimator, flavor="xgboost", task="classification",
                                                       features=tuple(features)),
                            trainer="xgboost", raw=raw, steps=[], metrics={}, lineage={}, plugins=pm)
    with LocalStore(project.path / ".opsloop") as store:
        assert store.register("asd-anomaly", staged, manifest).version == 4
    one_line_error(project.run("models", "promote", "asd-anomaly", "4"), "asd-anomaly:4 fails its checks",
                   "model has 2 classes, xgboost.json says 1")


def loaded_frame(loaded):
    from opsloop import datasets

    asd = datasets.load("asd")
    return asd[asd["entity"] == "omi-1"].head(50).drop(columns=["label"]).reset_index(drop=True)


class GhostFeatureTrainer:
    """A trainer whose model names a feature that preprocessing never makes: saves fine, cannot score."""

    @hookimpl
    def train(self, dataset, options, run):
        from sklearn.linear_model import LogisticRegression

        est = LogisticRegression(max_iter=50).fit(dataset.X, dataset.y)
        return TrainedModel(estimator=est, flavor="sklearn", task="classification",
                            features=(*dataset.feature_columns, "ghost"))


def test_run_does_not_register_a_bundle_that_cannot_score(project, register_plugin):
    register_plugin(GhostFeatureTrainer(), "ghost")
    config = json.loads(json.dumps(SMALL))
    config["train"]["plugins"] = ["ghost"]
    config["validate"]["plugins"] = []
    project.write_config(config)
    before = bundles(project)
    one_line_error(project.run("run"), "the new version of asd-anomaly", "was not registered",
                   "cannot score its probe rows", "ghost")
    assert bundles(project) == before
    assert project.run("models", "list", "--json").assert_ok().json[0]["versions"] == 3
    assert list((project.path / ".opsloop" / "staging").iterdir()) == []  # nothing left for an hour


def test_a_single_class_target_is_refused_at_training(project):
    before = bundles(project)
    # omi-2 has no anomaly after 2024-01-08: one class only
    one_line_error(project.run("run", "--set", 'data.train=entity == "omi-2" and timestamp > "2024-01-08"'),
                   "xgboost: target column 'label' holds one class only (0)", "a classifier needs at least two")
    assert bundles(project) == before
    assert list((project.path / ".opsloop" / "staging").iterdir()) == []


# -- defect 8: one line, not "internal error" --------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (("models", "show", "asd-anomaly:99999999999999999999"),
     'invalid version reference "asd-anomaly:99999999999999999999"'),
    (("models", "show", "asd-anomaly:²"), 'invalid version reference "asd-anomaly:²"'),
    (("models", "promote", "asd-anomaly", "99999999999999999999"), "invalid version 99999999999999999999"),
    (("models", "delete", "asd-anomaly", "99999999999999999999", "--yes"), "invalid version 99999999999999999999"),
    (("models", "diff", "asd-anomaly", "1", "99999999999999999999"), "invalid version 99999999999999999999"),
    (("models", "show", "asd-anomaly:9223372036854775807"), "model asd-anomaly has no version 9223372036854775807"),
])
def test_version_numbers_that_cannot_exist_are_one_line(project, args, fragment):
    one_line_error(project.run(*args), fragment)


def test_a_non_utf8_byte_in_the_config_is_located_not_dumped(project):
    text = project.config_path.read_bytes()
    project.config_path.write_bytes(text + b"# caf\xe9\n")
    line_number = text.count(b"\n") + 1
    where = f"opsloop.toml: not UTF-8 text at byte {len(text) + 5} (line {line_number})"
    for args in (("models", "list"), ("run",), ("config", "check")):
        line = one_line_error(project.run(*args), "config error:", where)
        assert "[project]" not in line and "\\x" not in line


# -- read-only and full filesystems -------------------------------------------------------------------


def serve_no_log(cwd: Path, **env: str) -> tuple[subprocess.Popen, str, list[str]]:
    """`opsloop serve --no-log --port 0` from `cwd`: the process, its URL and what it said until it listened."""
    server = subprocess.Popen([sys.executable, "-c", "from opsloop.cli import main; main()", "serve", "--no-log",
                               "--port", "0"],
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **env})
    seen: list[str] = []
    while not seen or "listening on" not in seen[-1]:  # the server announces itself once it listens
        seen.append(server.stdout.readline())
        if not seen[-1]:  # it ended without listening
            server.communicate(timeout=30)
            raise AssertionError("".join(seen))
    url = re.search(r"listening on (http://\S+?):? ", seen[-1]).group(1)
    return server, url, seen


def stop(server: subprocess.Popen) -> str:
    server.terminate()
    return server.communicate(timeout=60)[0]


def test_a_registry_on_a_read_only_mount_lists_shows_and_serves(project, tmp_path, mounts, monkeypatch):
    ro = mounts.read_only(project.path / ".opsloop")
    monkeypatch.setenv("OPSLOOP_STORE", str(ro))
    assert [m["latest"] for m in project.run("models", "list", "--json").assert_ok().json] == [3]
    assert project.run("models", "show", "asd-anomaly@production", "--json").assert_ok().json["version"] == 3
    assert len(project.run("models", "history", "asd-anomaly", "--json").assert_ok().json) == 3
    one_line_error(project.run("models", "promote", "asd-anomaly", "1"), "is read-only", "not changed")
    refused = invoke(["run"], project.path)  # refused before training, not after it: no stage ran
    one_line_error(refused, "is read-only", "not changed")
    assert "xgboost" not in refused.stdout + refused.stderr, refused.stderr
    server, url, _ = serve_no_log(project.path, OPSLOOP_STORE=str(ro))
    try:
        with urllib.request.urlopen(f"{url}/v2/models/asd-anomaly", timeout=10) as answer:
            assert json.load(answer)["versions"] == ["3"]
    finally:
        stop(server)


def test_serving_from_a_read_only_working_directory_says_what_it_cannot_keep(project, tmp_path, mounts):
    """The state file cannot be written there: a warning, not an internal error, and the server serves."""
    ro = mounts.read_only(project.path)
    server, url, said = serve_no_log(ro)
    try:
        with urllib.request.urlopen(f"{url}/v2/models/asd-anomaly", timeout=10) as answer:
            assert json.load(answer)["versions"] == ["3"]
    finally:
        said.append(stop(server))
    text = "".join(said)
    assert "cannot write the state file" in text and "Read-only file system" in text, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert server.returncode == 0, text


def test_a_full_disk_during_a_run_is_one_line_and_leaves_nothing_in_staging(project, tmp_path, mounts, monkeypatch):
    disk = mounts.tmpfs("1m")
    monkeypatch.setenv("OPSLOOP_STORE", str(disk / "reg"))
    project.run("run").assert_ok()
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * (free - 40 * 1024))  # room for the index, not for a bundle
    one_line_error(project.run("run", "--set", "train.xgboost.max_depth=7"), "cannot write the model bundle", str(disk / "reg" / "staging"),
                   "No space left on device (errno 28)")
    assert list((disk / "reg" / "staging").iterdir()) == []
    assert project.run("models", "list", "--json").assert_ok().json[0]["versions"] == 1
