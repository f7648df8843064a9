"""The HTML of `opsloop report`: one self-contained page, plotly.js inline once, every figure's JSON in the page.

Each figure is a `<script type="application/json" data-figure="ID">` block
drawn by one small script at the end; a Content-Security-Policy allows
inline scripts and styles and `data:` images only, so the opened page
cannot fetch anything, even if a plotly.js feature tried to.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opsloop.report import figures as figs

if TYPE_CHECKING:
    from opsloop.report.collect import Gathered
    from opsloop.types import ModelVersion

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "font-src data:")
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 24px 48px; color: #222; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 40px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { margin: 24px 0 8px; } nav a { margin-right: 14px; } .muted { color: #666; }
.none { color: #666; font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f5f5f5; }
tr.production td { background: #fdeaea; } .alert { color: #b00; } .figure { margin: 8px 0 24px; }
details { margin: 4px 0 12px; }
"""
RENDER = """
for (const block of document.querySelectorAll('script[data-figure]')) {
  const figure = JSON.parse(block.textContent);
  Plotly.newPlot(document.getElementById(block.dataset.figure), figure.data, figure.layout,
                 {displaylogo: false, responsive: true});
}
"""
SECTIONS = {"validation": "Validation per fold", "versions": "Metrics across versions",
            "scores": "Scores against incidents", "monitors": "Monitors: drift per feature and per series",
            "last-run": "The last run's monitors", "aliases": "Alias history", "loop": "Loop journal"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A figure for a table: 4 significant digits, whole numbers with separators, `-` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    number = figs.number(value)
    if number is None:
        return "-"
    if number == int(number) and abs(number) >= 1:
        return f"{int(number):,}"
    return f"{number:.4g}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] = ()) -> str:
    """An HTML table; numbers right-aligned and formatted, text escaped."""
    out = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{esc(classes[i])}"' if i < len(classes) and classes[i] else ""
        cells = (f'<td class="n">{esc(fmt(c))}</td>' if isinstance(c, int | float) and not isinstance(c, bool)
                 else f"<td>{esc('-' if c is None else c)}</td>" for c in row)
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Page:
    """The page being written: sections of HTML, and the figures' JSON."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: list[str] = []
        self.sections: dict[str, str] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: Any) -> bool:
        """Place a figure (nothing for None); whether one was placed."""
        if fig is None:
            return False
        ident = f"figure-{len(self.figures) + 1}"
        # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>" or "<!--" can end or
        # confuse the <script> element, whatever a reason or a series name holds
        data = fig.to_json().replace("<", "\\u003c")
        self.figures.append(ident)
        self.add(f'<div class="figure" id="{ident}"></div>'
                 f'<script type="application/json" data-figure="{ident}">{data}</script>')
        return True

    def none(self, text: str) -> None:
        self.add(f'<p class="none">{esc(text)}</p>')

    def section(self, key: str, state: str) -> None:
        """Open section `key`; `state` is what the summary says of it (shown, or why it is empty)."""
        self.sections[key] = state
        self.add(f'<section id="{key}"><h2>{esc(SECTIONS[key])}</h2>')

    def end(self) -> None:
        self.add("</section>")


def fold_reports(v: ModelVersion) -> list[Mapping[str, Any]]:
    """The validation reports a version's lineage keeps (`method`, `folds`, `mean`, `std`); empty when none."""
    found = v.lineage.get("validation")
    return [r for r in found if isinstance(r, Mapping)] if isinstance(found, list) else []


def threshold_value(v: ModelVersion) -> float | None:
    return figs.number((v.threshold or {}).get("value")) if v.threshold else None


def render(got: Gathered, plotly_js: str) -> tuple[str, dict[str, Any]]:
    """The whole page, and a summary of what each section shows."""
    from importlib import metadata

    try:
        version = metadata.version("opsloop")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    page = Page()
    _validation(page, got)
    _versions(page, got)
    _scores(page, got)
    _monitors(page, got)
    _last_run(page, got)
    _aliases(page, got)
    _loop(page, got)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    production = f"{got.model}:{got.production}" if got.production is not None else "none"
    head = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>opsloop report: {esc(got.model)}</title><style>{STYLE}</style>"
            f"<script>{plotly_js}</script></head><body>")
    header = (f"<h1>{esc(got.model)}</h1><p class=\"muted\">{len(got.versions)} version(s); production: "
              f"{esc(production)}; registry {esc(got.store)}; prediction log {esc(got.log)}. Generated {now} by "
              f"opsloop {esc(version)}, reading only.</p><nav>"
              + "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in SECTIONS.items()) + "</nav>")
    text = head + header + "".join(page.parts) + f"<script>{RENDER}</script></body></html>\n"
    return text, {"model": got.model, "versions": len(got.versions), "production": got.production,
                  "figures": len(page.figures), "sections": page.sections}


#: Versions whose folds are drawn (the newest, and production); rows of the alias history's table (the newest).
MAX_FOLDED = 8
MAX_CHANGES = 200


def _validation(page: Page, got: Gathered) -> None:
    with_folds = [(v, fold_reports(v)[0]) for v in got.versions if fold_reports(v)]
    if len(with_folds) > MAX_FOLDED:
        newest = {v.version for v, _ in with_folds[-MAX_FOLDED:]} | {got.production}
        with_folds = [(v, r) for v, r in with_folds if v.version in newest]
    if not with_folds:
        page.section("validation", "no per-fold figures")
        page.none("No per-fold figures: the registry keeps only each version's validation means (shown under "
                  "Metrics across versions).")
        return page.end()
    page.section("validation", "shown")
    folded = len([v for v in got.versions if fold_reports(v)])
    if folded > len(with_folds):
        page.add(f'<p class="muted">The folds of the {len(with_folds)} newest versions and production; '
                 f"{folded - len(with_folds)} older version(s) left out.</p>")
    page.figure(figs.folds(with_folds))
    for v, report in with_folds:
        metrics = figs.chosen_metrics(report.get("folds") or [])
        extra = [k for k in dict.fromkeys(k for f in report.get("folds") or [] for k in f) if k not in metrics]
        names = metrics + extra
        rows = [[f"fold {i + 1}", *(f.get(k) for k in names)] for i, f in enumerate(report.get("folds") or [])]
        rows.append(["mean", *((report.get("mean") or {}).get(k) for k in names)])
        page.add(f"<h3>{esc(v.ref)}: {esc(report.get('method', ''))}</h3>" + table(["", *names], rows))
    return page.end()


def _versions(page: Page, got: Gathered) -> None:
    page.section("versions", "shown")
    if not page.figure(figs.versions(got.versions, got.production)):
        page.none("No validation metrics recorded for any version.")
    metrics = figs.chosen_metrics([v.metrics for v in got.versions])
    rows = [[v.version, v.created_at[:19].replace("T", " "), v.created_by, ", ".join(v.aliases) or "-",
             *(v.metrics.get(k) for k in metrics), threshold_value(v), (v.lineage.get("data") or {}).get("rows")]
            for v in got.versions]
    classes = ["production" if v.version == got.production else "" for v in got.versions]
    page.add(table(["version", "registered (UTC)", "by", "aliases", *metrics, "threshold", "training rows"],
                   rows, classes))
    page.end()


def _scores(page: Page, got: Gathered) -> None:
    thresholds = {v.version: threshold_value(v) for v in got.versions}
    fig, left_out = figs.scores(got.scores, thresholds) if got.scores else (None, [])
    if fig is None:
        page.section("scores", "no logged scores")
        page.none(" ".join(got.notes.get("scores") or ["No logged scores."]))
        return page.end()
    page.section("scores", "shown")
    total = sum(s.rows for s in got.scores)
    drawn = sum(len(s.frame) for s in got.scores)
    labelled = sum(int(s.frame["label"].notna().sum()) for s in got.scores)
    spans = sum(len(s.incidents) for s in got.scores)
    where = " ".join(got.notes.get("labels") or ["incidents: feedback labels"])
    text = (f"{total:,} logged rows of {len(got.scores)} version(s); {spans:,} incident span(s) ({where})."
            + ("" if labelled else " No labels yet: no incidents to shade."))
    if drawn < total:
        text += (f" Drawn: {drawn:,} points, at most {got.max_points:,} per series (per time bucket the highest "
                 "and lowest score are kept, so peaks survive).")
    page.add(f'<p class="muted">{esc(text)}</p>')
    if left_out:
        page.add(f'<p class="muted">{len(left_out)} more series not drawn (fewest incidents): '
                 f"{esc(', '.join(left_out[:50]))}</p>")
    page.figure(fig)
    page.end()


def _monitors(page: Page, got: Gathered) -> None:
    if not got.monitored:
        page.section("monitors", "not run")
        page.none(" ".join(got.notes.get("monitor") or got.notes.get("scores") or ["No logged rows to monitor."]))
        return page.end()
    page.section("monitors", "shown")
    page.add(f'<p class="muted">The configured monitors ([monitor] plugins) on the logged rows, per {esc(got.window)} '
             "window (by the rows' own time) and over the whole logged period, as opsloop monitor runs them.</p>")
    for note in got.notes.get("monitor") or []:
        page.add(f'<p class="muted">{esc(note)}</p>')
    for m in got.monitored:
        assert m.windows is not None and m.whole is not None
        page.add(f"<h3>{esc(m.whole.version.ref)}: {sum(w.rows for w in m.whole.windows):,} logged rows, "
                 f"{sum(w.labelled for w in m.whole.windows):,} labelled</h3>")
        for note in m.whole.notes:
            page.add(f'<p class="muted">{esc(note)}</p>')
        windows = [w for w in m.windows.windows if w.reports]
        for monitor in m.whole.monitors:
            page.figure(figs.scalars(monitor, windows))
            families = dict.fromkeys(match["family"] for w in windows for r in w.reports if r.monitor == monitor
                                     for match in map(figs.FAMILY.fullmatch, r.metrics) if match)
            for name in families:
                page.figure(figs.family(monitor, name, windows))
            for report in (r for w in m.whole.windows for r in w.reports if r.monitor == monitor):
                page.add(report_table(f"{monitor} over the logged period", report.metrics, report.baseline,
                                      report.alerts))
    page.end()


def report_table(title: str, metrics: Mapping[str, Any], baseline: Mapping[str, Any], alerts: Sequence[str]) -> str:
    """A monitor's own figures: single ones in a table, families (`psi[m01]`) in a folded one, then its alerts."""
    single = [(k, v) for k, v in metrics.items() if not figs.FAMILY.fullmatch(k)]
    grouped = [(k, v) for k, v in metrics.items() if figs.FAMILY.fullmatch(k)]
    out = f"<h4>{esc(title)}</h4>" + table(["figure", "value", "at validation"],
                                          [[k, figs.number(v), figs.number(baseline.get(k))] for k, v in single])
    if grouped:
        out += (f"<details><summary>{len(grouped)} figures per feature or series</summary>"
                + table(["figure", "value", "at validation"],
                        [[k, figs.number(v), figs.number(baseline.get(k))] for k, v in grouped]) + "</details>")
    out += "".join(f'<p class="alert">alert: {esc(a)}</p>' for a in alerts) or '<p class="muted">no alerts</p>'
    return out


def _last_run(page: Page, got: Gathered) -> None:
    if not got.last_run:
        page.section("last-run", "none")
        page.none(f"No monitor reports of {got.model} from the last opsloop run in this directory.")
        return page.end()
    page.section("last-run", "shown")
    page.add('<p class="muted">What the last opsloop run\'s monitor stage reported (.opsloop/serving/'
             "monitor-report.json, what opsloop serve exports on /metrics).</p>")
    for r in got.last_run:
        page.add(report_table(f"{r.get('monitor', '?')} on {r.get('model', '?')} ({fmt(r.get('rows', 0))} rows)",
                              r.get("metrics") or {}, r.get("baseline") or {}, r.get("alerts") or []))
    page.end()


def _aliases(page: Page, got: Gathered) -> None:
    if not got.history:
        page.section("aliases", "no alias changes")
        page.none(f"No alias of {got.model} was ever set.")
        return page.end()
    page.section("aliases", "shown")
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    page.figure(figs.alias_history(got.history, now))
    rows = [[c.at[:19].replace("T", " "), c.alias, "-" if c.from_version is None else c.from_version, c.to_version,
             c.action, c.actor, c.reason] for c in reversed(got.history[-MAX_CHANGES:])]
    older = len(got.history) - len(rows)
    more = f"; {older:,} older change(s) in opsloop models history" if older else ""
    page.add(f'<p class="muted">Newest first{more}.</p>'
             + table(["at (UTC)", "alias", "from", "to", "action", "who", "why"], rows))
    page.end()


def _loop(page: Page, got: Gathered) -> None:
    if got.cycles is None:
        page.section("loop", "no journal")
        page.none(f"The registry {got.store} keeps no loop journal.")
        return page.end()
    if not got.cycles:
        page.section("loop", "no cycles")
        page.none(f"No loop cycles of {got.model} in the journal yet (opsloop loop --once runs one).")
        return page.end()
    page.section("loop", "shown")
    page.figure(figs.journal(got.cycles))
    rows = []
    for c in got.cycles:
        body = dict(c.body)
        gate = body.get("gate") or {}
        figures = (f"{gate.get('metric')}: challenger {fmt(gate.get('challenger'))} vs champion "
                   f"{fmt(gate.get('champion'))}, margin {fmt(gate.get('margin'))}") if gate else "-"
        why = body.get("error") or "; ".join(body.get("reasons") or []) or "-"
        rows.append([c.id, str(body.get("at") or c.at)[:19].replace("T", " "), c.status, body.get("decision", "-"),
                     body.get("production") or "-", body.get("candidate") or "-", figures,
                     "yes" if body.get("promoted") else "no", why])
    page.add("<p class=\"muted\">Newest first, as opsloop loop history shows it.</p>"
             + table(["#", "cycle at (UTC)", "status", "decision", "production", "candidate", "gate", "promoted",
                      "why"], rows))
    _loop_monitors(page, got)
    page.end()


def _loop_monitors(page: Page, got: Gathered) -> None:
    """What the loop's monitors saw on production, cycle by cycle (the journal keeps their figures): drift and
    quality over time even where the prediction log is not at hand (a registry shared through PostgreSQL)."""
    from opsloop.monitoring import Window
    from opsloop.types import MonitorReport

    windows = []
    for c in sorted(got.cycles or [], key=lambda c: c.id):
        reports = tuple(MonitorReport(monitor=str(r.get("monitor", "")), rows=int(r.get("rows") or 0),
                                      metrics={k: v for k, v in (r.get("metrics") or {}).items()
                                               if figs.number(v) is not None},
                                      alerts=tuple(r.get("alerts") or ()))
                        for r in dict(c.body).get("monitor") or [] if isinstance(r, Mapping))
        if reports:
            at = datetime.fromisoformat(str(dict(c.body).get("at") or c.at).replace("Z", "+00:00"))
            windows.append(Window(start=at, end=at, rows=max(r.rows for r in reports), reports=reports))
    if not windows:
        return
    page.add(f"<h3>What the loop's monitors saw, cycle by cycle ({len(windows)} cycle(s))</h3>")
    for monitor in dict.fromkeys(r.monitor for w in windows for r in w.reports):
        page.figure(figs.scalars(monitor, windows, per="cycle"))
        families = dict.fromkeys(match["family"] for w in windows for r in w.reports if r.monitor == monitor
                                 for match in map(figs.FAMILY.fullmatch, r.metrics) if match)
        for name in families:
            page.figure(figs.family(monitor, name, windows, per="cycle", whole="in the loop's cycle"))
        latest = next(r for w in reversed(windows) for r in w.reports if r.monitor == monitor)
        page.add(report_table(f"{monitor} in the latest cycle ({latest.rows:,} rows)", latest.metrics, {},
                              latest.alerts))
