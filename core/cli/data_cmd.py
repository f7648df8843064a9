"""`opsloop data ...`: the training-data snapshots versions keep (issue 14, item 4; docs/data.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Training-data snapshots: list, show, remove, prune (docs/data.md).")

SnapshotArg = Annotated[str, typer.Argument(
    metavar="SNAPSHOT|NAME[:N|@ALIAS]",
    help="A snapshot's digest (or its first 8+ hex digits), or a version: the snapshot it trained on.")]


def _open(config: Any, set_: Any) -> Any:
    from opsloop.cli.models import open_store

    return open_store(config, set_)


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _versions(refs: list[str]) -> str:
    return ", ".join(refs[:6]) + (f", ... ({len(refs)})" if len(refs) > 6 else "") if refs else "none"


@data_app.command("list")
def list_(config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """List stored snapshots: digest, rows, columns, size, and the versions that trained on each."""
    from opsloop import snapshots
    from opsloop.cli._render import console, print_json, table

    with _open(config, set_) as store:
        entries = snapshots.listing(store)
    if json_:
        print_json(entries)
        return
    if not entries:
        console.print('no data snapshots: set [data] snapshot = "store" and register a version (opsloop run)')
        return
    console.print(table(None, ["snapshot", "rows", "columns", "size", "created", "versions"],
                        ([e["digest"].removeprefix("sha256:")[:12], f"{e['rows']:,}" if "rows" in e else "-",
                          len(e["columns"]) if "columns" in e else "-",
                          "MISSING" if e.get("missing") else _size(e.get("bytes")), e.get("created", "-"),
                          _versions(e["versions"])] for e in entries)))
    unused = sum(1 for e in entries if not e["versions"])
    if unused:
        console.print(f"{unused} snapshot(s) no version uses: opsloop data prune removes them")


@data_app.command("show")
def show(snapshot: SnapshotArg, config: ConfigOption = None, set_: SetOption = None,
         json_: JsonOption = False) -> None:
    """Show one snapshot: where it is, its size, its schema and the versions that trained on it."""
    from opsloop import snapshots
    from opsloop.cli._render import console, print_json, table

    with _open(config, set_) as store:
        entry = snapshots.find(store, snapshot)
    if json_:
        print_json(entry)
        return
    if entry.get("mode") == "reference":
        state = "verified" if entry["verified"] else f"NOT VERIFIED: {entry['problem']}"
        console.print(f"reference to {entry['location']} ({_size(entry.get('bytes'))}, {entry['sha256']}): {state}")
        console.print(f"trained on {entry.get('rows', '?'):,} rows of {entry.get('training_rows', '?')}; "
                      f"versions: {_versions(entry['versions'])}")
        return
    console.print(f"[bold]{entry['digest']}[/bold]")
    console.print(f"{entry['path']}: {entry['rows']:,} rows, {_size(entry['bytes'])}, written {entry['created']}")
    console.print(f"versions: {_versions(entry['versions'])}")
    console.print(table("schema", ["column", "dtype"], ([c["name"], c["dtype"]] for c in entry["columns"])))


@data_app.command("remove")
def remove(snapshot: SnapshotArg, config: ConfigOption = None, set_: SetOption = None,
           json_: JsonOption = False) -> None:
    """Remove one snapshot; refused while a registered version trained on it."""
    from opsloop import snapshots
    from opsloop.cli._render import console, print_json

    with _open(config, set_) as store:
        entry = snapshots.remove(store, snapshot)
    if json_:
        print_json({"removed": entry["digest"], "bytes": entry["bytes"]})
        return
    console.print(f"removed {entry['digest']} ({_size(entry['bytes'])})")


@data_app.command("prune")
def prune(
    older_than: Annotated[str, typer.Option(
        "--older-than", metavar="DURATION",
        help="Only snapshots unused and written longer ago than this (1h, 7d; 0: all unused). A registration "
             "under way may be about to record a recent one.")] = "1h",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
    config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False,
) -> None:
    """Remove snapshots no registered version trained on; never one a version needs."""
    from opsloop import snapshots
    from opsloop.cli._render import console, print_json

    seconds = 0.0 if older_than.strip() == "0" else _seconds(older_than)
    with _open(config, set_) as store:
        report = snapshots.prune(store, older_than=seconds, dry_run=dry_run)
    if json_:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    recent = f" and {len(report['kept_recent'])} unused but written in the last {older_than}" if seconds else ""
    console.print(f"{verb} {len(report['removed'])} unused snapshot(s), {_size(report['bytes'])}; kept "
                  f"{len(report['kept_in_use'])} in use{recent}")


def _seconds(text: str) -> float:
    from opsloop.monitoring import parse_duration

    return parse_duration(text, "--older-than").total_seconds()
