"""Contract tests: every hook is documented, tested and stable; every built-in is an entry point."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

from opsloop import hookspecs
from opsloop.manager import PluginManager

ROOT = Path(__file__).resolve().parents[2]

# A changed signature breaks every plugin that implements the hook: change this
# table only together with docs/hooks.md and a note in the changelog.
SIGNATURES = {
    "plugin_options": [],
    "add_commands": ["app"],
    "open_store": ["uri", "workdir"],
    "save_model": ["model", "path", "models"],
    "load_model": ["flavor", "path", "manifest", "models"],
    "load_data": ["source", "options", "data", "workdir"],
    "preprocess": ["dataset", "state", "options", "run"],
    "train": ["dataset", "options", "run"],
    "tune_space": ["options"],
    "validate": ["dataset", "fit", "options", "run"],
    "deploy": ["version", "model", "dataset", "options", "run"],
    "deploy_status": ["model_name", "options", "run"],
    "undeploy": ["model_name", "options", "run"],
    "monitor": ["version", "current", "predictions", "reference", "options", "run"],
    "decide_retrain": ["version", "reports", "options", "run"],
    "gate": ["champion", "challenger", "window", "options", "run"],
    "compile_rows": ["state", "options", "layout"],
    "compile_predict": ["model", "threads"],
    "window_reach": ["state", "options"],
    "map_partitions": ["frame", "function", "argument", "carry", "keep", "meta"],
    "fit_partitions": ["data", "options", "run"],
    "on_stage_start": ["stage", "plugins", "run", "options"],
    "on_stage_end": ["stage", "result", "seconds", "run", "options"],
    "on_stage_error": ["stage", "error", "run", "options"],
    "on_model_registered": ["version", "run", "options"],
    "on_alias_changed": ["change", "run", "options"],
    "on_run_end": ["command", "outcome", "result", "error", "run", "options"],
}
FIRSTRESULT = {"open_store", "save_model", "load_model", "compile_predict", "map_partitions"}


def specs() -> dict[str, object]:
    return {n: f for n, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT}_spec")}


def test_signatures_are_stable():
    actual = {n: list(inspect.signature(f).parameters) for n, f in specs().items()}
    assert actual == SIGNATURES


def test_firstresult_only_for_who_handles_this_hooks():
    flagged = {n for n, f in specs().items() if getattr(f, f"{hookspecs.PROJECT}_spec")["firstresult"]}
    assert flagged == FIRSTRESULT


def test_every_hook_has_a_docstring_saying_when_it_is_called():
    for name, fn in specs().items():
        doc = inspect.getdoc(fn) or ""
        assert "Called" in doc, f"{name}: the docstring must say when it is called"


def test_every_hook_has_a_section_in_docs_hooks_md():
    text = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    for name, params in SIGNATURES.items():
        heading = f"## {name}({', '.join(params)})"
        assert heading in text, f"docs/hooks.md lacks the section {heading!r}"


def test_every_hook_is_exercised_by_a_test():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py")
                        if p.name != "test_contract.py")
    for name in SIGNATURES:
        assert re.search(rf"\b{name}\b", sources), f"no test mentions hook {name}"


def test_every_plugin_module_has_an_entry_point_and_loads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = project["project"]["entry-points"]["opsloop"]
    modules = {f"opsloop.plugins.{p.stem}" for p in (ROOT / "plugins").glob("*.py")
               if not p.name.startswith("_")}
    assert modules == set(declared.values())
    pm = PluginManager()
    for name in declared:
        pm.load(name)  # check_pending() inside: no misspelt hook in any built-in
        assert pm.describe(name), f"plugin {name} needs a module docstring (shown by `plugins list`)"


def test_every_built_in_plugin_has_a_section_in_the_docs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    docs = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))
    headings = set(re.findall(r"^#+ `?([a-z0-9-]+)`?", docs, flags=re.MULTILINE))
    missing = sorted(set(project["project"]["entry-points"]["opsloop"]) - headings)
    assert not missing, f"built-in plugins without a section (a heading of their name) in docs/: {missing}"


def test_every_command_has_a_section_in_docs_cli_md():
    import typer.main

    from opsloop.cli import build_app

    def commands(group, prefix):
        for name, cmd in getattr(group, "commands", {}).items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    listed = list(commands(typer.main.get_command(build_app([])), "opsloop "))
    assert len(listed) >= 15
    missing = [c for c in listed if f"## `{c}" not in text]
    assert not missing, f"commands without a section in docs/cli.md: {missing}"
