"""Options of the built-in preprocess steps: defaults, checks, and config errors that name the key."""

from __future__ import annotations

import math
import re
from pathlib import Path

import attrs
import pytest

from opsloop import config as config_mod
from opsloop.errors import ConfigError
from opsloop.manager import PluginManager
from opsloop.session import Session

DOC = Path(__file__).resolve().parents[2] / "docs" / "stages" / "preprocess.md"

DEFAULTS = {
    "schema-check": {"on_violation": "warn", "range_tolerance": 0.1, "missing_tolerance": 0.1,
                     "max_categories": 1000},
    "impute": {"strategy": "median", "fill_value": 0.0, "add_indicator": False},
    "scale": {"method": "standard"},
    "clip": {"lower_quantile": 0.001, "upper_quantile": 0.999},
    "rolling-features": {"windows": [6, 12], "stats": ["mean", "std", "min", "max", "rate"], "columns": None,
                         "keep_original": True},
    "label-horizon": {"horizon": 12},
}

BAD = [
    ("schema-check", {"on_violation": "drop"}, "on_violation"),
    ("schema-check", {"range_tolerance": -0.5}, "range_tolerance"),
    ("schema-check", {"missing_tolerance": 1.5}, "missing_tolerance"),
    ("schema-check", {"max_categories": 0}, "max_categories"),
    ("impute", {"strategy": "mode"}, "strategy"),
    ("impute", {"fill_value": float("nan")}, "fill_value"),
    ("scale", {"method": "zscore"}, "method"),
    ("clip", {"lower_quantile": -0.1}, "lower_quantile"),
    ("clip", {"upper_quantile": 1.5}, "upper_quantile"),
    ("clip", {"lower_quantile": 0.9, "upper_quantile": 0.1}, "lower_quantile"),
    ("rolling-features", {"windows": []}, "windows"),
    ("rolling-features", {"windows": [6, 0]}, "windows"),
    ("rolling-features", {"windows": [6, 6]}, "windows"),
    ("rolling-features", {"stats": ["mean", "median"]}, "stats"),
    ("rolling-features", {"columns": []}, "columns"),
    ("label-horizon", {"horizon": 0}, "horizon"),
]


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = PluginManager()
    for name in DEFAULTS:
        manager.load(name)
    return manager


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_defaults(pm, name):
    options = pm.options_class(name)()
    assert attrs.asdict(options) == DEFAULTS[name]


@pytest.mark.parametrize(("name", "values", "key"), BAD)
def test_bad_values_raise_a_one_line_error_naming_the_option(pm, name, values, key):
    with pytest.raises((ValueError, TypeError)) as err:
        pm.options_class(name)(**values)
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message and "Attribute(" not in message


@pytest.mark.parametrize(("name", "values", "key"), BAD)
def test_bad_values_in_opsloop_toml_are_config_errors_naming_table_and_key(tmp_path, name, values, key):
    overrides = [f'preprocess.plugins=["{name}"]']
    overrides += [f"preprocess.{name}.{k}={_toml(v)}" for k, v in values.items()]
    cfg = config_mod.read(workdir=tmp_path, overrides=overrides)
    with pytest.raises(ConfigError) as err:
        Session.open(cfg, sections=("preprocess",))
    assert err.value.section == f"preprocess.{name}"
    assert key in str(err.value)


def test_misspelt_option_gets_the_closest_name(tmp_path):
    cfg = config_mod.read(workdir=tmp_path, overrides=['preprocess.plugins=["rolling-features"]',
                                                       "preprocess.rolling-features.window=[3]"])
    with pytest.raises(ConfigError) as err:
        Session.open(cfg, sections=("preprocess",))
    assert (err.value.key, err.value.suggestion) == ("window", "windows")


def test_the_example_in_the_docs_is_a_valid_config(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL).group(1)
    (tmp_path / "opsloop.toml").write_text(example, encoding="utf-8")
    session = Session.open(config_mod.read(tmp_path / "opsloop.toml"), sections=("preprocess",))
    selected = session.config.selected("preprocess")
    assert set(selected) == set(DEFAULTS)
    assert session.options_for("preprocess", "rolling-features").windows == ["30min", "1h", "3h"]
    assert session.options_for("preprocess", "schema-check").on_violation == "reject"


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_the_docs_list_every_option_with_its_default(name):
    text = DOC.read_text(encoding="utf-8")
    assert f"## {name}" in text
    section = text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]
    for key in DEFAULTS[name]:
        assert f"`{key}`" in section, f"{name}: option {key} is not documented"


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
