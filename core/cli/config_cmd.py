"""`opsloop config check|show`."""

from __future__ import annotations

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

config_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Check and show the configuration.")


@config_app.command("check")
def check(config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Check a config: every section and key, every selected plugin loads, implements its stage and
    accepts its options. Exits non-zero with one clear message otherwise."""
    from opsloop import config as config_mod
    from opsloop.cli._render import console, print_json, table
    from opsloop.config import PLUGIN_LISTS
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    session = Session.open(cfg)
    selected = {section: cfg.selected(section) for section in PLUGIN_LISTS}
    if json_:
        print_json({"ok": True, "source": cfg.source, "config_hash": cfg.hash, "selected": selected})
        return
    console.print(f"[green]ok[/green]: {cfg.source}")
    console.print(table(None, ["section", "plugins (in order)"],
                        ([s, ", ".join(f"{n} ({session.plugins.known[n].label})" for n in names) or "-"]
                         for s, names in selected.items())))


@config_app.command("show")
def show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the effective config (defaults, file and --set merged) as JSON."""
    from opsloop import config as config_mod
    from opsloop.cli._render import print_json

    cfg = config_mod.read(config, overrides=set_ or ())
    print_json(cfg.table)
