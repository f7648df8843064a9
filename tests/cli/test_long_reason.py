"""`--reason` of promote and rollback: bounded at input, printed as text (issue 8, item 10).

A 100 KB reason used to be committed, then take minutes to print (Rich's
highlighter is quadratic on one long word); a reason with `[/]` in it crashed
the printing as bad markup.
"""

from __future__ import annotations

import json

import pytest

from opsloop import config as config_mod
from opsloop import hookimpl
from opsloop.bundle import FORMAT, MANIFEST, sha256_file
from opsloop.cli.models import MAX_REASON
from opsloop.session import Session

NAME = "m"


class TextFlavor:
    """Loads the estimator of these small bundles (a text file), so that they may be promoted."""

    @hookimpl
    def load_model(self, flavor, path, manifest):
        return (path / "model.txt").read_text(encoding="utf-8") if flavor == "text" else None


def register_versions(workdir, count):
    """`count` small real bundles (a manifest listing one file's sha256), registered through the store's API."""
    with Session.open(config_mod.read(workdir=workdir), sections=("store",)).open_store() as store:
        for number in range(1, count + 1):
            staged = store.staging_dir()
            (staged / "model.txt").write_text(f"estimator {number}\n", encoding="utf-8")
            manifest = {"format": FORMAT, "flavor": "text", "flavor_plugin": "text-flavor", "task": "classification",
                        "metrics": {"f1": 0.5}, "params": {"n": number}, "lineage": {},
                        "files": {"model.txt": sha256_file(staged / "model.txt")}}
            (staged / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
            store.register(NAME, staged, manifest)


@pytest.fixture
def project(opsloop_project):
    project = opsloop_project(config={"project": {"name": NAME}}, plugins={"text-flavor": TextFlavor()})
    register_versions(project.path, 2)
    project.run("models", "promote", NAME, "1", "--reason", "first").assert_ok()
    return project


def history(project):
    return project.run("models", "history", NAME, "--json").assert_ok().json


def test_a_100_kb_reason_is_refused_in_one_line_and_nothing_is_committed(project):
    for command in (["promote", NAME, "2"], ["rollback", NAME]):
        result = project.run("models", *command, "--reason", "x" * 100_000).assert_error(
            "--reason is 100,000 characters long", f"at most {MAX_REASON:,}")
        assert result.exit_code == 1
        assert len(result.stderr.strip().splitlines()) == 1
    assert [(h["to_version"], h["reason"]) for h in history(project)] == [(1, "first")]


@pytest.mark.timeout(60)
def test_a_reason_of_the_largest_size_in_one_word_is_printed_whole(project):
    word = "w" * MAX_REASON
    out = project.run("models", "promote", NAME, "2", "--reason", word).assert_ok().stdout
    assert word in "".join(out.split())  # folded over lines, every character there
    assert history(project)[-1]["reason"] == word


@pytest.mark.timeout(60)
def test_a_long_reason_already_in_the_history_is_cut_in_the_table_and_whole_in_json(project):
    reason = "why " * 25_000  # 100 KB written through the API, which the CLI's bound does not cover
    with Session.open(config_mod.read(workdir=project.path), sections=("store",)).open_store() as store:
        store.set_alias(NAME, "production", 2, reason=reason)
    table = project.run("models", "history", NAME).assert_ok().stdout
    assert len(table.splitlines()) < 20  # not the thousand lines of the whole reason wrapped
    assert "why why" in table and "…" in table
    assert history(project)[-1]["reason"] == reason


def test_a_reason_is_text_not_markup(project):
    reason = "[/] rolled [bold]back[/bold] by hand"
    out = project.run("models", "promote", NAME, "2", "--reason", reason).assert_ok().stdout
    assert reason in out
    assert reason in project.run("models", "history", NAME).assert_ok().stdout
