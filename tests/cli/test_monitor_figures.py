"""How a monitor report's figures become table rows, in `opsloop run` and `opsloop monitor` (issue 9)."""

from __future__ import annotations

import io

from opsloop import MonitorReport
from opsloop.cli.summary import figure_rows


def test_every_figure_is_shown_and_families_worst_first_five_of_each() -> None:
    psi = {f"psi[m{i:02d}]": i / 100 for i in range(19)}
    f1 = {"f1[omi-1]": 0.9, "f1[omi-2]": 0.1, "f1[omi-3]": 0.5}
    report = MonitorReport(monitor="m", metrics={"rows": 4320.0, "f1": 0.62, **psi, "drifted": 3.0, **f1,
                                                 "latency_p99": 0.25},
                           baseline={"f1": 0.7})
    rows = list(figure_rows(report))
    names = [r[0] for r in rows]
    assert names[:4] == ["rows", "f1", "drifted", "latency_p99"]  # plain figures first, in the report's order
    assert rows[0][1] == "4,320" and rows[1] == ("f1", "0.620", "0.700") and rows[2][1] == "3"
    # drift statistics: highest first; quality per series: lowest first
    assert names[4:10] == ["psi\\[m18]", "psi\\[m17]", "psi\\[m16]", "psi\\[m15]", "psi\\[m14]", "psi[...]"]
    assert rows[9][1] == "14 more, all <= 0.130"
    assert names[10:] == ["f1\\[omi-2]", "f1\\[omi-3]", "f1\\[omi-1]"]


def test_brackets_are_printed_not_taken_for_rich_styles() -> None:
    from rich.console import Console

    from opsloop.cli._render import table

    out = io.StringIO()
    Console(file=out, width=120).print(table("t", ["figure", "value", "base"],
                                             figure_rows(MonitorReport(metrics={"ks[m07]": 0.5}))))
    assert "ks[m07]" in out.getvalue()
