"""Plugin errors as an author meets them (issue 11, item 4): one line, the plugin and its distribution named,
"did you mean" for a misspelt hook or argument, and an observer's error a warning unless it says it is critical."""

from __future__ import annotations

OBSERVER = """
import attrs
from opsloop import hookimpl

@attrs.frozen(kw_only=True)
class Options:
    critical: bool = False

@hookimpl
def plugin_options():
    return Options

@hookimpl
def on_stage_end(stage, options):
    if stage == "validate":
        raise OSError("disk full\\nwhile writing /var/audit/run.log")
"""


def _audit(make_plugin_dist):
    make_plugin_dist(dist="opsloop-audit", version="2.3", modules={"opsloop_audit": OBSERVER},
                     entry_points={"audit": "opsloop_audit"})


def test_an_observer_that_raises_is_a_warning_and_the_run_goes_on(opsloop_project, make_plugin_dist, hook_recorder,
                                                                   opsloop_console):
    _audit(make_plugin_dist)
    from types import SimpleNamespace

    from opsloop import hookimpl

    heard = []

    @hookimpl
    def on_stage_end(stage):
        heard.append(stage)

    project = opsloop_project(small=True, config={"plugins": {"enable": ["audit", "listener"]}},
                              plugins={"listener": SimpleNamespace(on_stage_end=on_stage_end)})
    data = project.run("run").assert_ok().json
    assert data["versions"][0]["ref"] == "small-telemetry:1"  # registered, deployed, monitored all the same
    stages = [s["stage"] for s in data["stages"]]
    assert stages[-1] == "decide_retrain"
    assert data["warnings"] == ['plugin "audit" (opsloop-audit 2.3) failed in on_stage_end: '
                                "OSError: disk full; while writing /var/audit/run.log"]
    # the other observer heard every stage, the failing one is not called again after its error
    assert heard == stages
    audit = [c.kwargs["stage"] for c in hook_recorder.named("on_stage_end") if c.plugin == "audit"]
    assert audit == stages[:stages.index("validate")]
    # the real console script, as an operator sees it (installed plugins only): the warning on stderr
    from opsloop.testing.data import small_config

    project.write_config(small_config(plugins={"enable": ["audit"]}))
    shown = opsloop_console("validate").assert_ok()
    shown.lines("stderr").fnmatch_lines(['warning: plugin "audit" (opsloop-audit 2.3) failed in on_stage_end: '
                                         "OSError: disk full; while writing /var/audit/run.log (the run goes on*"])
    assert "Traceback" not in shown.stderr


def test_a_critical_observer_ends_the_run_in_one_line(opsloop_project, make_plugin_dist):
    _audit(make_plugin_dist)
    project = opsloop_project(small=True, config={"plugins": {"enable": ["audit"], "audit": {"critical": True}}})
    result = project.run("run").assert_error('plugin "audit" (opsloop-audit 2.3) failed in on_stage_end: OSError: '
                                             "disk full; while writing /var/audit/run.log")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_return_type_names_the_distribution(opsloop_project, make_plugin_dist):
    make_plugin_dist(dist="opsloop-listy", version="0.4", modules={"opsloop_listy": """
        from opsloop import hookimpl

        @hookimpl
        def train(dataset, options, run):
            return [1, 2, 3]
        """}, entry_points={"listy": "opsloop_listy"})
    project = opsloop_project(small=True, config={"train": {"plugins": ["listy"]}})
    project.run("run").assert_error('plugin "listy" (opsloop-listy 0.4) failed in train: '
                                    "TypeError('returned list, expected TrainedModel')")


def test_a_misspelt_hook_suggests_the_spec(opsloop_project, make_plugin_dist):
    make_plugin_dist(dist="opsloop-typo", version="1.1", modules={"opsloop_typo": """
        from opsloop import hookimpl

        @hookimpl
        def decide_retrian(version, reports, options, run):
            return None
        """}, entry_points={"typo": "opsloop_typo"})
    project = opsloop_project(small=True, config={"retrain": {"plugins": ["typo"]}})
    result = project.run("run").assert_error(
        'plugin "typo" (opsloop-typo 1.1) implements "decide_retrian", which is not an opsloop hook '
        '(did you mean "decide_retrain"?)')
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project.path / ".opsloop").exists() or not list((project.path / ".opsloop").rglob("*.skops"))


def test_a_hook_argument_it_is_not_given_is_one_line_with_the_right_names(opsloop_project, make_plugin_dist):
    make_plugin_dist(dist="opsloop-args", version="3.0", modules={"opsloop_args": """
        from opsloop import hookimpl

        @hookimpl
        def monitor(version, current, predictions, refrence, options, run):
            return None
        """}, entry_points={"args": "opsloop_args"})
    result = opsloop_project(small=True).run("plugins", "show", "args")
    result.assert_error('plugin "args" (opsloop-args 3.0) has monitor() take "refrence" (did you mean "reference"?), '
                        "which monitor does not pass; monitor passes version, current, predictions, reference, "
                        "options, run")
    assert "\\n" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_options_class_of_a_plain_observer_needs_no_critical_field(opsloop_project, register_plugin):
    """An observer without `critical` in its options (or with no options) is never critical."""
    from types import SimpleNamespace

    from opsloop import hookimpl

    @hookimpl
    def on_model_registered(version):
        raise RuntimeError(f"could not post {version.ref}")

    project = opsloop_project(small=True, config={"plugins": {"enable": ["poster"]}},
                              plugins={"poster": SimpleNamespace(on_model_registered=on_model_registered)})
    data = project.run("run").assert_ok().json
    assert data["warnings"] == ['plugin "poster" (registered in-process) failed in on_model_registered: '
                                "RuntimeError('could not post small-telemetry:1')"]
