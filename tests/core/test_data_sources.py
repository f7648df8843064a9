"""Data sources are plugins (issue 10, item 1): `load_data`, chosen by `[data] plugin` or the source's URI scheme;
the built-in `files` and `embedded` sources; observers get their own options through the hook call."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from opsloop import data as data_mod
from opsloop import hookimpl
from opsloop.config import DataSection, read
from opsloop.errors import ConfigError, DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SMALL  # noqa: E402

SERVERS = ["omi-1", "omi-9"]


@attrs.frozen(kw_only=True)
class InventoryOptions:
    servers: list[str] = attrs.field(factory=lambda: list(SERVERS))
    rename_time: bool = True


def inventory_plugin(calls: list[dict]):
    """A third-party source: reads "inventory:<set>" (real ASD rows of the servers its options name), and
    names its time column after `[data] time`, as a source without names of its own does."""

    @hookimpl
    def plugin_options():
        return InventoryOptions

    @hookimpl
    def load_data(source, options, data, workdir):
        from opsloop import datasets

        calls.append({"source": source, "options": options, "data": data, "workdir": workdir})
        frame = datasets.load(source.rsplit(":", 1)[-1].rsplit("/", 1)[-1])  # inventory:asd, https://.../asd
        frame = frame[frame["entity"].isin(options.servers)].rename(columns={"timestamp": "ts"})
        return frame.rename(columns={"ts": data.time}) if options.rename_time else frame

    return SimpleNamespace(plugin_options=plugin_options, load_data=load_data)


def test_the_scheme_names_the_plugin_and_path_embedded_and_file_uris_are_built_in():
    plugin = data_mod.source_plugin
    assert plugin(DataSection(source="prometheus://127.0.0.1:9090")) == "prometheus"
    assert plugin(DataSection(source="prometheus+https://prom.example")) == "prometheus"
    assert plugin(DataSection(source="embedded:asd")) == "embedded"
    assert plugin(DataSection(source="data/telemetry.csv")) == "files"
    assert plugin(DataSection(source="file:///srv/telemetry.parquet")) == "files"
    assert plugin(DataSection(source=r"C:\data\telemetry.csv")) == "files"  # a drive letter is not a scheme
    assert plugin(DataSection(source="https://prom.example:9090", plugin="prometheus")) == "prometheus"


def test_a_third_party_source_feeds_a_whole_run_with_its_options_and_the_data_section(opsloop_project):
    calls: list[dict] = []
    config = {**SMALL, "data": {**SMALL["data"], "source": "inventory:asd",
                                "inventory": {"servers": ["omi-1", "omi-9", "omi-10", "omi-11"]}}}
    project = opsloop_project(config=config, plugins={"inventory": inventory_plugin(calls)})
    result = project.run("run").assert_ok()
    assert calls and calls[0]["source"] == "inventory:asd"
    assert calls[0]["options"] == InventoryOptions(servers=["omi-1", "omi-9", "omi-10", "omi-11"])
    assert calls[0]["data"].time == "timestamp" and Path(calls[0]["workdir"]) == project.path
    version = result.json["versions"][0]
    shown = project.run("models", "show", version["ref"], "--json").assert_ok().json
    assert shown["lineage"]["data"]["source"].startswith("inventory:asd")


def test_plugin_names_the_source_when_the_scheme_does_not(opsloop_project):
    calls: list[dict] = []
    config = {**SMALL, "data": {**SMALL["data"], "source": "https://inventory.example/asd", "plugin": "inventory"}}
    project = opsloop_project(config=config, plugins={"inventory": inventory_plugin(calls)})
    project.run("config", "check").assert_ok()
    rows = data_mod.load(read(project.config_path)).frame
    assert calls[-1]["source"] == "https://inventory.example/asd"
    assert sorted(rows["entity"].unique()) == SERVERS and len(rows) == 2 * 4320


def test_an_uninstalled_scheme_plugin_is_one_line_naming_the_source(opsloop_project):
    project = opsloop_project(config={**SMALL, "data": {**SMALL["data"], "source": "graphite://127.0.0.1:9"}})
    result = project.run("config", "check").assert_error("graphite://127.0.0.1:9", "opsloop-graphite",
                                                         "[data] plugin")
    assert len(result.stderr.strip().splitlines()) == 1


def test_options_of_the_source_plugin_are_checked_before_anything_runs(opsloop_project):
    calls: list[dict] = []
    config = {**SMALL, "data": {**SMALL["data"], "source": "inventory:asd", "inventory": {"server": ["omi-1"]}}}
    project = opsloop_project(config=config, plugins={"inventory": inventory_plugin(calls)})
    project.run("run").assert_error("data.inventory", "server")
    assert calls == []
    # a table for a source plugin that is not the one reading, or for none at all
    config["data"] = {**SMALL["data"], "inventroy": {"servers": ["omi-1"]}}
    project.write_config(config)
    project.run("config", "check").assert_error("inventroy", "inventory")
    config["data"] = {**SMALL["data"], "embedded": {"servers": ["omi-1"]}}
    project.write_config(config)
    project.run("config", "check").assert_error("embedded", "takes no options")


def test_a_failing_or_wrong_source_names_its_plugin_and_registers_nothing(opsloop_project):
    @hookimpl
    def load_data(source):
        raise DataError(f"inventory: cannot reach {source}: connection refused")

    @hookimpl
    def wrong(source):
        return [1, 2, 3]

    project = opsloop_project(config={**SMALL, "data": {**SMALL["data"], "source": "inventory:asd"}},
                              plugins={"inventory": SimpleNamespace(load_data=load_data),
                                       "listy": SimpleNamespace(load_data=wrong)})
    project.run("run").assert_error('plugin "inventory"', "load_data", "cannot reach inventory:asd")
    project.write_config({**SMALL, "data": {**SMALL["data"], "source": "listy:asd"}})
    project.run("run").assert_error('plugin "listy"', "list", "not a pandas DataFrame")
    assert "asd-anomaly" not in project.run("models", "list").assert_ok().stdout


def test_a_plugin_that_reads_no_data_cannot_be_the_source(opsloop_project):
    project = opsloop_project(config={**SMALL, "data": {**SMALL["data"], "plugin": "kfold"}})
    project.run("config", "check").assert_error("kfold", "load_data")
    # files named for an embedded set: said, not a "file not found" on a path named "embedded:asd"
    project.write_config({**SMALL, "data": {**SMALL["data"], "plugin": "files"}})
    project.run("run").assert_error("embedded:asd", "embedded dataset, not a file", "[data] plugin")


def test_files_reads_a_folder_of_parquet_and_a_file_uri_like_the_single_file(tmp_path):
    from opsloop import datasets

    frame = datasets.load("asd")
    frame = frame[frame["entity"].isin(SERVERS)].reset_index(drop=True)
    folder = tmp_path / "parts"
    for server, rows in frame.groupby("entity"):
        (folder / f"entity={server}").mkdir(parents=True)
        rows.drop(columns="entity").to_parquet(folder / f"entity={server}" / "part-0.parquet", index=False)
    frame.to_csv(tmp_path / "one.csv", index=False)
    base = {"target": "label", "time": "timestamp", "series": "entity"}
    from_folder = data_mod.load(_config(tmp_path, {**base, "source": "parts"})).frame
    from_uri = data_mod.load(_config(tmp_path, {**base, "source": (tmp_path / "one.csv").as_uri()})).frame
    key = ["entity", "timestamp"]
    for got in (from_folder, from_uri):
        got = got.assign(entity=got["entity"].astype(str)).sort_values(key).reset_index(drop=True)
        expected = frame.sort_values(key).reset_index(drop=True)
        assert len(got) == len(expected)
        assert (got["label"].to_numpy() == expected["label"].to_numpy()).all()
        # float32 in the embedded set, its decimal text in the CSV
        assert abs(got["m01"].to_numpy() - expected["m01"].to_numpy()).max() < 1e-6
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet file"):
        data_mod.load(_config(tmp_path, {**base, "source": "empty"}))
    with pytest.raises(DataError, match="data file not found"):
        data_mod.load(_config(tmp_path, {**base, "source": "missing.csv"}))
    with pytest.raises(ConfigError, match="unknown embedded|asdf"):
        data_mod.load(_config(tmp_path, {**base, "source": "embedded:asdf"}))


def _config(workdir: Path, data: dict):
    from opsloop.config import Config, default_table

    table = default_table()
    table["data"] = data
    return Config.from_table(table, workdir=workdir)


@attrs.frozen(kw_only=True)
class WatcherOptions:
    stages: list[str] = attrs.field(factory=list)


def test_observers_get_their_own_options_through_every_hook_call(opsloop_project):
    seen: list[tuple[str, object]] = []

    @hookimpl
    def plugin_options():
        return WatcherOptions

    @hookimpl
    def on_stage_end(stage, options):
        if stage in options.stages:
            seen.append((stage, options))

    @hookimpl
    def on_model_registered(version, options):
        seen.append(("registered", options))

    @hookimpl
    def on_alias_changed(change, run, options):
        seen.append((f"alias {change.alias} by {'run' if run else 'cli'}", options))

    watcher = SimpleNamespace(plugin_options=plugin_options, on_stage_end=on_stage_end,
                              on_model_registered=on_model_registered, on_alias_changed=on_alias_changed)
    config = {**SMALL, "plugins": {"enable": ["watcher"], "watcher": {"stages": ["train"]}}}
    project = opsloop_project(config=config, plugins={"watcher": watcher})
    ref = project.run("run").assert_ok().json["versions"][0]["ref"]
    name, version = ref.split(":")
    project.run("models", "promote", name, version, "--alias", "staging", "--reason", "test").assert_ok()
    expected = WatcherOptions(stages=["train"])
    kinds = [kind for kind, _ in seen]
    assert "train" in kinds and "registered" in kinds and "alias staging by cli" in kinds
    assert "validate" not in kinds  # its options said train only
    assert all(options == expected for _, options in seen)


@attrs.frozen(kw_only=True)
class TrackerOptions:
    url: str = attrs.field(default="http://127.0.0.1:5000", metadata={"shapes_model": False})
    label: str = "a"  # no mark: part of the training key, as any option is


def test_options_marked_as_not_shaping_the_model_reuse_the_version(opsloop_project):
    @hookimpl
    def plugin_options():
        return TrackerOptions

    @hookimpl
    def on_model_registered(version, options):
        pass

    tracker = SimpleNamespace(plugin_options=plugin_options, on_model_registered=on_model_registered)
    config = {**SMALL, "plugins": {"enable": ["tracker"], "tracker": {"url": "http://127.0.0.1:5000"}}}
    project = opsloop_project(config=config, plugins={"tracker": tracker})
    first = project.run("run").assert_ok().json
    assert first["versions"][0]["ref"] == "asd-anomaly:1"
    config["plugins"]["tracker"]["url"] = "http://tracking.example:5000"  # where it reports: the same model
    project.write_config(config)
    assert project.run("run").assert_ok().json["unchanged"] == ["asd-anomaly:1"]
    config["plugins"]["tracker"]["label"] = "b"  # an unmarked option counts
    project.write_config(config)
    third = project.run("run").assert_ok().json
    assert third["unchanged"] == [] and third["versions"][0]["ref"] == "asd-anomaly:2"
