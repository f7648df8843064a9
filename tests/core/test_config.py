"""Config: defaults, files, --set overrides, and errors that name section, key and closest name."""

from __future__ import annotations

import pytest

from opsloop import config as config_mod
from opsloop.errors import ConfigError
from opsloop.session import Session
from opsloop.testing import to_toml


def write(tmp_path, table):
    path = tmp_path / "opsloop.toml"
    path.write_text(to_toml(table), encoding="utf-8")
    return path


def test_defaults_run_the_embedded_data(tmp_path):
    cfg = config_mod.read(workdir=tmp_path)
    assert cfg.path is None
    assert cfg.data.source == "embedded:asd"
    assert cfg.selected("train") == ["ensemble"]
    assert cfg.options_table("train", "ensemble") == {"members": ["xgboost", "isolation-forest"]}
    assert cfg.project.name == "asd-anomaly"


def test_file_overrides_key_by_key_but_data_whole(tmp_path):
    path = write(tmp_path, {"train": {"xgboost": {"max_depth": 3}}, "data": {"source": "x.csv", "target": "y"}})
    cfg = config_mod.read(path)
    assert cfg.selected("train") == ["ensemble"]  # from the defaults
    assert cfg.options_table("train", "xgboost") == {"early_stopping_rounds": 0, "max_depth": 3}  # default's key kept
    assert cfg.data.train is None  # the embedded data's periods do not leak into the user's data
    assert cfg.project.name == "model"


def test_set_overrides_parse_toml_values(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=[
        "train.xgboost.max_depth=4", 'preprocess.plugins=["impute"]', "project.name=other", "retrain.act=false"])
    assert cfg.options_table("train", "xgboost") == {"early_stopping_rounds": 0, "max_depth": 4}
    assert cfg.selected("preprocess") == ["impute"]
    assert cfg.project.name == "other"
    assert cfg.stages["retrain"].act is False


@pytest.mark.parametrize(("override", "section", "key", "suggestion"), [
    ("trian.plugins=[]", "trian", None, "train"),
    ("project.sed=1", "project", "sed", "seed"),
    ('project.seed="x"', "project", "seed", None),
    ("data.monitor_fraction=true", "data", "monitor_fraction", None),
    ("retrain.act=1", "retrain", "act", None),
])
def test_core_key_errors_name_section_key_and_closest(tmp_path, override, section, key, suggestion):
    with pytest.raises(ConfigError) as info:
        config_mod.read(workdir=tmp_path, overrides=[override])
    err = info.value
    assert (err.section, err.key, err.suggestion) == (section, key, suggestion)
    assert section in str(err)


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "opsloop.toml"
    path.write_text("[train\nplugins = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="opsloop.toml: not valid TOML"):
        config_mod.read(path)


def test_malformed_set_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        config_mod.read(workdir=tmp_path, overrides=["train.plugins"])


def test_unknown_plugin_gets_closest_name(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=['train.plugins=["xgbost"]'])
    with pytest.raises(ConfigError) as info:
        Session.open(cfg)
    assert info.value.section == "train"
    assert 'unknown plugin "xgbost"' in str(info.value)
    assert 'did you mean "xgboost"' in str(info.value)


def test_plugin_option_errors_name_the_plugin_table(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=["train.xgboost.max_depht=3"])
    with pytest.raises(ConfigError) as info:
        Session.open(cfg)
    assert (info.value.section, info.value.key, info.value.suggestion) == ("train.xgboost", "max_depht", "max_depth")


def test_plugin_option_wrong_type(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=['train.xgboost.max_depth="deep"'])
    with pytest.raises(ConfigError) as info:
        Session.open(cfg)
    assert info.value.key == "max_depth"
    assert "expected int" in str(info.value)


def test_table_for_unknown_plugin_is_an_error(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=["preprocess.imptue.strategy=\"mean\""])
    with pytest.raises(ConfigError) as info:
        Session.open(cfg)
    assert info.value.key == "imptue"
    assert info.value.suggestion == "impute"


def test_plugin_selected_for_a_stage_it_does_not_implement(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=['train.plugins=["impute"]'])
    with pytest.raises(ConfigError, match="does not implement the train hook"):
        Session.open(cfg)


def test_train_needs_exactly_one_plugin(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=["train.plugins=[]"])
    with pytest.raises(ConfigError, match="needs exactly 1"):
        Session.open(cfg)


def test_starter_config_checks(tmp_path):
    path = tmp_path / "opsloop.toml"
    path.write_text(config_mod.starter_text(), encoding="utf-8")
    session = Session.open(config_mod.read(path))
    assert session.options_for("train", "xgboost") is not None


def test_config_hash_changes_with_content(tmp_path):
    a = config_mod.read(workdir=tmp_path)
    b = config_mod.read(workdir=tmp_path, overrides=["project.seed=1"])
    assert a.hash != b.hash
    assert a.hash == config_mod.read(workdir=tmp_path).hash


def test_a_string_is_not_a_list(tmp_path):
    with pytest.raises(ConfigError) as info:
        config_mod.read(workdir=tmp_path, overrides=["preprocess.plugins=[impute,scale]"])  # not TOML: a string
    assert info.value.key == "plugins"
    assert "expected a list" in str(info.value)
