"""The summary tables of `opsloop run`, and the figures of a monitor report as table rows (also `opsloop monitor`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opsloop.cli._render import fmt, table
from opsloop.metrics import CLASSIFICATION

if TYPE_CHECKING:
    from opsloop.config import Config
    from opsloop.runner import RunResult
    from opsloop.types import MonitorReport

FIGURES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "mae", "rmse", "r2")
#: Figures of a family (`psi[m07]`, `f1[omi-3]`) shown per report before the rest are summed up in one row.
FAMILY_ROWS = 5
_FAMILY = re.compile(r"(?P<family>[^\[\]]+)\[(?P<member>.+)\]")
#: Families whose higher values are better: their worst members are the lowest (drift statistics and errors:
#: the highest).
HIGHER_IS_BETTER = frozenset({*CLASSIFICATION, "r2"})


def figure_rows(report: MonitorReport, per_family: int = FAMILY_ROWS) -> Iterator[tuple[str, str, str]]:
    """(figure, value, at validation) for every figure of a report, in the report's order.

    Figures of a family (`psi[<feature>]`, `ks[<feature>]`, `f1[<series>]`)
    come after the plain ones, each family worst first (lowest for quality
    figures, highest for the rest), at most `per_family` of them and one row
    for the others: a report over 40 features stays readable, and `--json`
    has them all.
    """
    from rich.markup import escape  # `psi[m02]` is not a style: brackets shown as they are

    if not report.metrics:  # a row that says so, not an empty table
        yield "(this monitor reported no figures)", "-", "-"
        return
    nan = float("nan")
    families: dict[str, list[tuple[str, float]]] = {}
    for name, value in report.metrics.items():
        match = _FAMILY.fullmatch(name)
        if match:
            families.setdefault(match["family"], []).append((name, value))
        else:
            yield escape(name), _show(value), _show(report.baseline.get(name, nan))
    for family, members in families.items():
        higher_better = family in HIGHER_IS_BETTER
        members.sort(key=lambda m: _order(m[1], higher_better))
        for name, value in members[:per_family]:
            yield escape(name), _show(value), _show(report.baseline.get(name, nan))
        rest = [v for _, v in members[per_family:] if isinstance(v, (int, float)) and v == v]
        if len(members) > per_family:
            bound = (f", all {'>=' if higher_better else '<='} {fmt(float(min(rest) if higher_better else max(rest)))}"
                     if rest else "")
            yield escape(f"{family}[...]"), f"{len(members) - per_family} more{bound}", ""


def _show(value: Any) -> str:
    """A figure: counts (whole numbers above 1) as integers, the rest as `fmt` does."""
    if isinstance(value, float) and value.is_integer() and abs(value) > 1:
        return f"{int(value):,}"
    return fmt(value)


def _order(value: Any, higher_better: bool) -> tuple[int, float]:
    if not isinstance(value, (int, float)) or value != value:
        return (1, 0.0)  # NaN and non-numbers last
    return (0, float(value) if higher_better else -float(value))


def monitor_tables(reports: list[MonitorReport]) -> list[Any]:
    """Per report, a table of that monitor's own figures (whatever it names them), then its alerts."""
    from rich.markup import escape

    out: list[Any] = []
    for report in reports:
        out.append(table(f"Monitor {escape(report.monitor)} on {report.model} ({report.rows:,} rows)",
                         ["figure", "monitored", "at validation"], figure_rows(report)))
        out.extend(f"[yellow]alert[/yellow] {escape(alert)}" for alert in report.alerts)
    return out


def run_summary(result: RunResult, config: Config) -> list[Any]:
    """Renderables: stages, versions with metrics, monitor figures, the decision."""
    out: list[Any] = [table(f"Run {result.run_id} ({config.source})", ["stage", "plugins", "seconds", "result"],
                            ([s.stage, ", ".join(s.plugins), f"{s.seconds:.2f}", s.summary] for s in result.stages))]
    if result.versions:
        keys = [k for k in FIGURES if any(k in v.metrics for v in result.versions)]
        out.append(table("Registered versions (validation means)", ["version", "aliases", *keys],
                         ([v.ref, ", ".join(v.aliases), *(fmt(v.metrics.get(k, float("nan"))) for k in keys)]
                          for v in result.versions)))
    from rich.markup import escape

    out.extend(monitor_tables(result.reports))
    if result.decision is not None:
        verdict = "[bold red]retrain[/bold red]" if result.decision.retrain else "[bold green]keep[/bold green]"
        out.append(f"Decision: {verdict}")
        out.extend(f"  - {escape(reason)}" for reason in result.decision.reasons)
    out.extend(f"[yellow]warning[/yellow] {escape(warning)}" for warning in result.warnings)
    if result.issues:
        out.append(f"[yellow]{len(result.issues)} data-quality issue(s)[/yellow]")
        out.extend(f"  - {escape(issue)}" for issue in result.issues[:10])
    return out
