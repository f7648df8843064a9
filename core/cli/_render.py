"""Rich output: consoles, tables, JSON and the progress reporter of `opsloop run`.

Rich is imported when something is first printed with it: `--json` output
never pays its ~60 ms of imports (issue 8, item 14).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opsloop.types import Reporter

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

T = TypeVar("T")


class LazyConsole:
    """A `rich.console.Console`, made (and Rich imported) on first use; `real` is the Console itself."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


# Piped output (files, CI logs, scripts) gets wide tables instead of wrapped
# cells; a terminal keeps its own width. COLUMNS wins in both cases.
_WIDTH = int(os.environ.get("COLUMNS", "0") or 0) or (None if sys.stdout.isatty() else 160)
console = LazyConsole(width=_WIDTH)
err_console = LazyConsole(stderr=True)


def strict(data: Any) -> Any:
    """`data` with every NaN or infinite float (NumPy's too) as None: standard JSON has no NaN, and `jq` refuses it
    (`opsloop.store.strict_json`, as the loop journal keeps its bodies)."""
    from opsloop.store import strict_json

    return strict_json(data)


def print_json(data: Any) -> None:
    """Strict JSON on stdout (NaN as null), plain (no colour codes), for scripts."""
    sys.stdout.write(json.dumps(strict(data), indent=2, default=str, allow_nan=False) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A Rich table of strings."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t


def threshold_table(threshold: Mapping[str, Any]) -> Table:
    """A version's alert threshold (opsloop.alerting) and what it achieved out-of-fold, one figure a row."""
    from rich.markup import escape

    from opsloop.alerting import describe

    title = f"alert threshold {describe(threshold)}, from {threshold.get('source', '?')}"
    title += f" ({threshold['note']})" if threshold.get("note") else ""
    return table(escape(title), ["out-of-fold figure at it", "value"],
                 ((k, "-" if v is None else fmt(v)) for k, v in (threshold.get("achieved") or {}).items()))


def fmt(value: Any) -> str:
    """A figure for a table: floats to 3 decimals, NaN as '-'."""
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3f}"
    return str(value)


class RichReporter(Reporter):
    """Progress for `opsloop run`: a spinner per stage, bars over folds, a line per finished stage."""

    def __init__(self, out: Console | LazyConsole | None = None, *, quiet: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        out = out or err_console
        self.console = out.real if isinstance(out, LazyConsole) else out
        self.quiet = quiet
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                                 transient=True, disable=quiet)
        self._stage_task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = self.progress.add_task(f"  {description}", total=total)
        try:
            for item in items:
                yield item
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)

    def note(self, message: str) -> None:
        if not self.quiet:  # escaped: a note naming "[data] time" is text, not markup
            from rich.markup import escape

            self.progress.console.print(f"[dim]{escape(message)}[/dim]")

    def stage_started(self, stage: str, plugins: list[str]) -> None:
        self._stage_task = self.progress.add_task(f"{stage} [dim]({', '.join(plugins)})[/dim]", total=None)

    def _end_stage(self) -> None:
        if self._stage_task is not None:
            self.progress.remove_task(self._stage_task)
            self._stage_task = None

    def stage_finished(self, stage: str, seconds: float, summary: str) -> None:
        self._end_stage()
        if not self.quiet:
            self.progress.console.print(f"[green]✓[/green] [bold]{stage:<24}[/bold] {seconds:6.2f}s  {summary}",
                                        highlight=False)

    def stage_failed(self, stage: str, error: BaseException) -> None:
        self._end_stage()
        if not self.quiet:
            self.progress.console.print(f"[red]✗[/red] [bold]{stage}[/bold] failed", highlight=False)
