"""Values that used to pass `config check` and fail later, or never (issue 8, item 9).

`[project] name` is checked by the store's own `check_name`, so the config and
the registry cannot disagree; numbers that only make sense finite, or inside
(0, 1), are refused where the config is checked, naming section and key.
"""

from __future__ import annotations

import pytest

from opsloop import config as config_mod
from opsloop.errors import ConfigError, StoreError
from opsloop.session import Session
from opsloop.store import check_name


def check(tmp_path, *overrides):
    """What `opsloop config check` does: the core sections, then every selected plugin's options."""
    cfg = config_mod.read(workdir=tmp_path, overrides=overrides)
    Session.open(cfg)
    return cfg


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "a..b", "", "x" * 129, "name\n", "-lead"])
def test_a_model_name_the_store_would_refuse_is_a_config_error(tmp_path, name):
    with pytest.raises(ConfigError) as info:
        config_mod.read(workdir=tmp_path, overrides=[f"project.name={name!r}".replace("'", '"')])
    assert (info.value.section, info.value.key) == ("project", "name")
    assert "invalid model name" in str(info.value)


def test_config_and_store_agree_on_every_name(tmp_path):
    def accepted(check, error, name):
        try:
            check(name)
        except error:
            return False
        return True

    for name in ["asd-anomaly", "a.b_c-1", "9lives", "x" * 128, "../evil", "a..b", ".x", "a b", "é", "a/b"]:
        in_config = accepted(lambda n: config_mod.read(workdir=tmp_path, overrides=[f'project.name="{n}"']),
                             ConfigError, name)
        assert in_config == accepted(check_name, StoreError, name), name


@pytest.mark.parametrize(("override", "section", "key"), [
    ("data.monitor_fraction=-0.2", "data", "monitor_fraction"),
    ("data.monitor_fraction=1.5", "data", "monitor_fraction"),
    ("data.monitor_fraction=1", "data", "monitor_fraction"),
    ("data.monitor_fraction=nan", "data", "monitor_fraction"),
    ("project.seed=-1", "project", "seed"),
    ("project.seed=4294967296", "project", "seed"),
])
def test_core_numbers_out_of_range_are_config_errors(tmp_path, override, section, key):
    with pytest.raises(ConfigError) as info:
        config_mod.read(workdir=tmp_path, overrides=[override])
    assert (info.value.section, info.value.key) == (section, key)
    assert "wrong value" in str(info.value)


def test_monitor_fraction_is_from_0_to_below_1(tmp_path):
    assert config_mod.read(workdir=tmp_path, overrides=["data.monitor_fraction=0"]).data.monitor_fraction == 0
    assert config_mod.read(workdir=tmp_path, overrides=["data.monitor_fraction=0.99"]).data.monitor_fraction == 0.99
    with pytest.raises(ConfigError, match=r"\[data.monitor_fraction\] wrong value"):
        config_mod.read(workdir=tmp_path, overrides=["data.monitor_fraction=-0.0001"])


@pytest.mark.parametrize(("overrides", "where"), [
    (["train.xgboost.learning_rate=inf"], "train.xgboost.learning_rate"),
    (['deploy.plugins=["local-http"]', "deploy.local-http.swap_timeout=inf"], "deploy.local-http.swap_timeout"),
    (['monitor.plugins=["drift-monitor"]', "monitor.drift-monitor.psi_threshold=inf"],
     "monitor.drift-monitor.psi_threshold"),
    (["monitor.quality-monitor.max_drop=inf"], "monitor.quality-monitor.max_drop"),
    (["retrain.threshold-policy.max_drop=inf"], "retrain.threshold-policy.max_drop"),
    (["retrain.threshold-policy.max_drift_psi=inf"], "retrain.threshold-policy.max_drift_psi"),
    (['deploy.plugins=["local-http"]', "deploy.local-http.poll_interval=inf"], "deploy.local-http.poll_interval"),
    (['deploy.plugins=["local-http"]', "deploy.local-http.start_timeout=inf"], "deploy.local-http.start_timeout"),
])
def test_plugin_numbers_that_must_be_finite(tmp_path, overrides, where):
    with pytest.raises(ConfigError) as info:
        check(tmp_path, *overrides)
    assert f"{info.value.section}.{info.value.key}" == where


def test_finite_plugin_numbers_pass_and_infinite_ones_do_not(tmp_path):
    check(tmp_path, "train.xgboost.learning_rate=0.3", "retrain.threshold-policy.max_drop=0.5",
          "monitor.quality-monitor.max_drop=0", "retrain.threshold-policy.max_drift_psi=10")
    with pytest.raises(ConfigError, match="learning_rate"):
        check(tmp_path, "train.xgboost.learning_rate=1e400")  # TOML's 1e400 is inf


@pytest.mark.parametrize(("value", "key"), [
    ('project.name="../evil"', "[project.name]"),
    ("train.xgboost.learning_rate=inf", "[train.xgboost.learning_rate]"),
    ("data.monitor_fraction=-0.2", "[data.monitor_fraction]"),
    ("data.monitor_fraction=1.5", "[data.monitor_fraction]"),
])
def test_config_check_refuses_them_in_one_line(opsloop_project, value, key):
    result = opsloop_project().run("config", "check", "--set", value).assert_error("config error:", key)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_window_duration_without_a_time_column_is_a_config_error_before_any_data(tmp_path):
    """rolling-features' options check themselves against [data] (check_config): `config check` says it."""
    (tmp_path / "opsloop.toml").write_text('[data]\nsource = "nowhere.parquet"\ntarget = "label"\nseries = "host"\n'
                                           '[preprocess.rolling-features]\nwindows = [6, "1h"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        check(tmp_path)  # the file does not exist: nothing is read before the error
    assert (info.value.section, info.value.key) == ("preprocess.rolling-features", "windows")
    assert "'1h'" in str(info.value) and "[data] time" in str(info.value)
    check(tmp_path, 'preprocess.rolling-features.windows=[6, 12]')  # rows need no time column
    check(tmp_path, 'data.time="ts"')
