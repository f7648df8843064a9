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
    from opsloop.cli._render import console, fmt, print_json, table, threshold_table

    from opsloop.store import Ref

    parsed = Ref.parse(ref)
    with open_store(config, set_) as store:
        v = store.resolve(parsed)
        listing = store.version_summaries(parsed.name) if parsed.version is None and parsed.alias is None else []
    if json_:
        data = version_json(v)
        if listing:
            data["versions"] = [attrs.asdict(s) for s in listing]
        print_json(data)
        return
    if listing:
        keys = [k for k in ("f1", "precision", "recall", "roc_auc", "rmse") if any(k in s.metrics for s in listing)]
        console.print(table(f"{parsed.name}: {len(listing)} version(s)", ["version", "created", "by", "aliases", *keys],
                            ([s.version, s.created_at, s.created_by, ", ".join(s.aliases),
                              *(fmt(s.metrics.get(k, float("nan"))) for k in keys)] for s in listing[-20:])))
        console.print(f"latest: {v.ref}")
    lin = v.lineage
    console.print(f"[bold]{v.ref}[/bold]  {v.flavor} {v.task}  aliases: {', '.join(v.aliases) or '-'}")
    console.print(f"created {v.created_at} by {v.created_by or '?'}; bundle {v.path} ({v.digest})")
    console.print(table("validation metrics", ["metric", "value"], ((k, fmt(x)) for k, x in v.metrics.items())))
    if v.threshold:
        console.print(threshold_table(v.threshold))
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


AliasOption = Annotated[str, typer.Option("--alias", "-a", help="The alias to move.")]
#: Longest `--reason` kept in the audit trail (issue 8, item 10: a 100 KB reason took minutes to print).
MAX_REASON = 1_000


def _bounded_reason(value: str) -> str:
    if len(value) > MAX_REASON:
        from opsloop.errors import OpsloopError

        raise OpsloopError(f"--reason is {len(value):,} characters long; at most {MAX_REASON:,} are kept")
    return value


ReasonOption = Annotated[str, typer.Option("--reason", "-r", callback=_bounded_reason,
                                           help=f"Why, for the audit trail (at most {MAX_REASON:,} characters).")]


def _session(config: Any, set_: Any) -> Any:
    from opsloop import config as config_mod
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    # observers enabled in the config hear alias moves (on_alias_changed)
    return Session.open(cfg, sections=("store", "plugins"))


def _change_json(change: Any) -> dict[str, Any]:
    return attrs.asdict(change)


def _print_change(change: Any, verb: str) -> None:
    from opsloop.cli._render import console

    before = f"{change.from_version}" if change.from_version is not None else "(unset)"
    # Printed as is: Rich's highlighter is quadratic on a long word, and a reason is not markup.
    console.print(f"{verb} {change.name}@{change.alias}: {before} → {change.to_version}"
                  + (f" ({change.reason})" if change.reason else ""), markup=False, highlight=False)


@models_app.command("promote")
def promote(name: Annotated[str, typer.Argument(help="Model name.")],
            version: Annotated[int, typer.Argument(help="Version to point the alias at.", min=1)],
            alias: AliasOption = "production", reason: ReasonOption = "",
            threshold: Annotated[float | None, typer.Option(
                "--threshold", help="Give the version this alert threshold (a row alerts when its score is at "
                                    "least it), without retraining.")] = None,
            rule: Annotated[str | None, typer.Option(
                "--rule", help="Choose the version's threshold again by this rule (budget, precision, recall, "
                               "f1, fixed) from the out-of-fold scores its bundle keeps.")] = None,
            target: Annotated[float | None, typer.Option(
                "--target", help="The target of --rule (default: the rule's own, docs/alerting.md).")] = None,
            per_series: Annotated[bool, typer.Option(
                "--per-series", help="With --rule: also one threshold per series, each on its own rows.")] = False,
            config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Point an alias (default: production) at a version, optionally with a new alert threshold; recorded in the
    history."""
    from opsloop.cli._render import console, print_json

    session = _session(config, set_)
    with session.open_store() as store:
        v = store.get(name, version)
        _check_target(session, v, f"promote it to {name}@{alias}")
        new = _new_threshold(v, threshold, rule, target, per_series)
        why = reason or "promoted from the command line"
        if new is not None:
            from opsloop.alerting import describe

            why += f"; threshold {describe(new)} (was {describe(v.threshold)})"
        change = session.set_alias(store, name, alias, version, reason=why, threshold=new)
    if json_:
        print_json(_change_json(change) if change else {"name": name, "alias": alias, "to_version": version,
                                                         "unchanged": True})
    elif change is None:
        console.print(f"{name}@{alias} already points at {version}: nothing to do")
    else:
        _print_change(change, "promoted")


def _new_threshold(v: ModelVersion, value: float | None, rule: str | None, target: float | None,
                   per_series: bool = False) -> dict[str, Any] | None:
    """The threshold `promote` gives the version: a number (`--threshold`, the same for every series), or a
    rule chosen again on the out-of-fold rows its bundle keeps (`--rule`, `--target`, `--per-series`); None
    when neither is given."""
    import math

    from opsloop import alerting
    from opsloop.errors import ConfigError, OpsloopError

    if value is None and rule is None:
        if target is not None or per_series:
            raise OpsloopError(f"{'--target' if target is not None else '--per-series'} needs --rule (the rule "
                               "it goes with)")
        return None
    if value is not None and rule is not None:
        raise OpsloopError("give --threshold (a value) or --rule (chosen again), not both")
    if v.task not in ("classification", "anomaly"):
        raise OpsloopError(f"{v.ref} is a {v.task or 'model'} without scores: it has no alert threshold to change")
    rows = alerting.read_oof(v.path)
    if value is not None:
        if not math.isfinite(value):
            raise OpsloopError(f"--threshold must be a finite number, got {value}")
        return alerting.fixed(rows, value, where="promote")
    if rows is None:
        raise OpsloopError(f"{v.ref} keeps no out-of-fold scores (registered before thresholds, or validated "
                           "without them): give the threshold itself with --threshold")
    try:
        section = alerting.AlertingSection(rule=rule, target=target, per_series=per_series)
    except ValueError as exc:  # attrs' validator: (message, attribute)
        raise ConfigError(str(exc.args[0]), section="--rule/--target") from None
    return alerting.choose(rows, section, where="promote")


@models_app.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="Model name.")],
             alias: AliasOption = "production", reason: ReasonOption = "",
             config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Point an alias back at the version it pointed to before (again: one step further back)."""
    from opsloop.cli._render import print_json

    from opsloop.store import rollback_target

    session = _session(config, set_)
    with session.open_store() as store:
        current = store.alias(name, alias)
        if current is not None:  # the version it would go back to must load (the store's own errors otherwise)
            exists = {s.version for s in store.version_summaries(name)}
            target = rollback_target(store.history(name, alias), current, exists)
            if target is not None:
                _check_target(session, store.get(name, target), f"roll {name}@{alias} back to it")
        change = session.rollback(store, name, alias, reason=reason or "rolled back from the command line")
    if json_:
        print_json(_change_json(change))
    else:
        _print_change(change, "rolled back")


def _check_target(session: Any, v: ModelVersion, what: str) -> None:
    """Refuse to point an alias at a version whose bundle fails its checks (issue 8): digest, load, probe rows."""
    from opsloop.bundle import check_bundle
    from opsloop.errors import BundleError, StoreError

    try:
        check_bundle(v.path, session.plugins, ref=v.ref, digest=v.digest)
    except BundleError as exc:
        raise StoreError(f"cannot {what}: {v.ref} fails its checks: {exc}") from exc


@models_app.command("reindex")
def reindex(force: Annotated[bool, typer.Option("--force", help="Rebuild even a readable index that "
                                                                "knows every bundle.")] = False,
            config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Rebuild the registry's index from its bundles' manifests (after registry.db was lost or damaged)."""
    from opsloop.cli._render import console, print_json, table
    from opsloop.errors import RegistryDamaged

    try:
        store = open_store(config, set_)
    except RegistryDamaged as damaged:  # (the session passes a store's own StoreError through as it is)
        if damaged.rebuild is None:
            raise
        done = damaged.rebuild()
    else:
        with store:
            done = store.reindex(force=force)
    if json_:
        print_json(done)
        return
    console.print(f"rebuilt {done['registry']} from the bundles: {len(done['versions'])} version(s) indexed; "
                  f"the old index is kept as {done['old_index']}")
    if done["skipped"]:
        console.print(table("bundles skipped", ["version", "why"], ([s["ref"], s["reason"]] for s in done["skipped"])))
    if done["aliases"]:
        aliases = ", ".join(f"{a} -> {v}" for a, v in done["aliases"].items())
        console.print(f"aliases restored from {done['aliases_from']}: {aliases}; "
                      f"{done['history_entries']} alias history entries")
    else:
        console.print(done["aliases_from"])
    for note in done["notes"]:
        console.print(f"note: {note}")


@models_app.command("history")
def history(name: Annotated[str, typer.Argument(help="Model name.")],
            alias: Annotated[str | None, typer.Option("--alias", "-a", help="Only this alias.")] = None,
            config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """The audit trail of a model's aliases: who moved which alias from which version to which, when, why."""
    from rich.markup import escape

    from opsloop.alerting import describe
    from opsloop.cli._render import console, print_json, table

    with open_store(config, set_) as store:
        changes = store.history(name, alias)
    if json_:
        print_json([_change_json(c) for c in changes])
        return
    if not changes:
        console.print(f"no alias of {name} was ever set")
        return
    # The threshold a change gave its version (issue 13), as a column only when one did.
    extra = ["threshold"] if any(c.threshold for c in changes) else []
    console.print(table(f"{name}: alias history (oldest first)", ["when", "alias", "action", "from", "to", "who",
                                                                  "reason", *extra],
                        ([c.at, c.alias, c.action, "-" if c.from_version is None else c.from_version, c.to_version,
                          c.actor, _reason_cell(c.reason), *([escape(describe(c.threshold, ".3f"))] if extra else [])]
                         for c in changes)))


def _reason_cell(reason: str, width: int = 200) -> str:
    """A reason for the history table: not markup, and cut (`--json` has it whole)."""
    from rich.markup import escape

    return escape(reason if len(reason) <= width else reason[:width - 1] + "…")


@models_app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="Model name.")],
           version: Annotated[int, typer.Argument(help="Version to delete.", min=1)],
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
           config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Delete a version and its bundle; refused while an alias points at it."""
    from opsloop.cli._render import console, print_json

    with open_store(config, set_) as store:
        v = store.get(name, version)
        if not yes:
            typer.confirm(f"delete {v.ref} (created {v.created_at}) and its bundle?", abort=True)
        store.delete(name, version)
    if json_:
        print_json({"deleted": v.ref})
    else:
        console.print(f"deleted {v.ref}")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys, for side-by-side comparison."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _schema(v: ModelVersion) -> dict[str, str]:
    from opsloop.bundle import read_manifest

    manifest = read_manifest(v.path, ref=v.ref, digest=v.digest)
    return {c["name"]: c["dtype"] for c in manifest["input_schema"]}


@models_app.command("diff")
def diff(name: Annotated[str, typer.Argument(help="Model name.")],
         v1: Annotated[int, typer.Argument(help="First version.", min=1)],
         v2: Annotated[int, typer.Argument(help="Second version.", min=1)],
         all_: Annotated[bool, typer.Option("--all", help="Show equal fields too.")] = False,
         config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Two versions side by side: parameters, metrics, lineage (config included) and input schema."""
    from opsloop.cli._render import console, fmt, print_json, table

    with open_store(config, set_) as store:
        a, b = store.get(name, v1), store.get(name, v2)
    sections = {
        "params": (flatten(dict(a.params)), flatten(dict(b.params))),
        "metrics": (dict(a.metrics), dict(b.metrics)),
        "lineage": (flatten(dict(a.lineage)), flatten(dict(b.lineage))),
        "schema": (_schema(a), _schema(b)),
    }
    result = {}
    for section, (left, right) in sections.items():
        rows = {}
        for key in sorted({*left, *right}):
            x, y = left.get(key), right.get(key)
            if all_ or x != y:
                rows[key] = {"a": x, "b": y, "changed": x != y}
        result[section] = rows
    if json_:
        print_json({"a": a.ref, "b": b.ref, **result})
        return
    for section, rows in result.items():
        if not rows:
            console.print(f"{section}: identical")
            continue
        console.print(table(f"{section} ({'all' if all_ else 'differences'})", ["field", a.ref, b.ref],
                            ((("* " if r["changed"] else "  ") + key, _cell(r["a"], fmt), _cell(r["b"], fmt))
                             for key, r in rows.items())))


def _cell(value: Any, fmt: Any) -> str:
    if value is None:
        return "-"
    text = fmt(value)
    return text if len(text) <= 60 else text[:57] + "..."


@models_app.command("reproduce")
def reproduce(ref: Annotated[str, typer.Argument(metavar="NAME:N", help="The version to rebuild (NAME@ALIAS too).")],
              tolerance: Annotated[float, typer.Option(
                  "--tolerance", help="Largest absolute difference between two numbers (states, scores, "
                                      "figures) that counts as the same.")] = 1e-9,
              config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Rebuild a version from its lineage (config, seed, the same data by fingerprint) without registering it,
    and compare states, predictions and validation figures; exit 1 when anything differs (docs/reproducibility.md).

    --config/--set give the store and the config compared for information; the rebuild uses the recorded one."""
    from opsloop import config as config_mod
    from opsloop.cli._render import RichReporter, console, print_json
    from opsloop.reproduce import reproduce as rebuild
    from opsloop.session import Session

    cfg = config_mod.read(config, overrides=set_ or ())
    session = Session.open(cfg, sections=("store",))
    with session.open_store() as store, RichReporter(quiet=json_) as reporter:
        result = rebuild(store, ref, current=cfg, plugins=session.plugins, tolerance=tolerance, reporter=reporter)
    if json_:
        print_json(result.to_json())
    else:
        for renderable in render_reproduction(result):
            console.print(renderable)
    if not result.reproduced:
        raise typer.Exit(1)


def render_reproduction(result: Any) -> list[Any]:
    """The checks as a table (check, recorded, now, ok), the details worth reading, the differences by kind
    and the verdict."""
    import re

    from rich.markup import escape

    from opsloop.cli._render import table

    def cell(value: Any) -> str:
        if isinstance(value, dict) and "python" in value:  # a lineage `versions` record
            return (f"python {value.get('python')}, opsloop {value.get('opsloop')}, "
                    f"{len(value.get('plugins') or {})} plugin(s), {len(value.get('libraries') or {})} libraries")
        if isinstance(value, dict):
            return "(see --json)"
        text = re.sub(r"(sha256:[0-9a-f]{12})[0-9a-f]{52}", r"\1…", "-" if value is None else str(value))
        return escape(_cell(text, str))

    mark = {True: "yes", False: "[red]NO[/red]", None: "info"}
    out: list[Any] = [table(escape(f"reproduce {result.ref} (tolerance {result.tolerance:g})"),
                            ["check", "recorded", "now", "ok"],
                            ([escape(c.name), cell(c.recorded), cell(c.now), mark[c.ok]] for c in result.checks))]
    out += [f"[dim]{escape(c.name)}:[/dim] {escape(c.detail)}" for c in result.checks if c.detail and c.ok is None]
    out += [f"[dim]note:[/dim] {escape(n)}" for n in result.notes]
    out += [f"[yellow]{d.kind}[/yellow]: {escape(d.message)}" for d in result.differences]
    out.append(("[green]" if result.reproduced else "[red]") + escape(result.verdict())
               + ("[/green]" if result.reproduced else "[/red]"))
    return out
