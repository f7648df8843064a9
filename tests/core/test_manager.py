"""Plugin discovery, lazy loading, selection and order, broken and conflicting plugins."""

from __future__ import annotations

import sys

import pytest

from opsloop import hookimpl
from opsloop.config import read
from opsloop.errors import PluginCallError, PluginConflictError, PluginLoadError, UnknownPluginError
from opsloop.manager import PluginManager
from opsloop.session import Session

BUILTINS = {"schema-check", "impute", "xgboost", "kfold", "local-store", "batch", "quality-monitor",
            "threshold-policy"}


def test_builtins_are_entry_points_of_the_opsloop_distribution():
    pm = PluginManager()
    assert BUILTINS <= set(pm.known)
    for name in BUILTINS:
        assert pm.known[name].dist == "opsloop"
        assert pm.known[name].value.startswith("opsloop.plugins.")


def test_discovery_imports_no_plugin_code(make_plugin_dist, tmp_path):
    marker = tmp_path / "imported"
    make_plugin_dist(dist="opsloop-noisy", modules={"opsloop_noisy": f"""
        open({str(marker)!r}, "w").write("imported")
        """}, entry_points={"noisy": "opsloop_noisy"})
    pm = PluginManager()
    assert pm.known["noisy"].dist == "opsloop-noisy"
    assert pm.known["noisy"].version == "1.0"
    assert not marker.exists()
    assert "opsloop_noisy" not in sys.modules
    pm.load("noisy")
    assert marker.exists()


def test_a_broken_plugin_is_reported_with_its_distribution(make_plugin_dist):
    make_plugin_dist(dist="opsloop-broken", version="0.3", modules={"opsloop_broken": "import not_a_module_xyz\n"},
                     entry_points={"broken": "opsloop_broken"})
    pm = PluginManager()
    with pytest.raises(PluginLoadError) as info:
        pm.load("broken")
    assert "opsloop-broken 0.3" in str(info.value)
    assert "not_a_module_xyz" in str(info.value)
    assert not pm.pm.has_plugin("broken")
    pm.try_load_everything()  # every other plugin still loads
    assert set(pm.broken) == {"broken"}
    assert BUILTINS <= {n for n in pm.known if pm.pm.has_plugin(n)}


def test_a_misspelt_hook_is_refused_naming_the_plugin(make_plugin_dist):
    make_plugin_dist(dist="opsloop-typo", modules={"opsloop_typo": """
        from opsloop import hookimpl

        @hookimpl
        def trian(dataset, options, run):
            return None
        """}, entry_points={"typo": "opsloop_typo"})
    with pytest.raises(PluginLoadError, match="trian"):
        PluginManager().load("typo")


def test_same_name_in_two_distributions_names_both(make_plugin_dist):
    make_plugin_dist(dist="opsloop-fake-xgb", modules={"opsloop_fake_xgb": ""},
                     entry_points={"xgboost": "opsloop_fake_xgb"})
    pm = PluginManager()
    with pytest.raises(PluginConflictError) as info:
        pm.load("xgboost")
    assert "opsloop" in info.value.dists[0] or "opsloop" in info.value.dists[1]
    assert any("opsloop-fake-xgb" in d for d in info.value.dists)


def test_unknown_plugin_suggests_the_closest():
    with pytest.raises(UnknownPluginError, match='did you mean "kfold"'):
        PluginManager().load("kfodl")


def test_no_entry_points_means_opsloop_is_not_installed():
    pm = PluginManager(known={}, conflicts={})
    with pytest.raises(UnknownPluginError, match=r"opsloop itself is not installed \(pip install -e \.\)"):
        pm.load("xgboost")


def test_only_selected_plugins_are_loaded(tmp_path):
    session = Session.open(read(workdir=tmp_path))
    loaded = {n for n in session.plugins.known if session.plugins.pm.has_plugin(n)}
    cfg = session.config
    expected = {*cfg.selected("store"), *cfg.selected("data"), *(n for s in cfg.stages for n in cfg.selected(s))}
    # and the plugins a selected one says it calls: the default ensemble's members
    members = set(session.options_for("train", "ensemble").members)
    assert members == {"xgboost", "isolation-forest"}
    assert loaded == expected | members


def test_call_attributes_errors_and_passes_only_named_arguments():
    class Plugin:
        @hookimpl
        def decide_retrain(self, reports):
            raise RuntimeError(f"boom with {len(reports)} reports")

    pm = PluginManager()
    pm.register(Plugin(), "exploding")
    with pytest.raises(PluginCallError) as info:
        pm.call("exploding", "decide_retrain", version=None, reports=[1, 2], options=None, run=None)
    assert str(info.value) == "plugin \"exploding\" (registered in-process) failed in decide_retrain: " \
                              "RuntimeError('boom with 2 reports')"
    assert info.value.plugin == "exploding" and info.value.hook == "decide_retrain"


def test_observers_reach_every_enabled_plugin_in_registration_order():
    seen = []

    class Observer:
        def __init__(self, name):
            self.name = name

        @hookimpl
        def on_stage_start(self, stage):
            seen.append((self.name, stage))

    pm = PluginManager()
    pm.register(Observer("a"), "obs-a")
    pm.register(Observer("b"), "obs-b")
    pm.notify("on_stage_start", stage="train", plugins=["x"], run=None)
    assert seen == [("a", "train"), ("b", "train")]
