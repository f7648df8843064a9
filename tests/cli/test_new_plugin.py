"""`opsloop new-plugin`: every kind's skeleton installs with pip, shows in the real `opsloop plugins list`, passes
its own tests and type-checks with mypy; bad input is refused in one line (issue 11, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import opsloop
from opsloop.scaffold import KINDS, render
from opsloop.testing import invoke

#: The venv's console script, as a user runs it.
OPSLOOP = Path(sys.executable).parent / "opsloop"


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def mypy_path(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(MYPYPATH, cache): `opsloop` as mypy finds an installed package (an editable install hides it behind an
    import hook that mypy cannot follow), and one mypy cache for every kind (opsloop is analysed once)."""
    root = tmp_path_factory.mktemp("mypy")
    (root / "path").mkdir()
    (root / "path" / "opsloop").symlink_to(Path(opsloop.__file__).parent, target_is_directory=True)
    return root / "path", root / "cache"


#: The kinds added after the first eight: installed together by one test, to keep the file's time down.
TOGETHER = ("source", "validator", "gate")


def install(packages: list[Path], site: Path, cwd: Path) -> None:
    """`pip install` the packages into `site`, as a user's build would (without isolation, no dependencies)."""
    pip = run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "--target", str(site), *map(str, packages)], cwd)
    # without isolation pip builds with the environment's setuptools: it needs bdist_wheel (setuptools >= 70.1)
    assert pip.returncode == 0, pip.stderr


def listed(names: list[str], site: Path, cwd: Path) -> dict[str, dict[str, Any]]:
    """The rows the real `opsloop plugins list --json` shows for `names`, with the site on PYTHONPATH."""
    out = run([str(OPSLOOP), "plugins", "list", "--json"], cwd, PYTHONPATH=str(site))
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout) if r["name"] in names}


def check_package(kind: str, name: str, package: Path, site: Path, row: dict[str, Any],
                  mypy_path: tuple[Path, Path]) -> None:
    """The installed package: typed, listed with its hooks and summary, its tests pass, mypy passes."""
    module = "opsloop_" + name.replace("-", "_")
    assert (site / module / "py.typed").is_file(), "the wheel carries py.typed, so users' mypy reads the hooks"
    assert (row["dist"], row["version"], row["status"]) == (f"opsloop-{name}", "0.1.0", "ok"), row
    assert set(KINDS[kind][0]) <= set(row["hooks"]), row["hooks"]
    assert row["summary"], "the module's docstring is the summary plugins list shows"

    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], package, PYTHONPATH=str(site))
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and " skipped" not in tests.stdout, tests.stdout[-2000:]

    path, cache = mypy_path
    typed = run([sys.executable, "-m", "mypy", "--cache-dir", str(cache)], package, MYPYPATH=str(path))
    assert typed.returncode == 0, typed.stdout[-4000:]
    assert "Success" in typed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in TOGETHER])
def test_the_skeleton_installs_lists_passes_its_tests_and_type_checks(kind: str, tmp_path: Path,
                                                                        mypy_path: tuple[Path, Path]) -> None:
    name = f"acme-{kind}"
    invoke(["new-plugin", name, "--kind", kind, "--dir", str(tmp_path)], tmp_path).assert_ok()
    package, site = tmp_path / f"opsloop-{name}", tmp_path / "site"
    install([package], site, tmp_path)
    check_package(kind, name, package, site, listed([name], site, tmp_path)[name], mypy_path)


@pytest.mark.slow
def test_a_source_a_validator_and_a_gate_install_together_list_pass_their_tests_and_type_check(
        tmp_path: Path, mypy_path: tuple[Path, Path]) -> None:
    """One pip install and one plugins list for the three; each package's own tests (the kind's conformance
    suite among them) and mypy run as its author runs them, in its folder."""
    names = {kind: f"acme-{kind}" for kind in TOGETHER}
    for kind, name in names.items():
        invoke(["new-plugin", name, "--kind", kind, "--dir", str(tmp_path)], tmp_path).assert_ok()
    packages = {kind: tmp_path / f"opsloop-{name}" for kind, name in names.items()}
    site = tmp_path / "site"
    install(list(packages.values()), site, tmp_path)
    rows = listed(list(names.values()), site, tmp_path)
    assert set(rows) == set(names.values()), rows
    for kind, name in names.items():
        check_package(kind, name, packages[kind], site, rows[name], mypy_path)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_file_of_every_kind_is_filled_in(kind: str) -> None:
    files = render("acme-thing", kind)
    assert {"pyproject.toml", "README.md", "tests/conftest.py", "opsloop_acme_thing/__init__.py",
            "opsloop_acme_thing/py.typed", "tests/test_acme_thing.py"} <= set(files)
    for rel, text in files.items():
        assert "$" not in text.replace("$$", ""), rel  # every placeholder filled in
        assert "@ABOUT@" not in text and "@CONFIG@" not in text, rel
        if rel.endswith(".py"):
            compile(text, rel, "exec")
    project = tomllib.loads(files["pyproject.toml"])["project"]
    assert project["name"] == "opsloop-acme-thing"
    assert project["entry-points"]["opsloop"] == {"acme-thing": "opsloop_acme_thing"}
    assert project["optional-dependencies"]["test"][0] == "opsloop[testing]"
    assert project["requires-python"] == ">=3.11"
    assert files["tests/conftest.py"].count('pytest_plugins = ["opsloop.testing"]') == 1
    suite = KINDS[kind][1]
    if suite:  # the kind's conformance suite, in one line
        assert f"from opsloop.testing.conformance import {suite}\n" in files["tests/test_acme_thing.py"]
        assert f'class TestConformance({suite}, plugin="acme-thing"' in files["tests/test_acme_thing.py"]


def one_line_error(tmp_path: Path, args: list[str], *fragments: str) -> str:
    result = invoke(["new-plugin", *args], tmp_path).assert_error(*fragments)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize(("name", "hint"), [("My_Plugin", '"my-plugin"'), ("opsloop-trap", '"trap"'),
                                            ("2fast", None), ("a--b", '"a-b"')])
def test_a_bad_name_is_refused_in_one_line(tmp_path: Path, name: str, hint: str | None) -> None:
    error = one_line_error(tmp_path, [name, "--kind", "monitor"], f'NAME "{name}"')
    assert (f"did you mean {hint}" in error) if hint else ("did you mean" not in error), error
    assert not any(tmp_path.iterdir())


def test_an_unknown_kind_is_refused_with_the_closest(tmp_path: Path) -> None:
    one_line_error(tmp_path, ["thing", "--kind", "trainr"], 'unknown --kind "trainr"', 'did you mean "trainer"',
                   "observer, command")
    assert not any(tmp_path.iterdir())


def test_the_name_of_an_installed_plugin_is_refused(tmp_path: Path) -> None:
    one_line_error(tmp_path, ["xgboost", "--kind", "trainer"], 'plugin named "xgboost" is already installed',
                   "opsloop 0.1.0")


def test_an_existing_package_is_kept_unless_forced(tmp_path: Path) -> None:
    invoke(["new-plugin", "thing", "--kind", "monitor"], tmp_path).assert_ok()
    module = tmp_path / "opsloop-thing" / "opsloop_thing" / "__init__.py"
    module.write_text("# my edits\n", encoding="utf-8")
    (tmp_path / "opsloop-thing" / "NOTES.md").write_text("mine\n", encoding="utf-8")

    one_line_error(tmp_path, ["thing", "--kind", "monitor"], "opsloop-thing already exists and is not empty",
                   "--force")
    assert module.read_text(encoding="utf-8") == "# my edits\n"

    written = invoke(["new-plugin", "thing", "--kind", "monitor", "--force"], tmp_path).assert_ok()
    assert "opsloop_thing/__init__.py" in written.stdout
    assert "def monitor(" in module.read_text(encoding="utf-8")
    assert (tmp_path / "opsloop-thing" / "NOTES.md").read_text(encoding="utf-8") == "mine\n"


def test_dir_places_the_package_and_the_output_says_what_next(tmp_path: Path) -> None:
    result = invoke(["new-plugin", "thing", "--kind", "command", "--dir", "plugins"], tmp_path).assert_ok()
    assert (tmp_path / "plugins" / "opsloop-thing" / "pyproject.toml").is_file()
    assert "pip install -e './plugins/opsloop-thing[test]'" in result.stdout


def test_the_help_and_the_docs_name_every_kind(tmp_path: Path) -> None:
    shown = " ".join(invoke(["new-plugin", "--help"], tmp_path).assert_ok().stdout.split())
    docs = Path(__file__).resolve().parents[2] / "docs"
    option = next(line for line in (docs / "cli.md").read_text(encoding="utf-8").splitlines()
                  if line.startswith("| `--kind`, `-k` |"))
    table = [line for line in (docs / "writing-plugins.md").read_text(encoding="utf-8").splitlines()
             if line.startswith("| `")]
    for kind in KINDS:
        assert kind in shown, f"new-plugin --help does not name --kind {kind}"
        assert f"`{kind}`" in option, f"docs/cli.md's --kind row does not name {kind}"
        assert any(line.startswith(f"| `{kind}` |") for line in table), f"docs/writing-plugins.md's table lacks {kind}"
