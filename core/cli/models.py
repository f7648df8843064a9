"""`opsloop models ...`: the registry from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import attrs
import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

if TYPE_CHECKING:
    from opsloop.store import ModelStore
    from opsloop.types import ModelVersion

models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Browse and manage registered model versions.")


def open_store(config: Any, set_: Any) -> ModelStore:
    """The configured store; only the store plugins are loaded."""
    from opsloop import config as config_mod
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    return Session.open(cfg, sections=("store",)).open_store()


def version_json(v: ModelVersion) -> dict[str, Any]:
    data = attrs.asdict(v)
    data["path"] = str(v.path)
    data["ref"] = v.ref
    return data


@models_app.command("list")
def list_(config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """List model names with their latest version and aliases."""
    from opsloop.cli._render import console, print_json, table

    with open_store(config, set_) as store:
        models = store.models()
    if json_:
        print_json([attrs.asdict(m) for m in models])
        return
    if not models:
        console.print("no models registered yet: `opsloop run` registers one")
        return
    console.print(table(None, ["model", "versions", "latest", "aliases", "updated"],
                        ([m.name, m.versions, m.latest, ", ".join(f"{a}→{v}" for a, v in sorted(m.aliases.items())),
                          m.updated_at] for m in models)))


@models_app.command("show")
def show(ref: Annotated[str, typer.Argument(metavar="NAME[:VERSION|@ALIAS]",
                                            help="A model (its latest version), a version or an alias.")],
         config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Show one version: metrics, parameters, lineage, aliases and where its bundle is."""
    from opsloop.cli._render import console, fmt, print_json, table

    with open_store(config, set_) as store:
        v = store.resolve(ref)
    if json_:
        print_json(version_json(v))
        return
    lin = v.lineage
    console.print(f"[bold]{v.ref}[/bold]  {v.flavor} {v.task}  aliases: {', '.join(v.aliases) or '-'}")
    console.print(f"created {v.created_at} by {v.created_by or '?'}; bundle {v.path} ({v.digest})")
    console.print(table("validation metrics", ["metric", "value"], ((k, fmt(x)) for k, x in v.metrics.items())))
    console.print(table("parameters", ["parameter", "value"], ((k, fmt(x)) for k, x in sorted(v.params.items()))))
    data = lin.get("data", {})
    git = lin.get("git") or {}
    versions = lin.get("versions", {})
    rows = [
        ("data", f"{data.get('source')} ({data.get('rows', '?'):,} rows)" if data else "-"),
        ("data fingerprint", data.get("fingerprint", "-")),
        ("config hash", lin.get("config_hash", "-")),
        ("git", f"{git.get('commit', '')[:12]}{' (dirty)' if git.get('dirty') else ''}" if git else "not a git tree"),
        ("parent", lin.get("parent") or "-"),
        ("run", lin.get("run_id", "-")),
        ("opsloop", versions.get("opsloop", "-")),
        ("plugins", ", ".join(f"{n} ({p['dist']} {p['version']})" for n, p in versions.get("plugins", {}).items())),
        ("libraries", ", ".join(f"{k} {x}" for k, x in versions.get("libraries", {}).items())),
    ]
    console.print(table("lineage", ["field", "value"], rows))
