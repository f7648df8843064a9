"""The plots of `opsloop report`, as Plotly figures (plotly is imported here only: the `report` extra).

Each function returns a figure, or None when there is nothing to draw (the
page then says so in one line). Values go in as Python lists, so that the
figure's JSON holds the numbers themselves (what the tests compare with the
registry), not NumPy's base64 arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from opsloop.monitoring import Window
    from opsloop.report.collect import Scores
    from opsloop.store import AliasChange, CycleRecord
    from opsloop.types import ModelVersion

#: Metrics shown first when a version has them (the rest follow in their own order, up to `MAX_METRICS`).
KEY_METRICS = ("f1", "precision", "recall", "roc_auc", "pr_auc", "accuracy", "incident_recall", "alerts_per_day",
               "rmse", "mae", "r2")
MAX_METRICS = 6
#: Counts that say how much was looked at, not how it went: plotted only when nothing else is there.
COUNTS = ("rows", "reference_rows", "positives", "days")
#: Most series drawn as small multiples, and most keys (features, series) of one figure family in a heatmap.
MAX_SERIES = 24
MAX_KEYS = 40
MAX_SPANS = 300  # incident spans shaded per series
FAMILY = re.compile(r"(?P<family>[^\[\]]+)\[(?P<key>.+)\]")
PRODUCTION = "#d62728"
#: One colour per version where a figure has a line per version in several panels (red is production's mark).
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f")
INCIDENT = "rgba(214, 39, 40, 0.18)"


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0}, height=height, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 90, "b": 40},
                      legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.06, "yanchor": "bottom"})
    return fig


def number(value: Any) -> float | None:
    """A figure as a JSON number, None for NaN, infinities and what is not a number."""
    import math

    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def chosen_metrics(tables: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics to plot: `KEY_METRICS` first, then the others, that some table has a number for."""
    present = list(dict.fromkeys(k for t in tables for k, v in t.items() if number(v) is not None))
    ordered = [k for k in KEY_METRICS if k in present] + [k for k in present if k not in KEY_METRICS]
    ordered = [k for k in ordered if k not in COUNTS] + [k for k in ordered if k in COUNTS]
    return [k for k in ordered if not FAMILY.fullmatch(k)][:MAX_METRICS]


def folds(versions: Sequence[tuple[ModelVersion, Mapping[str, Any]]]) -> go.Figure | None:
    """Validation per fold: one panel per metric, a line per version over its folds."""
    from plotly.subplots import make_subplots

    folded = [(v, report) for v, report in versions if report.get("folds")]
    if not folded:
        return None
    metrics = chosen_metrics([f for _, r in folded for f in r["folds"]])
    if not metrics:
        return None
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.04)
    for i, (v, report) in enumerate(folded):
        for col, metric in enumerate(metrics, start=1):
            fig.add_trace(_go().Scatter(
                x=[i + 1 for i in range(len(report["folds"]))], y=[number(f.get(metric)) for f in report["folds"]],
                mode="lines+markers", name=f"version {v.version}", legendgroup=str(v.version),
                line={"color": PALETTE[i % len(PALETTE)]}, showlegend=col == 1,
                meta={"version": v.version, "metric": metric}), row=1, col=col)
    fig.update_xaxes(title_text="fold", dtick=1)
    return _layout(fig, "Validation per fold (each version's folds, in time order)", 380)


def versions(rows: Sequence[ModelVersion], production: int | None) -> go.Figure | None:
    """Validation means across versions, a line per metric, production marked."""
    metrics = chosen_metrics([v.metrics for v in rows])
    if not metrics:
        return None
    go = _go()
    fig = go.Figure()
    numbers = [v.version for v in rows]
    for metric in metrics:
        fig.add_trace(go.Scatter(x=numbers, y=[number(v.metrics.get(metric)) for v in rows], mode="lines+markers",
                                 name=metric, meta={"metric": metric}))
    if production is not None:
        fig.add_vline(x=production, line={"color": PRODUCTION, "dash": "dash"},
                      annotation={"text": f"production: {production}", "font": {"color": PRODUCTION}})
    fig.update_xaxes(title_text="version", dtick=1)
    fig.update_yaxes(title_text="validation mean")
    return _layout(fig, "Validation metrics across versions")


def scores(parts: Sequence[Scores], thresholds: Mapping[int, float | None]) -> tuple[go.Figure | None, list[str]]:
    """Scores against incidents over time: a panel per series, a line per version, its threshold dashed, incident
    spans (rows labelled 1, by feedback or in the source) shaded. Also the series left out (beyond `MAX_SERIES`)."""
    import pandas as pd
    from plotly.subplots import make_subplots

    frames = [p.frame.assign(version=p.version) for p in parts if len(p.frame)]
    if not frames:
        return None, []
    rows = pd.concat(frames, ignore_index=True)
    spans = pd.concat([p.incidents for p in parts], ignore_index=True)
    weight = spans.groupby("series").size().reindex(rows["series"].unique(), fill_value=0)
    order = sorted(weight.index, key=lambda s: (-int(weight[s]), str(s)))  # series with incidents first
    shown, left_out = sorted(order[:MAX_SERIES]), sorted(order[MAX_SERIES:])
    fig = make_subplots(rows=len(shown), cols=1, shared_xaxes=True, subplot_titles=shown, vertical_spacing=min(
        0.08, 0.3 / len(shown)))
    go = _go()
    shapes: list[dict[str, Any]] = []
    logged = sorted(rows["version"].unique().tolist())
    legend: set[int] = set()  # versions in the legend already: each once, at its first panel
    for row, series in enumerate(shown, start=1):
        mine = rows[rows["series"] == series]
        for version, part in mine.groupby("version", sort=True):
            colour = PALETTE[logged.index(version) % len(PALETTE)]  # a version's colour in every panel
            first = int(version) not in legend
            legend.add(int(version))
            fig.add_trace(go.Scatter(x=[t.isoformat() for t in part["time"]], y=part["score"].round(6).tolist(),
                                     mode="lines", name=f"version {version}", legendgroup=str(version),
                                     line={"color": colour, "width": 1}, showlegend=first,
                                     meta={"series": series, "version": int(version)}), row=row, col=1)
            cut = thresholds.get(int(version))
            if cut is not None:
                fig.add_trace(go.Scatter(x=[part["time"].min().isoformat(), part["time"].max().isoformat()],
                                         y=[cut, cut], mode="lines", name=f"threshold of version {version}",
                                         legendgroup=str(version), line={"color": colour, "dash": "dash", "width": 1},
                                         showlegend=first, hoverinfo="name+y"), row=row, col=1)
        axis = "" if row == 1 else str(row)
        shapes.extend({"type": "rect", "xref": f"x{axis}", "yref": f"y{axis} domain", "x0": span.start.isoformat(),
                       "x1": span.end.isoformat(), "y0": 0, "y1": 1, "fillcolor": INCIDENT, "line": {"width": 0},
                       "layer": "below"} for span in spans[spans["series"] == series].head(MAX_SPANS).itertuples())
    fig.update_layout(shapes=shapes)  # at once: `add_shape` copies every shape so far, quadratic in spans
    fig.update_yaxes(title_text="score")
    return _layout(fig, "Scores against incidents (shaded: rows labelled 1)",
                   max(300, 170 * len(shown) + 80)), left_out


def family(monitor: str, name: str, windows: Sequence[Window], per: str = "window",
           whole: str = "over the logged period") -> go.Figure | None:
    """One family of figures (`psi[m01]`, `f1[omi-3]`: one per feature or series) of one monitor over the windows:
    a heatmap (keys by their highest value), or bars with one window. `per` and `whole` end the title."""
    go = _go()
    columns = [w for w in windows if any(r.monitor == monitor for r in w.reports)]
    values: dict[str, list[float | None]] = {}
    for i, w in enumerate(columns):
        report = next(r for r in w.reports if r.monitor == monitor)
        for figure, value in report.metrics.items():
            match = FAMILY.fullmatch(figure)
            if match and match["family"] == name:
                values.setdefault(match["key"], [None] * len(columns))[i] = number(value)
    if not values:
        return None
    keys = sorted(values, key=lambda k: -max((v for v in values[k] if v is not None), default=float("-inf")))
    keys = keys[:MAX_KEYS]
    title = f"{monitor}: {name}[…] ({len(values)} keys" + (f", the {MAX_KEYS} highest" if len(values) > MAX_KEYS
                                                          else "") + ")"
    if len(columns) == 1:
        fig = go.Figure(go.Bar(x=keys, y=[values[k][0] for k in keys], meta={"monitor": monitor, "family": name}))
        return _layout(fig, f"{title} {whole}", 340)
    fig = go.Figure(go.Heatmap(
        z=[values[k] for k in reversed(keys)], y=list(reversed(keys)), x=[w.start.isoformat() for w in columns],
        colorscale="YlOrRd", hoverongaps=False, meta={"monitor": monitor, "family": name}))
    return _layout(fig, f"{title} per {per}", max(300, 18 * len(keys) + 120))


def scalars(monitor: str, windows: Sequence[Window], per: str = "window") -> go.Figure | None:
    """A monitor's single figures (no `[...]`) over the windows, a panel each, with the validation baseline
    dashed; None with fewer than two windows (the table has them)."""
    from plotly.subplots import make_subplots

    reports = [(w, r) for w in windows for r in w.reports if r.monitor == monitor]
    if len(reports) < 2:
        return None
    names = chosen_metrics([r.metrics for _, r in reports])
    if not names:
        return None
    go = _go()
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.04)
    x = [w.start.isoformat() for w, _ in reports]
    for col, name in enumerate(names, start=1):
        fig.add_trace(go.Scatter(x=x, y=[number(r.metrics.get(name)) for _, r in reports], mode="lines+markers",
                                 name=name, showlegend=False, meta={"monitor": monitor, "figure": name}),
                      row=1, col=col)
        base = number(reports[-1][1].baseline.get(name))
        if base is not None:
            fig.add_trace(go.Scatter(x=[x[0], x[-1]], y=[base, base], mode="lines", name="at validation",
                                     line={"dash": "dash", "color": "#7f7f7f"}, showlegend=False), row=1, col=col)
    return _layout(fig, f"{monitor} per {per} (dashed: at validation)", 320)


def alias_history(changes: Sequence[AliasChange], now: str) -> go.Figure | None:
    """Where each alias pointed over time, as steps up to `now`; hover says who and why."""
    if not changes:
        return None
    go = _go()
    fig = go.Figure()
    for alias in sorted({c.alias for c in changes}):
        mine = [c for c in changes if c.alias == alias]
        fig.add_trace(go.Scatter(
            x=[c.at for c in mine] + [now], y=[c.to_version for c in mine] + [mine[-1].to_version],
            mode="lines+markers", line={"shape": "hv"},
            name=alias, text=[f"{c.action} by {c.actor}: {c.reason[:200]}" for c in mine] + ["now"],
            hovertemplate="%{x}<br>→ version %{y}<br>%{text}<extra>" + alias + "</extra>", meta={"alias": alias}))
    fig.update_yaxes(title_text="version", dtick=1)
    return _layout(fig, "Alias history (where each alias pointed, and when)", 320)


def journal(cycles: Sequence[CycleRecord]) -> go.Figure | None:
    """The loop's cycles in time order: the gate's challenger against champion where a gate ran, and each status."""
    if not cycles:
        return None
    go = _go()
    ordered = sorted(cycles, key=lambda c: c.id)
    at = [str(c.body.get("at") or c.at) for c in ordered]
    fig = go.Figure()
    for side in ("challenger", "champion"):
        fig.add_trace(go.Scatter(x=at, y=[number((c.body.get("gate") or {}).get(side)) for c in ordered],
                                 mode="markers", name=f"gate: {side}", marker={"size": 10}))
    fig.add_trace(go.Scatter(x=at, y=[0] * len(ordered), mode="markers+text", name="status",
                             text=[c.status for c in ordered], textposition="top center", yaxis="y2",
                             marker={"symbol": "diamond", "size": 9}))
    metric = next(((c.body.get("gate") or {}).get("metric") for c in ordered if c.body.get("gate")), None)
    fig.update_layout(yaxis={"title": {"text": metric or "gate figure"}, "domain": [0.25, 1]},
                      yaxis2={"domain": [0, 0.15], "visible": False})
    return _layout(fig, "Loop cycles (the gate's figures, and what each cycle did)", 340)
