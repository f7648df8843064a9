"""The wheel: built from the root, installed elsewhere, it gives `opsloop` and `opsloop.plugins`."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_works_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("opsloop-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "opsloop/hookspecs.py" in names
    assert "opsloop/plugins/xgboost_trainer.py" in names
    assert "opsloop/datasets/asd.parquet" in names
    assert "opsloop/default.toml" in names and "opsloop/starter.toml" in names
    assert not any(n.startswith(("core/", "plugins/", "tests/")) for n in names)
    # every subpackage (pyproject lists them one by one) and every scaffold template
    missing = [str(f) for f in (ROOT / "core").rglob("*") if f.is_file() and "__pycache__" not in f.parts
               and (f.suffix == ".py" or "templates" in f.parts)
               and f"opsloop/{f.relative_to(ROOT / 'core').as_posix()}" not in names]
    assert not missing, f"left out of the wheel: {missing}"
    # A venv with the wheel installed into it that sees the dependencies of the environment running
    # this test. Not `system_site_packages=True`: that shows the base interpreter's packages, which a
    # newcomer's virtualenv does not have (issue 8: "No module named 'typer'"). A .pth line adds our
    # site-packages after the venv's own; .pth files inside it (our editable opsloop) are not read,
    # and importlib.metadata takes the venv's opsloop, first on the path.
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=False, with_pip=False)
    py = env / "bin" / "python"
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    theirs = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(theirs, "outer-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    if install.returncode and "no such option: --python" in install.stderr:  # pip < 22.3
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--prefix", str(env),
                                  str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, opsloop, opsloop.plugins.xgboost_trainer as x, opsloop.datasets as d; "
            "print(json.dumps([opsloop.__file__, x.__file__, str(d.path('asd'))]))")
    probe = subprocess.run([str(py), "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    files = json.loads(probe.stdout)
    assert all(str(env) in f for f in files), files
    listed = subprocess.run([str(env / "bin" / "opsloop"), "plugins", "list", "--json"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["xgboost"]["status"] == "ok" and rows["xgboost"]["dist"] == "opsloop"
    made = subprocess.run([str(env / "bin" / "opsloop"), "new-plugin", "disk-forecast", "--kind", "trainer"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr  # the templates come from the installed wheel
    assert (elsewhere / "opsloop-disk-forecast" / "opsloop_disk_forecast" / "__init__.py").is_file()


def test_editable_install_maps_core_and_plugins():
    import opsloop
    import opsloop.plugins

    assert Path(opsloop.__file__).parent.name == "core"
    assert Path(opsloop.plugins.__file__).parent.name == "plugins"
