"""A plugin without a stage reads its own options the documented way (issue 11, item 4): observers through the
hook's `options`, a command through `opsloop.session.plugin_options(name)`."""

from __future__ import annotations

GREETER = """
import attrs
import typer
from opsloop import hookimpl
from opsloop.session import plugin_options as read_options


@attrs.frozen(kw_only=True)
class Options:
    greeting: str = "hello"
    times: int = 1


@hookimpl
def plugin_options():
    return Options


@hookimpl
def add_commands(app):
    @app.command("greet")
    def greet(who: str) -> None:
        options = read_options("greeter")
        for _ in range(options.times):
            print(f"{options.greeting}, {who}")
"""


def _greeter(make_plugin_dist):
    make_plugin_dist(dist="opsloop-greeter", version="0.1", modules={"opsloop_greeter": GREETER},
                     entry_points={"greeter": "opsloop_greeter"})


def test_a_command_plugin_reads_its_table(opsloop_project, make_plugin_dist, opsloop_console):
    _greeter(make_plugin_dist)
    opsloop_project(small=True, config={"plugins": {"enable": ["greeter"],
                                                    "greeter": {"greeting": "good morning", "times": 2}}})
    result = opsloop_console("greeter", "greet", "on-call").assert_ok()
    assert result.stdout.splitlines() == ["good morning, on-call", "good morning, on-call"]


def test_a_wrong_value_in_its_table_is_one_line(opsloop_project, make_plugin_dist, opsloop_console):
    _greeter(make_plugin_dist)
    opsloop_project(small=True, config={"plugins": {"enable": ["greeter"], "greeter": {"tiems": 2}}})
    result = opsloop_console("greeter", "greet", "on-call").assert_error("[plugins.greeter", "tiems")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_plugin_the_config_does_not_use_has_no_options(opsloop_project, make_plugin_dist):
    _greeter(make_plugin_dist)
    project = opsloop_project(small=True)
    import pytest

    from opsloop.errors import ConfigError
    from opsloop.session import plugin_options

    with pytest.raises(ConfigError, match='plugin "greeter" is neither in \\[plugins\\] enable nor selected'):
        plugin_options("greeter", project.config_path)
    assert plugin_options("xgboost", project.config_path).n_estimators == 30  # a stage plugin: its stage table
