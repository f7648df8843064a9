"""`opsloop deploy status|remove`: what the deploy targets have out for a model, and taking it down.

Both call a hook on each plugin of `[deploy] plugins` (`deploy_status`,
`undeploy`; docs/hooks.md) with the options `deploy` gets. Neither moves an
alias: the registry is unchanged, and the next `opsloop run` deploys again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption

if TYPE_CHECKING:
    from opsloop.session import Session
    from opsloop.types import DeploymentStatus, RunContext

deploy_app = typer.Typer(help="Where the model is deployed, and taking it down.", no_args_is_help=True)

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")]
NO_STATUS = "does not report status"


def _open(config: Any, set_: list[str] | None, model: str | None,
          target: str | None = None) -> tuple[Session, RunContext, list[str]]:
    """The session over `[deploy] plugins` (or `target` alone), a context for the hooks, and the targets."""
    import json
    import uuid
    from pathlib import Path

    from opsloop import config as config_mod
    from opsloop.errors import OpsloopError
    from opsloop.session import Session
    from opsloop.store import check_name
    from opsloop.types import RunContext

    overrides = list(set_ or ())
    if target is not None:  # a target no longer selected can still take down what it put out
        overrides.append(f"deploy.plugins={json.dumps([target])}")
    cfg = config_mod.read(config, overrides=overrides)
    names = cfg.selected("deploy")
    if not names:
        raise OpsloopError(f"no deploy target selected: set [deploy] plugins in {cfg.source} "
                           '(for example ["batch"]) or name one with --target')
    name = check_name(model or cfg.project.name, "model name")  # targets build paths from it
    session = Session.open(cfg, sections=("deploy",))
    run = RunContext(run_id=uuid.uuid4().hex[:12], workdir=Path(cfg.workdir), model_name=name,
                     seed=cfg.project.seed, config=cfg)
    return session, run, names


def _call(session: Session, target: str, hook: str, run: RunContext) -> DeploymentStatus:
    """One target's hook, its result checked: a wrong type names the plugin as any plugin error does."""
    from opsloop.errors import PluginCallError
    from opsloop.types import DeploymentStatus

    result = session.plugins.call(target, hook, model_name=run.model_name,
                                  options=session.options_for("deploy", target), run=run)
    if not isinstance(result, DeploymentStatus):  # PluginCallError adds the plugin's (dist version)
        raise PluginCallError(target, hook, TypeError(f"returned {type(result).__name__}, not a DeploymentStatus"))
    return result


def _fail_on_errors(rows: list[dict[str, Any]]) -> None:
    """Each target's error as one line on stderr (JSON stays on stdout), then exit 1; nothing when none failed."""
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        for line in errors:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1)


#: What `deploy remove` names on one line; more (a dask-batch directory of part files, many batch outputs) are
#: summarised: one line per directory naming its first `PER_DIRECTORY` files, at most `LINES` lines.
ONE_LINE = 3
PER_DIRECTORY = 3
LINES = 10


def summary(items: list[str]) -> list[str]:
    """Lines saying what was removed: absolute paths grouped by directory ("24 in DIR/: a, b, c and 21 more"),
    anything else (a server, in its target's words) as it is; at most `LINES` lines, then "and N more"."""
    import os.path

    groups: dict[str, list[str]] = {}  # a directory, or an item that is not a path: its items in removal order
    for item in items:
        groups.setdefault(os.path.dirname(item) if os.path.isabs(item) else f"\0{item}", []).append(item)
    lines: list[str] = []
    for number, (key, members) in enumerate(groups.items()):
        if number == LINES - 1 and len(groups) > LINES:
            rest = list(groups.values())[number:]
            count = sum(map(len, rest))
            lines.append(f"and {count} more" + (f" in {len(rest)} directories" if count > len(rest) else ""))
            break
        if len(members) == 1:
            lines.append(members[0])
            continue
        names = [os.path.basename(m) for m in members[:PER_DIRECTORY]]
        more = f" and {len(members) - len(names)} more" if len(members) > len(names) else ""
        lines.append(f"{len(members)} in {key}/: {', '.join(names)}{more}")
    return lines


def _row(status: DeploymentStatus) -> dict[str, Any]:
    return {"target": status.target, "model": status.model, "deployed": status.deployed, "version": status.version,
            "location": status.location, "details": dict(status.details)}


@deploy_app.command("status")
def status(model: ModelOption = None, json_: JsonOption = False, config: ConfigOption = None,
           set_: SetOption = None) -> None:
    """What each deploy target ([deploy] plugins) has out for the model: deployed, version, where.

    Asks each target (the local-http server itself for the version it serves)
    and changes nothing. Exits 1 when a target fails to answer.
    """
    from opsloop.errors import OpsloopError

    session, run, names = _open(config, set_, model)
    rows: list[dict[str, Any]] = []
    for target in names:
        if not session.plugins.implements(target, "deploy_status"):
            rows.append({"target": target, "model": run.model_name, "deployed": None, "version": None,
                         "location": None, "note": NO_STATUS})
            continue
        try:
            rows.append(_row(_call(session, target, "deploy_status", run)))
        except OpsloopError as exc:  # the other targets still answer
            rows.append({"target": target, "model": run.model_name, "deployed": None, "version": None,
                         "location": None, "error": str(exc)})
    if json_:
        from opsloop.cli._render import print_json

        print_json({"model": run.model_name, "targets": rows})
    else:
        from opsloop.cli._render import console, table

        def deployed(row: dict[str, Any]) -> str:
            if row["deployed"] is None:
                return "?"
            return "yes" if row["deployed"] else "no"

        def note(row: dict[str, Any]) -> str:
            details = row.get("details") or {}
            return row.get("error") or row.get("note") or "; ".join(
                f"{k} {details[k]}" for k in ("stale", "unfinished", "missing", "written_at", "alias") if k in details)

        console.print(table(f"deployments of {run.model_name}", ["target", "deployed", "version", "location", "note"],
                            ([r["target"], deployed(r), r["version"] or "-", r["location"] or "-", note(r)]
                             for r in rows)))
    _fail_on_errors(rows)


@deploy_app.command("remove")
def remove(model: ModelOption = None,
           target: Annotated[str | None, typer.Option(
               "--target", "-t", metavar="PLUGIN",
               help="Only this deploy target (default: every one of [deploy] plugins); it need not be selected.")]
           = None,
           json_: JsonOption = False, config: ConfigOption = None, set_: SetOption = None) -> None:
    """Take the model down from each deploy target: stop its server, delete its predictions files.

    Calls each target's undeploy hook. Aliases do not move and no version is
    deleted: the next `opsloop run` deploys again. Exits 0 with "nothing
    deployed" when there was nothing; 1 when a target failed, or when the
    --target cannot remove.
    """
    from opsloop.errors import OpsloopError

    session, run, names = _open(config, set_, model, target)
    rows: list[dict[str, Any]] = []
    for name in names:
        if not session.plugins.implements(name, "undeploy"):
            message = (f'deploy target "{name}" cannot remove what it deployed: it does not implement the undeploy '
                       "hook (take it down by hand)")
            if target is not None:
                raise OpsloopError(message)
            rows.append({"target": name, "model": run.model_name, "removed": None, "note": message})
            continue
        try:
            rows.append(_row(_call(session, name, "undeploy", run)))
        except OpsloopError as exc:  # the other targets are still taken down
            rows.append({"target": name, "model": run.model_name, "removed": None, "error": str(exc)})
    for row in rows:
        if "details" in row:
            row["removed"] = list(row["details"].get("removed") or [])
    if json_:
        from opsloop.cli._render import print_json

        print_json({"model": run.model_name, "targets": rows})
    else:
        from rich.markup import escape

        from opsloop.cli._render import console

        if all(r["removed"] == [] for r in rows):  # every target answered, and none had anything out
            console.print(f"nothing deployed for {run.model_name}")
        for row in rows if any(r["removed"] != [] for r in rows) else ():
            if "error" in row or "note" in row:
                continue
            if row["removed"]:
                what = f" {row['version']}" if row.get("version") else ""
                head = f"{row['target']}: removed{what}: "
                if len(row["removed"]) <= ONE_LINE:
                    console.print(escape(head + ", ".join(row["removed"])), soft_wrap=True)
                    continue
                console.print(escape(f"{head}{len(row['removed'])} items (all of them: --json)"), soft_wrap=True)
                for line in summary(row["removed"]):
                    console.print(escape(f"  {line}"), soft_wrap=True)
            else:
                console.print(f"{row['target']}: nothing deployed")
        for row in rows:
            if "note" in row:
                console.print(escape(row["note"]), soft_wrap=True)
    _fail_on_errors(rows)
