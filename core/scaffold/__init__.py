"""`opsloop new-plugin`: write the skeleton of a plugin package, one kind at a time (issue 11, item 3).

A skeleton is what docs/writing-plugins.md describes, ready to install and
test: `opsloop-NAME/` with a `pyproject.toml` (entry point `NAME` in the
group `opsloop`), the module `opsloop_NAME` (its hooks typed with opsloop's
types, an attrs options class, a small working implementation), a README,
and tests that use the kit (`opsloop.testing`) and, for the kinds that have
one, the kind's conformance suite in one line.

The files are templates under `opsloop/scaffold/templates/`: `common/` for
every kind, and one folder per kind. They are `string.Template`s: `$name`
(the entry point), `$dist`, `$module`, `$title`, `$kind`, `$protocol`; a
literal dollar sign is `$$`. Template file names say where they go:
`module.py` becomes `opsloop_NAME/__init__.py`, `test.py` becomes
`tests/test_NAME.py`.
"""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

import attrs

from opsloop.errors import OpsloopError, closest

#: The kinds, each with the hooks its module implements and its conformance suite (None: kit-based tests).
KINDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "trainer": (("plugin_options", "train"), "TrainerSuite"),
    "preprocess": (("plugin_options", "preprocess", "compile_rows"), "PreprocessSuite"),
    "monitor": (("plugin_options", "monitor"), "MonitorSuite"),
    "policy": (("plugin_options", "decide_retrain"), "PolicySuite"),
    "deploy": (("plugin_options", "deploy", "deploy_status", "undeploy"), "DeploySuite"),
    "store": (("open_store",), "StoreSuite"),
    "source": (("plugin_options", "load_data"), "SourceSuite"),
    "validator": (("plugin_options", "validate"), "ValidatorSuite"),
    "gate": (("plugin_options", "gate"), "GateSuite"),
    "observer": (("plugin_options", "on_stage_start", "on_stage_end", "on_stage_error", "on_model_registered",
                  "on_alias_changed", "on_run_end"), None),
    "command": (("add_commands",), None),
}

#: The `opsloop.kinds` Protocol each kind's module satisfies (checked by mypy in the generated tests).
PROTOCOLS = {"trainer": "Trainer", "preprocess": "PreprocessStep", "monitor": "Monitor", "policy": "RetrainPolicy",
             "deploy": "DeployTarget", "store": "StoreFactory", "source": "Source", "validator": "Validator",
             "gate": "Gate", "observer": "Observer", "command": "CommandPlugin"}

#: A plugin name: what operators type and the entry point's name (lowercase words joined by "-").
NAME_RE = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

#: Where each template goes in the package (`{module}` and `{name}` filled in).
PLACES = {
    "pyproject.toml": "pyproject.toml",
    "README.md": "README.md",
    "conftest.py": "tests/conftest.py",
    "py.typed": "{module}/py.typed",
    "module.py": "{module}/__init__.py",
    "test.py": "tests/test_{module_tail}.py",
    "config.toml": None,  # the kind's config snippet, inserted into README.md
    "about.md": None,  # what the kind's example does, inserted into README.md
}


@attrs.frozen(kw_only=True)
class Skeleton:
    """What `generate` wrote.

    Attributes:
        root: The package directory (`opsloop-NAME`).
        files: The files written, relative to `root`.
    """

    root: Path
    files: tuple[str, ...]


def check_name(name: str) -> str:
    """The plugin name, or an OpsloopError saying what a valid one looks like (and the closest)."""
    if NAME_RE.fullmatch(name):
        if name.startswith("opsloop-") or name == "opsloop":
            bare = name.removeprefix("opsloop-")
            hint = f' (did you mean "{bare}"?)' if bare != name else ""
            raise OpsloopError(f'new-plugin: NAME "{name}" is the plugin\'s name, without "opsloop-": the '
                               f'distribution is named opsloop-NAME{hint}')
        return name
    fixed = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    fixed = fixed.removeprefix("opsloop-")
    hint = f' (did you mean "{fixed}"?)' if fixed and NAME_RE.fullmatch(fixed) and fixed != name else ""
    raise OpsloopError(f'new-plugin: NAME "{name}" is not a valid plugin name: use lowercase letters and digits, '
                       f'words joined by "-", starting with a letter{hint}')


def check_kind(kind: str) -> str:
    """The kind, or an OpsloopError listing the kinds (and the closest)."""
    if kind in KINDS:
        return kind
    hint = closest(kind, KINDS)
    did = f' (did you mean "{hint}"?)' if hint else ""
    raise OpsloopError(f'new-plugin: unknown --kind "{kind}"{did}; kinds: {", ".join(KINDS)}')


def _template(kind_dir: str, file: str) -> str | None:
    node = resources.files("opsloop.scaffold").joinpath("templates", kind_dir, file)
    return node.read_text(encoding="utf-8") if node.is_file() else None


def render(name: str, kind: str) -> dict[str, str]:
    """The skeleton's files (relative path -> text) for a plugin `name` of `kind`, checked first."""
    check_name(name)
    check_kind(kind)
    module = "opsloop_" + name.replace("-", "_")
    words = {
        "name": name, "dist": f"opsloop-{name}", "module": module, "kind": kind,
        "title": " ".join(w.capitalize() for w in name.split("-")),
        "protocol": PROTOCOLS[kind], "suite": KINDS[kind][1] or "",
    }
    texts: dict[str, str] = {}
    for file in PLACES:
        own = _template(kind, file)
        text = own if own is not None else _template("common", file)
        if text is not None:
            texts[file] = string.Template(text).substitute(words)
    readme = texts["README.md"].replace("@ABOUT@\n", texts.pop("about.md", "")).replace(
        "@CONFIG@\n", texts.pop("config.toml", ""))
    texts["README.md"] = readme
    out = {}
    for file, text in texts.items():
        place = PLACES[file]
        if place is not None:
            out[place.format(module=module, module_tail=module.removeprefix("opsloop_"))] = text
    return out


def generate(name: str, kind: str, directory: Path, *, force: bool = False) -> Skeleton:
    """Write the skeleton of `opsloop-NAME` into `directory/opsloop-NAME`.

    Refuses (OpsloopError, one line) a bad name, an unknown kind, a name an
    installed plugin already has, and a target that exists and is not empty
    unless `force` (which overwrites the skeleton's own files and leaves any
    other file there alone).
    """
    files = render(name, kind)
    _check_not_installed(name, force=force)
    root = Path(directory) / f"opsloop-{name}"
    if root.exists() and not root.is_dir():
        raise OpsloopError(f"new-plugin: {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise OpsloopError(f"new-plugin: {root} already exists and is not empty; choose another --dir, or "
                           "--force to overwrite the skeleton's files in it")
    try:
        for rel, text in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OpsloopError(f"new-plugin: cannot write {exc.filename or root}: {exc.strerror or exc}") from None
    return Skeleton(root=root, files=tuple(files))


def _check_not_installed(name: str, *, force: bool) -> None:
    """A name an installed plugin has would clash with it once the new package is installed (unless it is
    this very package, installed from an earlier skeleton, and `force` rewrites it)."""
    from opsloop.manager import discover

    known, _ = discover()
    if name in known and not (force and known[name].dist == f"opsloop-{name}"):
        info = known[name]
        raise OpsloopError(f'new-plugin: a plugin named "{name}" is already installed ({info.label}); '
                           "choose another NAME")
