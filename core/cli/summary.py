"""The summary table printed at the end of `opsloop run`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opsloop.cli._render import fmt, table

if TYPE_CHECKING:
    from opsloop.config import Config
    from opsloop.runner import RunResult

FIGURES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "mae", "rmse", "r2")


def run_summary(result: RunResult, config: Config) -> list[Any]:
    """Renderables: stages, versions with metrics, monitor figures, the decision."""
    out: list[Any] = [table(f"Run {result.run_id} ({config.source})", ["stage", "plugins", "seconds", "result"],
                            ([s.stage, ", ".join(s.plugins), f"{s.seconds:.2f}", s.summary] for s in result.stages))]
    if result.versions:
        keys = [k for k in FIGURES if any(k in v.metrics for v in result.versions)]
        out.append(table("Registered versions (validation means)", ["version", "aliases", *keys],
                         ([v.ref, ", ".join(v.aliases), *(fmt(v.metrics.get(k, float("nan"))) for k in keys)]
                          for v in result.versions)))
    for report in result.reports:
        keys = [k for k in (*FIGURES, "prevalence") if k in report.metrics]
        out.append(table(f"Monitor {report.monitor} on {report.model} ({report.rows:,} rows)",
                         ["figure", "monitored", "at validation"],
                         ([k, fmt(report.metrics[k]), fmt(report.baseline.get(k, float("nan")))] for k in keys)))
        for alert in report.alerts:
            out.append(f"[yellow]alert[/yellow] {alert}")
    if result.decision is not None:
        verdict = "[bold red]retrain[/bold red]" if result.decision.retrain else "[bold green]keep[/bold green]"
        out.append(f"Decision: {verdict}")
        out.extend(f"  - {reason}" for reason in result.decision.reasons)
    if result.issues:
        out.append(f"[yellow]{len(result.issues)} data-quality issue(s)[/yellow]")
        out.extend(f"  - {issue}" for issue in result.issues[:10])
    return out
