"""The command line: fast help, init, config check, plugins, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

HEAVY = ("pandas", "sklearn", "xgboost", "scipy", "pyarrow")


def test_help_imports_no_heavy_library(tmp_path):
    code = "import sys; sys.argv = ['opsloop', '--help']; from opsloop.cli import main; main()"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: opsloop" in proc.stdout
    imported = {m.group(1).strip().split(".")[0] for m in re.finditer(r"\|\s+\d+ \|\s*(\S+)", proc.stderr)}
    assert "typer" in imported  # the parse worked
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_every_command_group_has_help(opsloop_project):
    project = opsloop_project()
    for group in ("run", "init", "config", "plugins", "models", "config check", "plugins show", "models show"):
        result = project.run(*group.split(), "--help").assert_ok()
        assert "Usage: opsloop" in result.stdout


def test_init_writes_a_config_that_checks(opsloop_project):
    project = opsloop_project()
    project.run("init").assert_ok()
    assert "[train.xgboost]" in project.config_path.read_text()
    result = project.run("config", "check", "--json").assert_ok()
    assert result.json["ok"] is True
    assert result.json["selected"]["train"] == ["xgboost"]
    project.run("init").assert_error("exists; use --force")
    project.run("init", "--force").assert_ok()


def test_config_check_reports_a_wrong_key_in_one_line(opsloop_project):
    project = opsloop_project(config={"train": {"xgboost": {"max_depht": 3}}})
    result = project.run("config", "check").assert_error("[train.xgboost.max_depht] unknown key",
                                                         'did you mean "max_depth"')
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1


def test_set_override_errors_name_the_key(opsloop_project):
    project = opsloop_project()
    project.run("config", "check", "--set", "validate.plugins=[\"kfld\"]").assert_error(
        'unknown plugin "kfld"', 'did you mean "kfold"')


def test_unknown_command_is_a_usage_error(opsloop_project):
    result = opsloop_project().run("trian")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_plugins_list_json_shows_distribution_and_hooks(opsloop_project):
    rows = {r["name"]: r for r in opsloop_project().run("plugins", "list", "--json").assert_ok().json}
    assert rows["xgboost"]["dist"] == "opsloop"
    assert rows["xgboost"]["status"] == "ok"
    assert "train" in rows["xgboost"]["hooks"]
    assert "preprocess" in rows["impute"]["hooks"]


def test_plugins_show_lists_options_with_defaults(opsloop_project):
    data = opsloop_project().run("plugins", "show", "xgboost", "--json").assert_ok().json
    options = {o["name"]: o for o in data["options"]}
    assert options["max_depth"]["default"] == 6
    assert data["dist"] == "opsloop"
    opsloop_project().run("plugins", "show", "xgbst").assert_error('did you mean "xgboost"')


def test_a_broken_plugin_is_listed_and_other_commands_still_work(opsloop_project, make_plugin_dist):
    make_plugin_dist(dist="opsloop-broken", version="2.1", modules={"opsloop_broken": "raise ImportError('no GPU')\n"},
                     entry_points={"broken": "opsloop_broken"})
    project = opsloop_project()
    rows = {r["name"]: r for r in project.run("plugins", "list", "--json").assert_ok().json}
    assert rows["broken"]["status"] == "broken"
    assert rows["broken"]["dist"] == "opsloop-broken"
    assert "no GPU" in rows["broken"]["error"]
    project.run("config", "check").assert_ok()
    project.run("models", "list").assert_ok()
    project.run("config", "check", "--set", 'monitor.plugins=["broken"]').assert_error(
        'plugin "broken" (opsloop-broken 2.1) failed to load', "no GPU")


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(opsloop_project, register_plugin, monkeypatch):
    from opsloop import hookimpl

    class Nasty:
        @hookimpl
        def add_commands(self, app):
            @app.command()
            def crash():
                """Crash."""
                raise ZeroDivisionError("oops")

    register_plugin(Nasty(), "nasty")
    project = opsloop_project(config={"plugins": {"enable": ["nasty"]}})
    result = project.run("nasty", "crash")
    assert result.exit_code == 1
    assert "internal error: ZeroDivisionError('oops')" in result.stderr
    assert "Traceback" not in result.stderr
    monkeypatch.setenv("OPSLOOP_DEBUG", "1")
    assert "Traceback" in project.run("nasty", "crash").stderr


def test_models_list_on_an_empty_store(opsloop_project):
    project = opsloop_project()
    assert project.run("models", "list", "--json").assert_ok().json == []
    project.run("models", "show", "nothing").assert_error("nothing")
    project.run("models", "show", "../etc").assert_error("invalid model name")
