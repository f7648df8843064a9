"""Typed plugin kinds (issue 11, item 5): opsloop.kinds' Protocols against the hookspecs, mypy and the docs.

mypy runs once over tests/core/typed_plugins/ (a typed plugin of every kind, which must pass, and three bad
ones, each of which must fail with its own message) and over the built-in plugins assigned to the kinds they
implement, which must pass; the typed examples also run a whole cycle; the Protocols are compared with the hookspecs by
signature, so the two cannot drift; docs/hooks.md's "Types a plugin receives and builds" is compared with
the attrs classes it documents, field by field.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import attrs
import pytest

from opsloop import hookspecs, kinds, manager
from opsloop.testing import invoke

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = Path(__file__).resolve().parent / "typed_plugins"
KIND_OF = {  # each typed example: the Protocols it declares itself to be (in its TYPE_CHECKING block)
    "typed_trainer": (kinds.Trainer, kinds.Flavor, kinds.Configurable),
    "typed_preprocess": (kinds.PreprocessStep,),
    "typed_validator": (kinds.Validator,),
    "typed_deploy": (kinds.DeployTarget,),
    "typed_monitor": (kinds.Monitor, kinds.Configurable),
    "typed_policy": (kinds.RetrainPolicy,),
    "typed_gate": (kinds.Gate,),
    "typed_store": (kinds.StoreFactory,),
    "typed_source": (kinds.Source,),
    "typed_observer": (kinds.Observer, kinds.OnStageEnd),
    "typed_command": (kinds.CommandPlugin,),
}


def specs() -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT}_spec")}


def protocols() -> dict[str, type]:
    return {n: c for n, c in vars(kinds).items() if isinstance(c, type) and getattr(c, "_is_protocol", False)
            and c.__module__ == kinds.__name__}


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"typed_plugins_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the Protocols against the hookspecs -------------------------------------------------------------------


def test_every_hook_is_in_a_protocol_and_every_protocol_method_is_a_hook():
    covered = {hook for cls in protocols().values() for hook in kinds.hook_names(cls)}
    assert covered == set(specs())


@pytest.mark.parametrize("name", sorted(protocols()))
def test_protocol_methods_take_exactly_the_hookspec_parameters_by_keyword(name):
    """Same names, same annotations (as written), same return type; keyword-only, as pluggy calls them."""
    cls = protocols()[name]
    for hook in kinds.hook_names(cls):
        method = inspect.signature(getattr(cls, hook))
        params = list(method.parameters.values())
        assert params[0].name == "self"
        spec = specs()[hook]
        assert [(p.name, p.annotation) for p in params[1:]] == [(p.name, p.annotation) for p in
                                                                 spec.parameters.values()], f"{name}.{hook}"
        assert {p.kind for p in params[1:]} <= {inspect.Parameter.KEYWORD_ONLY}, f"{name}.{hook}"
        assert method.return_annotation == spec.return_annotation, f"{name}.{hook}"


def test_every_stage_has_its_kind_with_the_stage_hook():
    assert set(kinds.STAGES) == set(manager.STAGE_HOOKS)
    for stage, hook in manager.STAGE_HOOKS.items():
        assert hook in kinds.hook_names(kinds.STAGES[stage]), stage


def test_kinds_cover_every_kind_the_scaffold_offers():
    assert {"trainer", "preprocess", "monitor", "policy", "deploy", "store", "observer", "command"} <= set(kinds.KINDS)
    assert set(kinds.STAGES.values()) <= set(kinds.KINDS.values())


def test_hook_names_lists_the_methods_of_the_protocol_and_its_bases():
    assert kinds.hook_names(kinds.DeployTarget) == ("deploy", "deploy_status", "undeploy")
    assert kinds.hook_names(kinds.Observer) == ("on_alias_changed", "on_model_registered", "on_stage_end",
                                                "on_stage_error", "on_stage_start")


def test_importing_kinds_imports_no_heavy_library():
    code = ("import sys, opsloop.kinds; heavy = [m for m in ('pandas', 'typer', 'sklearn', 'xgboost', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- mypy on typed plugin modules ---------------------------------------------------------------------------


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def mypy_search_path(tmp: Path) -> Path:
    """A directory where mypy finds `opsloop` (and `opsloop.plugins`) as the interpreter does.

    An editable install maps `opsloop` to core/ (and `opsloop.plugins` to plugins/) through an import hook,
    which mypy cannot follow; a tree of links to the package's files works for editable and regular installs.
    """
    tree = tmp / "mypy_path" / "opsloop"
    tree.mkdir(parents=True)
    for entry in package_dir("opsloop").iterdir():
        (tree / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if not (tree / "plugins").exists():  # editable: the built-ins live apart, in plugins/
        (tree / "plugins").symlink_to(package_dir("opsloop.plugins"), target_is_directory=True)
    return tree.parent


def builtin_kinds() -> list[tuple[str, str]]:
    """(module, Protocol) for every built-in plugin and every Protocol whose hooks it implements with every
    argument of the spec (an implementation that takes fewer, as pluggy allows, does not match a Protocol).

    A hook left out of a module's `__all__` is private to mypy, so the module would not match: mypy's run below
    fails on such a pair, so every built-in exports its hooks (pluggy would find them all the same).
    """
    import importlib.metadata as im

    found = []
    for ep in im.entry_points(group=manager.GROUP):
        if ep.dist is None or ep.dist.metadata["Name"] != "opsloop":
            continue
        module = ep.load()
        for name, cls in sorted(protocols().items()):
            impls = [getattr(module, hook, None) for hook in kinds.hook_names(cls)]
            if all(impl is not None and hasattr(impl, f"{hookspecs.PROJECT}_impl")
                   and set(inspect.signature(impl).parameters) == set(specs()[hook].parameters)
                   for impl, hook in zip(impls, kinds.hook_names(cls), strict=True)):
                found.append((module.__name__, name))
    return sorted(set(found))


@pytest.fixture(scope="module")
def mypy_findings(tmp_path_factory) -> dict[str, list[str]]:
    """One mypy run over every example module and over the built-ins assigned to their kinds: output lines,
    by file."""
    tmp = tmp_path_factory.mktemp("mypy")
    checks = ["from opsloop import kinds"]
    for i, (module, kind) in enumerate(builtin_kinds()):
        checks += [f"import {module}", f"_{i}: kinds.{kind} = {module}"]
    (tmp / "builtin_kinds.py").write_text("\n".join(checks) + "\n")
    env = {"MYPYPATH": str(mypy_search_path(tmp)), "PATH": "/usr/bin:/bin"}
    files = [*sorted(p.name for p in EXAMPLES.glob("*.py")), str(tmp / "builtin_kinds.py")]
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(tmp / "cache"),
                          "--no-error-summary", "--hide-error-context", *files],
                         cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 2: mypy itself failed (a crash, bad config)
    findings: dict[str, list[str]] = {Path(name).name: [] for name in files}
    for line in out.stdout.splitlines():
        file, _, rest = line.partition(":")
        assert Path(file).name in findings, f"mypy reported on a module it was not asked about: {line}"
        findings[Path(file).name].append(rest)
    return findings


def test_the_builtin_plugins_match_their_kinds_under_mypy(mypy_findings):
    """The Protocols describe real plugins: every built-in whose hooks take every argument matches them."""
    checked = {kind for _, kind in builtin_kinds()}
    assert {"Trainer", "Tunable", "Flavor", "PredictCompiler", "PreprocessStep", "RowCompiler", "Windowed",
            "PartitionFitter", "Validator", "DeployTarget", "RetrainPolicy", "Gate", "StoreFactory",
            "Configurable"} <= checked
    assert mypy_findings["builtin_kinds.py"] == []


@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_a_typed_plugin_of_each_kind_passes_mypy_strict(mypy_findings, name):
    assert mypy_findings[f"{name}.py"] == []


@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("bad_return", "Trainer", ["Got:", "def train(dataset: Dataset, options: Any, run: RunContext) -> dict[str, float]",
                               "def train(*, dataset: Dataset, options: Any, run: RunContext) -> TrainedModel"]),
    ("bad_name", "PreprocessStep", ["Got:", "def preprocess(datset: Dataset,"]),
    ("bad_missing", "DeployTarget", ['is missing following "DeployTarget" protocol member', "undeploy"]),
])
def test_mypy_refuses_a_wrong_return_type_a_misspelt_parameter_and_a_missing_hook(mypy_findings, name, kind,
                                                                                 expected):
    lines = mypy_findings[f"{name}.py"]
    errors = [line for line in lines if " error: " in line]
    assert len(errors) == 1, lines
    assert f'Incompatible types in assignment (expression has type Module, variable has type "{kind}")' in errors[0]
    text = "\n".join(lines)
    for fragment in expected:
        assert fragment in text, text


# -- the typed examples are real plugins ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_each_typed_plugin_is_an_instance_of_its_kinds_and_loads(name):
    module = load_example(name)
    for kind in KIND_OF[name]:
        assert isinstance(module, kind), f"{name} lacks a hook of {kind.__name__}"
    pm = manager.PluginManager(known={}, conflicts={})
    pm.add(module, name.replace("_", "-"))
    pm.load(name.replace("_", "-"))  # registers and checks every hookimpl against its spec


def test_a_module_without_a_hook_of_its_kind_is_not_an_instance():
    assert not isinstance(load_example("bad_missing"), kinds.DeployTarget)
    assert not isinstance(load_example("typed_monitor"), kinds.Trainer)


@pytest.mark.slow
def test_typed_plugins_run_a_whole_cycle_on_real_data(opsloop_project):
    """Source, store, preprocess, trainer with its own flavor, validator, deploy target, monitor, policy,
    observer and command: every stage of `opsloop run` on the typed examples alone."""
    names = ["typed_source", "typed_store", "typed_preprocess", "typed_trainer", "typed_validator", "typed_deploy",
             "typed_monitor", "typed_policy", "typed_observer", "typed_command"]
    plugins = {n.replace("_", "-"): load_example(n) for n in names}
    project = opsloop_project(small=True, plugins=plugins, config={
        "data": {"source": "typed-csv:telemetry.csv", "plugin": "typed-source"},
        "store": {"uri": "typed:registry", "plugins": ["typed-store"]},
        "preprocess": {"plugins": ["typed-preprocess"]},
        "train": {"plugins": ["typed-trainer"], "typed-trainer": {"c": 0.5}},
        "validate": {"plugins": ["typed-validator"]},
        "deploy": {"plugins": ["typed-deploy"]},
        "monitor": {"plugins": ["typed-monitor"], "typed-monitor": {"max_alert_rate": 0.0}},
        "retrain": {"plugins": ["typed-policy"]},
        "plugins": {"enable": ["typed-observer", "typed-command"]},
    })
    result = project.run("run").assert_ok()
    stages = result.stages
    for stage, plugin in [("preprocess", "typed-preprocess"), ("train", "typed-trainer"),
                          ("validate", "typed-validator"), ("deploy", "typed-deploy"),
                          ("monitor", "typed-monitor"), ("decide_retrain", "typed-policy")]:
        assert (stage, plugin) in stages, repr(stages)
    decision = result.json["decision"]  # the monitor's alert (ceiling 0%) reached the policy
    assert decision["retrain"] is True and decision["reasons"][0].startswith("typed-policy: typed-monitor: alerting on")
    assert (project.path / "registry" / "registry.db").is_file()  # the typed store's registry
    predictions = (project.path / "small-telemetry.typed-predictions.csv").read_text().splitlines()
    assert predictions[1].startswith("small-telemetry:1,")
    events = (project.path / "events.log").read_text().splitlines()
    assert "start train typed-trainer" in events and "registered small-telemetry:1" in events
    assert invoke(["typed-command", "hello", "kinds"], project.path).assert_ok().stdout.strip() == "hello kinds"


# -- docs/hooks.md, "Types a plugin receives and builds", against the code ---------------------------------------

#: Classes from other modules that hooks pass to plugins, documented beside opsloop.types'.
OTHER_TYPES = {"LoadedModel": "opsloop.bundle", "ModelFiles": "opsloop.bundle", "AliasChange": "opsloop.store"}
FIELD = re.compile(r"^- `(\w+)`:\s+`([^`]+)`,\s+(required|default\s+`([^`]*)`)\.", re.MULTILINE)


def documented_classes() -> dict[str, type]:
    import opsloop.types

    found = {n: c for n, c in vars(opsloop.types).items()
             if isinstance(c, type) and attrs.has(c) and c.__module__ == "opsloop.types" and not n.startswith("_")}
    for name, module in OTHER_TYPES.items():
        found[name] = getattr(importlib.import_module(module), name)
    return found


def types_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    start = text.index("\n## Types a plugin receives and builds\n")
    end = text.find("\n## ", start + 1)
    part = text[start:] if end < 0 else text[start:end]
    return {chunk.split("\n", 1)[0].strip(): chunk for chunk in part.split("\n### ")[1:]}


def default_text(field: attrs.Attribute) -> str | None:
    """How the docs write a field's default: None for a factory the docs may describe in words."""
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory = default.factory
        known = {dict: "{}", list: "[]", tuple: "()", frozenset: "frozenset()"}
        if factory in known:
            return known[factory]
        return f"{factory.__name__}()" if isinstance(factory, type) else None
    return '""' if default == "" and isinstance(default, str) else (
        f'"{default}"' if isinstance(default, str) else repr(default))


def test_every_type_a_plugin_meets_has_a_section_in_docs_hooks_md():
    sections = types_sections()
    assert set(sections) == set(documented_classes()), "docs/hooks.md: a class without a section, or a section " \
                                                        "for a class that no longer exists"


@pytest.mark.parametrize("name", sorted(documented_classes()))
def test_each_documented_field_has_the_name_type_and_default_of_the_code(name):
    cls = documented_classes()[name]
    section = types_sections().get(name, "")
    module = OTHER_TYPES.get(name, "opsloop.types")
    assert f"`{module}.{name}`" in section, f"### {name}: say its full name, `{module}.{name}`"
    documented = {m.group(1): m for m in FIELD.finditer(section)}
    fields = {f.name: f for f in attrs.fields(cls)}
    assert list(documented) == list(fields), f"### {name}: fields (in the code's order) differ"
    for field_name, field in fields.items():
        match = documented[field_name]
        written = " ".join(match.group(2).split())  # a type may wrap onto the next line
        assert written == field.type, f"{name}.{field_name}: type is `{field.type}` in the code"
        expected = default_text(field)
        if expected == "required":
            assert match.group(3) == "required", f"{name}.{field_name} has no default"
        elif expected is None:
            assert match.group(3) != "required", f"{name}.{field_name} has a default"
        else:
            assert match.group(4) == expected, f"{name}.{field_name}: default is `{expected}` in the code"


@pytest.mark.parametrize("name", sorted(documented_classes()))
def test_each_documented_type_names_its_public_methods(name):
    cls = documented_classes()[name]
    section = types_sections().get(name, "")
    public = [n for n, v in vars(cls).items() if not n.startswith("_")
              and (inspect.isfunction(v) or isinstance(v, (property, classmethod, staticmethod)))]
    for method in public:
        assert re.search(rf"`{method}[`(]", section), f"### {name}: `{method}` is not mentioned"


def test_trained_model_params_are_documented_as_what_the_version_registers():
    section = types_sections()["TrainedModel"]
    assert "registered version's `params`" in section and "shows `{}`" in section
