"""Retrain when a monitored figure crosses a limit, held back by guards: positives, persistence, cool-down, rate.

The `threshold-policy` reads every monitor report and weighs three
conditions (issue 9, item 6):

- quality: on enough labelled rows (`min_rows`) and positives
  (`min_positives`), a quality metric is below its floor (`min_f1`,
  `min_recall`, `min_precision`) or fell more than `max_drop` below its
  validation baseline;
- drift: the largest per-feature PSI exceeds `max_drift_psi` on
  `drift_windows` consecutive windows (decisions);
- alerts: any monitor alert, when `on_alerts` is true.

`combine = "any"` retrains when one switched-on condition holds, `"all"`
only when every one does. A retrain is then held back by the cool-down
(`cooldown` since the last retrain this policy decided) and by the rate
limit (`max_retrains` per `retrain_period`). Every reason is one sentence
with its figures; a reason that was held back says which guard held it.

Persistence, cool-down and rate need memory across runs: a small JSON state
per model, `.opsloop/policy/<model>.json` under the run's working directory,
written atomically, records each decision's time, the window it judged and
the retrains decided. A state that cannot be read is reported and replaced
by a fresh one; the decision never fails for it.

Options (`[retrain.threshold-policy]`): see `Options`, and
docs/stages/deploy-monitor-retrain.md for the defaults measured on real data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from opsloop import RetrainDecision, hookimpl
from opsloop.plugins.quality_monitor import LOWER_IS_BETTER, worsening

if TYPE_CHECKING:
    from opsloop.types import ModelVersion, MonitorReport, RunContext

#: Where the state lives, under the run's working directory.
STATE_DIR = Path(".opsloop") / "policy"
#: Decisions kept in the state (persistence needs only the last few).
KEEP_WINDOWS = 200
STATE_FORMAT = 1

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")

_optional_unit = attrs.validators.optional([attrs.validators.ge(0), attrs.validators.le(1)])
# inf would silently switch a check off: None says so (issue 8, item 9).
_optional_finite = attrs.validators.optional([attrs.validators.ge(0), attrs.validators.lt(math.inf)])


def parse_duration(text: str) -> timedelta:
    """`"90s"`, `"30m"`, `"6h"`, `"1d"`, `"2w"` (a bare number is seconds) as a timedelta."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(text)
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def _duration(*, positive: bool) -> Any:
    def check(_: Any, attribute: attrs.Attribute, value: str) -> None:
        try:
            ok = parse_duration(value) > timedelta(0) or not positive
        except ValueError:
            ok = False
        if not ok:
            least = "greater than 0" if positive else '"0" to switch it off'
            raise ValueError(f"'{attribute.name}' must be a duration such as \"30m\", \"6h\" or \"1d\" "
                             f"(units s, m, h, d, w; {least}), got {value!r}")
    return check


def _iso_time(_: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is None:
        return
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{attribute.name}' must be an ISO 8601 time such as \"2024-01-10T00:00:00Z\", "
                         f"got {value!r}") from None


@attrs.frozen(kw_only=True)
class Options:
    """Options of the `threshold-policy` (`[retrain.threshold-policy]`).

    Attributes:
        min_f1: Retrain when F1 is below this; None skips the check.
        min_recall: Retrain when recall is below this; None skips the check.
        min_precision: Retrain when precision is below this; None skips the check.
        max_drop: Retrain when a metric of `drop_metrics` is more than this
            (absolute) below its validation baseline; None skips the check.
        drop_metrics: The metrics `max_drop` applies to.
        max_drift_psi: Retrain when the largest per-feature PSI of a drift
            report (`drift_max_psi`) exceeds this; None skips the check.
        min_rows: Reports on fewer (labelled) rows are not judged.
        on_alerts: Also retrain on any alert a monitor raised.
        min_positives: A quality limit crossed on a report with fewer
            labelled positives (its `positives` figure) does not count.
        drift_windows: Drift counts only when it held on this many
            consecutive decisions of the same version (1: at once).
        cooldown: No retrain within this long of the last one this policy
            decided (`"6h"`, `"1d"`; `"0"` switches it off).
        max_retrains: At most this many retrains per `retrain_period`;
            None: no limit.
        retrain_period: The period `max_retrains` counts over.
        combine: `"any"`: retrain when one condition (quality, drift,
            alerts) holds; `"all"`: only when every switched-on one does.
        now: The decision's time (ISO 8601; no zone means UTC), for tests;
            None: the run's time (`run.now`, which `opsloop backtest` sets
            to the replayed moment), else the clock.
    """

    min_f1: float | None = attrs.field(default=None, validator=_optional_unit)
    min_recall: float | None = attrs.field(default=None, validator=_optional_unit)
    min_precision: float | None = attrs.field(default=None, validator=_optional_unit)
    max_drop: float | None = attrs.field(default=0.1, validator=_optional_finite)
    drop_metrics: list[str] = attrs.field(factory=lambda: ["f1", "recall", "precision", "roc_auc"])
    max_drift_psi: float | None = attrs.field(default=1.0, validator=_optional_finite)
    min_rows: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    on_alerts: bool = False
    min_positives: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    drift_windows: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    cooldown: str = attrs.field(default="1d", validator=_duration(positive=False))
    max_retrains: int | None = attrs.field(default=2, validator=attrs.validators.optional(attrs.validators.ge(1)))
    retrain_period: str = attrs.field(default="7d", validator=_duration(positive=True))
    combine: str = attrs.field(default="any", validator=attrs.validators.in_(("any", "all")))
    now: str | None = attrs.field(default=None, validator=_iso_time)


@hookimpl
def plugin_options() -> type:
    return Options


@hookimpl
def decide_retrain(version: ModelVersion, reports: list[MonitorReport], options: Options | None,
                   run: RunContext | None) -> RetrainDecision:
    """Weigh quality, drift and alerts, then the guards; reasons carry the figures either way.

    `run` has no default on purpose: pluggy passes no argument an impl gives a
    default. None (a direct call) keeps the state in memory for this call only.
    """
    options = options or Options()
    if not reports:
        return RetrainDecision(retrain=False, reasons=("no monitor report to judge: keeping the model",))
    # The option first (tests), then the run's time (a backtest replays history), then the clock.
    clock = options.now and datetime.fromisoformat(options.now) or getattr(run, "now", None)
    now = _utc(clock) if clock else datetime.now(UTC)
    found = _Findings()
    for report in reports:
        _judge(report, dict(version.metrics), options, found)
    state = _State.load(version.name, run, now)
    window = {"time": _iso(now), "model": version.ref, "id": _window_id(version, reports),
              "drift": bool(found.drift) if found.drift_judged else None}
    again = [w for w in state.windows if w.get("id") == window["id"] and w.get("model") == version.ref]
    history = [w for w in state.windows if w not in again]
    streak = _streak([*history, window], version.ref)

    held: list[str] = list(found.held)
    holds: dict[str, list[str]] = {}
    if _quality_on(options):
        holds["quality"] = found.quality
    if options.max_drift_psi is not None:
        holds["drift"] = found.drift if streak >= options.drift_windows else []
        if found.drift and streak < options.drift_windows:
            held.insert(0, f"drift on {streak} of {options.drift_windows} required windows: "
                           + "; ".join(found.drift))
        elif found.drift and options.drift_windows > 1:
            holds["drift"] = [f"{b} (on {streak} consecutive windows, drift_windows {options.drift_windows})"
                              for b in found.drift]
    if options.on_alerts:
        holds["alerts"] = found.alerts
    met = [name for name, breaches in holds.items() if breaches]
    fire = bool(met) and (options.combine == "any" or len(met) == len(holds))
    breaches = [b for name in met for b in holds[name]]
    if met and not fire:
        missing = [name for name in holds if name not in met]
        held.insert(0, f"combine = all: {' and '.join(met)} holds but {' and '.join(missing)} does not: "
                       + "; ".join(breaches))
    if fire:
        guards = _rate_guards(state.retrains, now, options)
        if guards:
            fire = False
            held = guards + [f"held back: {b}" for b in breaches] + held
    window["retrain"] = fire or any(w.get("retrain") for w in again)  # a re-look keeps the window's retrain
    state.save([*history, window][-KEEP_WINDOWS:], [*state.retrains, now] if fire else state.retrains)
    if fire:
        return RetrainDecision(retrain=True, reasons=tuple(breaches + state.notes))
    return RetrainDecision(retrain=False, reasons=tuple(held + found.kept + state.notes))


# ---------------------------------------------------------------------------
# Judging one report
# ---------------------------------------------------------------------------


@attrs.define
class _Findings:
    """What the reports say, condition by condition (breaches that count), and what was set aside."""

    quality: list[str] = attrs.field(factory=list)
    drift: list[str] = attrs.field(factory=list)
    alerts: list[str] = attrs.field(factory=list)
    held: list[str] = attrs.field(factory=list)
    kept: list[str] = attrs.field(factory=list)
    drift_judged: bool = False


def _quality_on(options: Options) -> bool:
    return any(v is not None for v in (options.min_f1, options.min_recall, options.min_precision, options.max_drop))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _judge(report: MonitorReport, version_metrics: dict[str, float], options: Options, found: _Findings) -> None:
    """Add one report's breaches, held-back breaches and kept figures to `found`."""
    figures = report.metrics
    who = f"{report.monitor}: " if report.monitor else ""
    rows = int(figures["rows"]) if _finite(figures.get("rows")) else report.rows
    on = f"on {rows:,} rows"
    if options.on_alerts:
        found.alerts.extend(f"{who}alert: {a}" for a in report.alerts)
    noted = [f"{who}noted alert: {a}" for a in report.alerts]
    if rows < options.min_rows:
        found.kept.extend([f"{who}not judged: {rows:,} (labelled) rows < min_rows {options.min_rows:,}", *noted])
        return
    quality, within = [], []
    floors = {"f1": options.min_f1, "recall": options.min_recall, "precision": options.min_precision}
    for name, floor in floors.items():
        value = figures.get(name)
        if floor is None or not _finite(value):
            continue
        if value < floor:
            quality.append(f"{who}{name} {value:.2f} < min_{name} {floor:.2f} {on}")
        else:
            within.append(f"{name} {value:.2f} >= min_{name} {floor:.2f}")
    if options.max_drop is not None:
        baseline = {**version_metrics, **report.baseline}
        for name in options.drop_metrics:
            value, base = figures.get(name), baseline.get(name)
            if not (_finite(value) and _finite(base)):
                continue
            if worsening(name, value, base) > options.max_drop:
                where = "above" if name in LOWER_IS_BETTER else "below"
                quality.append(f"{who}{name} {value:.2f} is {worsening(name, value, base):.2f} {where} its "
                               f"validation baseline {base:.2f} (max_drop {options.max_drop:.2f}) {on}")
            else:
                within.append(f"{name} {value:.2f} within {options.max_drop:.2f} of baseline {base:.2f}")
    positives = figures.get("positives")
    few = _finite(positives) and positives < options.min_positives
    if quality and few:
        found.held.append(f"{who}quality drop not counted: {int(positives):,} labelled positives < min_positives "
                          f"{options.min_positives:,} ({'; '.join(q.removeprefix(who) for q in quality)})")
    elif few and within:
        within.append(f"on {int(positives):,} labelled positives (< min_positives {options.min_positives:,})")
    found.quality.extend([] if few else quality)
    drift = []
    psi = figures.get("drift_max_psi")
    if options.max_drift_psi is not None and _finite(psi):
        found.drift_judged = True
        worst = _worst_feature(figures, "psi[")
        feature = f" ({worst})" if worst else ""
        if psi > options.max_drift_psi:
            drift.append(f"{who}max PSI {psi:.2f}{feature} > max_drift_psi {options.max_drift_psi:.2f} "
                         f"{on}: the data drifted")
        else:
            within.append(f"max PSI {psi:.2f}{feature} <= {options.max_drift_psi:.2f}")
    found.drift.extend(drift)
    if quality or drift:
        found.kept.extend(noted)
        return
    if within:
        found.kept.append(f"{who}all figures within limits {on}: {', '.join(within)}")
    else:
        found.kept.append(f"{who}no figure this policy checks (f1, recall, precision, drift_max_psi) {on}")
    found.kept.extend(noted)


def _worst_feature(figures: Any, prefix: str) -> str | None:
    """The feature with the highest `<prefix><feature>]` figure."""
    per = {k[len(prefix):-1]: v for k, v in figures.items() if k.startswith(prefix) and k.endswith("]")
           and _finite(v)}
    return max(per, key=per.__getitem__) if per else None


# ---------------------------------------------------------------------------
# Guards that need memory: persistence, cool-down, rate
# ---------------------------------------------------------------------------


def _streak(windows: list[dict[str, Any]], model: str) -> int:
    """Consecutive windows of `model`, newest back to the last retrain decided, whose drift held.

    Windows not judged for drift are skipped. A retrain answers the drift seen
    until then: drift must persist `drift_windows` windows again to count again.
    """
    count = 0
    for i, window in enumerate(reversed(windows)):
        if window.get("model") != model or (i and window.get("retrain")):
            break
        if window.get("drift") is None:
            continue
        if not window["drift"]:
            break
        count += 1
    return count


def _rate_guards(retrains: list[datetime], now: datetime, options: Options) -> list[str]:
    """Why a retrain must wait: the cool-down, then the rate limit (empty: it may go)."""
    guards = []
    cooldown = parse_duration(options.cooldown)
    if retrains and cooldown > timedelta(0) and now - max(retrains) < cooldown:
        guards.append(f"cool-down: last retrain {_ago(now - max(retrains))} ago, {options.cooldown} required")
    period = parse_duration(options.retrain_period)
    recent = [t for t in retrains if now - t < period]
    if options.max_retrains is not None and len(recent) >= options.max_retrains:
        guards.append(f"max_retrains: {len(recent)} retrain(s) in the last {options.retrain_period} (the last "
                      f"{_ago(now - max(recent))} ago), {options.max_retrains} allowed")
    return guards


def _ago(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.0f}{unit}" if value >= 10 or value == int(value) else f"{value:.1f}{unit}"
    return f"{seconds:.0f}s"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _window_id(version: ModelVersion, reports: list[MonitorReport]) -> str:
    """The same reports on the same version are the same window: a rerun on the same data adds none."""
    body = [[r.monitor, r.model, r.rows, sorted(r.metrics.items()), list(r.alerts)] for r in reports]
    text = json.dumps([version.ref, body], default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def state_path(workdir: Path | str, model: str) -> Path:
    """Where the policy keeps its state for `model` under `workdir`."""
    safe = model if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", model) else \
        "model-" + hashlib.sha256(model.encode()).hexdigest()[:16]
    return Path(workdir) / STATE_DIR / f"{safe}.json"


@attrs.define
class _State:
    """The policy's memory of one model: decisions (windows) and retrain times; None path: kept in memory."""

    path: Path | None
    windows: list[dict[str, Any]] = attrs.field(factory=list)
    retrains: list[datetime] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    log: Any = None

    @classmethod
    def load(cls, model: str, run: RunContext | None, now: datetime) -> _State:
        if run is None:
            return cls(path=None)
        state = cls(path=state_path(run.workdir, model), log=run.log)
        try:
            text = state.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return state
        except (OSError, UnicodeDecodeError) as exc:
            return state._fresh(f"cannot be read ({exc.__class__.__name__}: {exc})")
        try:
            data = json.loads(text)
            windows = [dict(w) for w in data["windows"]]
            for w in windows:
                _utc(datetime.fromisoformat(w["time"]))
            retrains = [_utc(datetime.fromisoformat(t)) for t in data["retrains"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return state._fresh(f"is not a valid policy state ({exc.__class__.__name__}: {exc})")
        # A replay that restarts earlier than the state (a second backtest on the same directory)
        # must not be cooled down by retrains "in the future".
        later = [t for t in retrains if t > now]
        if later or any(_utc(datetime.fromisoformat(w["time"])) > now for w in windows):
            state._note(f"entries later than the decision time {_iso(now)} were left out")
            windows = [w for w in windows if _utc(datetime.fromisoformat(w["time"])) <= now]
            retrains = [t for t in retrains if t <= now]
        state.windows, state.retrains = windows, retrains
        return state

    def _note(self, message: str) -> None:
        text = f"policy state {self.path}: {message}"
        self.notes.append(text)
        if self.log is not None:
            self.log.warning("threshold-policy: %s", text)

    def _fresh(self, why: str) -> _State:
        self._note(f"{why}; starting from a fresh state")
        return self

    def save(self, windows: list[dict[str, Any]], retrains: list[datetime]) -> None:
        """Write atomically (a temporary file renamed over the state); a failure warns, never raises."""
        if self.path is None:
            return
        data = {"format": STATE_FORMAT, "windows": windows,
                "retrains": [_iso(t) for t in sorted(retrains)[-KEEP_WINDOWS:]]}
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            self._note(f"could not be written ({exc.__class__.__name__}: {exc}); the guards will not remember "
                       "this decision")
