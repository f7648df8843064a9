"""`opsloop plugins list|show`: what is installed, from which distribution, and whether it loads."""

from __future__ import annotations

from typing import Annotated, Any

import attrs
import typer

from opsloop.cli._options import JsonOption

plugins_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect installed plugins.")


def _rows(pm: Any) -> list[dict[str, Any]]:
    rows = []
    for name in sorted({*pm.known, *pm.conflicts}):
        if name in pm.conflicts:
            rows.append({"name": name, "dist": " and ".join(pm.conflicts[name]), "version": "", "status": "conflict",
                         "hooks": [], "summary": "registered by more than one distribution", "error": None})
            continue
        info = pm.known[name]
        broken = pm.broken.get(name)
        rows.append({
            "name": name, "dist": info.dist, "version": info.version, "module": info.value,
            "status": "broken" if broken else "ok",
            "hooks": pm.hooks_of(name), "summary": pm.describe(name),
            "error": repr(broken) if broken else None,
        })
    return rows


@plugins_app.command("list")
def list_(json_: JsonOption = False) -> None:
    """List installed plugins; a plugin that fails to import is shown as broken, with the reason."""
    from opsloop.cli._render import console, print_json, table
    from opsloop.manager import PluginManager

    pm = PluginManager()
    if not pm.known and not pm.conflicts:
        raise _not_installed()
    pm.try_load_everything()
    rows = _rows(pm)
    if json_:
        print_json(rows)
        return
    from rich.markup import escape  # a docstring's "[data] source" is text, not a style

    console.print(table(None, ["plugin", "distribution", "status", "hooks", "summary"],
                        ([r["name"], f"{r['dist']} {r['version']}".strip(),
                          r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/red]: {escape(r['error'] or '')}",
                          ", ".join(h for h in r["hooks"] if h != "plugin_options"), escape(r["summary"])]
                         for r in rows)))


def _not_installed() -> Exception:
    from opsloop.errors import OpsloopError

    return OpsloopError("no opsloop plugins found: opsloop is not installed (pip install -e .)")


def option_fields(cls: type | None) -> list[dict[str, Any]]:
    """Name, type, default and description of each field of an options class."""
    if cls is None:
        return []
    docs = _attribute_docs(cls.__doc__ or "")
    out = []
    for f in attrs.fields(cls):
        default: Any = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[union-attr]
        elif default is attrs.NOTHING:
            default = "(required)"
        out.append({"name": f.name, "type": _type_name(f.type), "default": default, "help": docs.get(f.name, "")})
    return out


def _type_name(tp: Any) -> str:
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def _attribute_docs(doc: str) -> dict[str, str]:
    """Field descriptions from a Google-style `Attributes:` section."""
    import inspect

    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    current = None
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        stripped = line.strip()
        if line.startswith("    ") and not line.startswith("        ") and ":" in stripped:
            current, _, text = stripped.partition(":")
            current = current.split(" ")[0]
            out[current] = text.strip()
        elif current and stripped:
            out[current] += " " + stripped
    return out


@plugins_app.command("show")
def show(name: Annotated[str, typer.Argument(help="The plugin's name, as in `plugins list`.")],
         json_: JsonOption = False) -> None:
    """Show a plugin: distribution, hooks it implements, and its options with defaults."""
    from opsloop.cli._render import console, print_json, table
    from opsloop.manager import PluginManager

    pm = PluginManager()
    pm.load(name, where="plugins show")
    info = pm.known[name]
    fields = option_fields(pm.options_class(name))
    data = {"name": name, "dist": info.dist, "version": info.version, "module": info.value,
            "summary": pm.describe(name), "hooks": pm.hooks_of(name), "options": fields}
    if json_:
        print_json(data)
        return
    from rich.markup import escape

    console.print(f"[bold]{name}[/bold]  {info.dist} {info.version}  ({info.value})")
    if data["summary"]:
        console.print(escape(data["summary"]))
    console.print(f"hooks: {', '.join(data['hooks']) or 'none'}")
    if fields:
        console.print(table("options", ["option", "type", "default", "description"],
                            ([f["name"], escape(f["type"]), escape(repr(f["default"])), escape(f["help"])]
                             for f in fields)))
    else:
        console.print("options: none")
