"""`opsloop loop` and `opsloop backtest` on real data: the issue's acceptance, and what a cycle costs (issue 12).

Usage: python benchmarks/loop.py [--part smd,asd,overhead] [--repeats 3] [--data-dir ../shared/data]
                                 [--smd-alt] [--asd-forced] [--tail 0.3]

Parts (all by default; `--part` runs some):

- `smd`: SMD machine-1-6 (1-minute steps, a strong shift at row 11,844,
  2024-01-09 05:24 on the script's time axis). `opsloop.backtest.backtest`
  trains the first version before the shift and replays the later rows in
  daily chunks (`every = 1d`), labels a chunk late as the backtest gives
  them. The config is the shipped default for everything not data-specific
  (the preprocess, train and validate of core/default.toml, the
  `threshold-policy` and `champion-challenger` defaults) plus
  `drift-monitor` beside `quality-monitor`. Prints per chunk the three
  strategies' PR AUC and what the cycle did, whether the loop saw the
  shift, retrained, promoted, and the PR AUC on the last `--tail` of rows
  by time of the models that scored each chunk: the loop's, the stale
  (never retrained) one's and the always-retrained one's. Those are
  computed by re-scoring every chunk with the version named in
  `chunk.models` (the backtest keeps no per-row scores), loaded from the
  backtest's kept registry with the public API, each chunk scored alone as
  the backtest scores it; the script checks that the re-scored chunks give
  the backtest's own per-chunk PR AUC. Each version the loop promoted is
  also scored alone on the tail and compared with the stale one by
  `champion-challenger`'s own bootstrap (margin and 90% interval). Then the
  same replay with SMD_CHOSEN, a policy chosen by backtest (a 7-day window,
  the gate on F1; not the defaults). `--smd-alt` also replays it with the
  option changes listed in SMD_ALTERNATIVES (not the defaults).
- `asd`: the embedded ASD data with core/default.toml's periods (train on
  the first week of omi-1..6, replay the second week of all 12 servers) and
  the same additions. Prints each cycle's time, decision and first reason,
  and checks that no two retrain decisions are closer than the policy's
  cool-down (1d) and no 7 days hold more than 2. `--asd-forced` also runs
  it with `min_f1 = 0.99, min_positives = 1` (a retrain wish every day, the
  guards at their defaults): not a default, it shows the guards at work;
  and twice more with the cool-down and rate limit off, so that the gate
  alone decides, with `[loop] holdout` at 2d (the default) and 1d.
- `overhead`: an ASD project (core/default.toml with drift-monitor, the
  gate, and `min_f1 = 0.99, min_positives = 1, cooldown = "0"` so the
  cycle retrains and gates), after `opsloop run` and the monitored rows'
  labels sent with `opsloop feedback --file`. Each repeat copies the
  project twice and times, interleaved (the order swapped every repeat):
  (a) one `Cycle(...).run()` as `opsloop loop --once` runs it, and (b) the
  same stages by hand with the Runner's methods on the same data (monitor,
  decide, preprocess, train, validate, register, loading both versions,
  scoring both on the holdout, the gate hook), the data read before the
  clock starts. Prints wall and CPU (process time, all threads) of both,
  the cycle against the sum of its own stages (plus the gate's scoring),
  and where the rest goes.

Every figure is a ratio within one run, or a median of repeats in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DAY = timedelta(days=1)

#: Not data-specific: everything else comes from core/default.toml.
ADDITIONS = """
[monitor]
plugins = ["quality-monitor", "drift-monitor"]

[gate]
plugins = ["champion-challenger"]
"""

SMD_DATA = """
[project]
name = "smd-loop"

[data]
source = "{source}"
target = "label"
time = "timestamp"
series = "entity"
train = "timestamp < '2024-01-09 05:24:00'"
monitor = "timestamp >= '2024-01-09 05:24:00'"
"""

#: Replayed with `--smd-alt` beside the defaults: (label, TOML appended). Not the defaults.
SMD_ALTERNATIVES: list[tuple[str, str]] = [
    ("NOT DEFAULT: [loop] holdout = 1d (the default until the figures below)", '\n[loop]\nholdout = "1d"\n'),
    ("NOT DEFAULT: no rolling features", '\n[preprocess]\nplugins = ["schema-check", "impute"]\n'),
    ("NOT DEFAULT: gate require_ci = false", "\n[gate.champion-challenger]\nrequire_ci = false\n"),
    ("NOT DEFAULT: policy drift_windows = 1", "\n[retrain.threshold-policy]\ndrift_windows = 1\n"),
    ("NOT DEFAULT: policy max_retrains = 100 (no rate limit)", "\n[retrain.threshold-policy]\nmax_retrains = 100\n"),
    ("NOT DEFAULT: [loop] window = 3d (sliding), max_retrains = 100",
     '\n[loop]\nwindow = "3d"\n\n[retrain.threshold-policy]\nmax_retrains = 100\n'),
]

#: Replayed in the `smd` part after the defaults: a policy chosen by backtest, as docs/loop.md suggests (not the
#: defaults): retrain on the last week only, and gate on F1 at each version's own alert threshold, which is what
#: the shift broke (the stale model's F1 is 0.000 on every day after it; its ranking stays near perfect).
SMD_CHOSEN = ("NOT DEFAULT, chosen by backtest: [loop] window = 7d, gate metric f1 (at each version's alert threshold)",
              '\n[loop]\nwindow = "7d"\n\n[gate.champion-challenger]\nmetric = "f1"\n')

#: Replayed in the `smd` and `asd` parts: the defaults without `[loop] recalibrate` (on by default since
#: 2026-12-03; before, a rejected cycle left production's threshold as it was).
RECALIBRATE = ("NOT DEFAULT: [loop] recalibrate = false (the default before 2026-12-03)",
               '\n[loop]\nrecalibrate = false\n')

ASD_FORCED = '\n[retrain.threshold-policy]\nmin_f1 = 0.99\nmin_positives = 1\n'
#: With `--asd-forced`, also: a retrain wish every chunk and no guards, so that only the gate decides.
ASD_UNGUARDED = ('\n[retrain.threshold-policy]\nmin_f1 = 0.99\nmin_positives = 1\ncooldown = "0"\n'
                 'max_retrains = 100\n')
OVERHEAD_POLICY = '\n[retrain.threshold-policy]\nmin_f1 = 0.99\nmin_positives = 1\ncooldown = "0"\n'


# -- helpers ------------------------------------------------------------------------------------------------

@contextmanager
def clock() -> Iterator[dict[str, float]]:
    """Wall and CPU (process time: every thread) of a block."""
    out: dict[str, float] = {}
    w, c = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        out["wall"], out["cpu"] = time.perf_counter() - w, time.process_time() - c


def smd_frame(data_dir: Path) -> Any:
    """SMD machine-1-6's labelled half (as tests/conftest.py's fixture reads it, checked against SHA256SUMS)."""
    spec = importlib.util.spec_from_file_location("build_embedded_data", REPO / "tools" / "build_embedded_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.smd_frame(data_dir / "smd")


def project_config(workdir: Path, toml: str) -> Any:
    from opsloop import config as config_mod

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "opsloop.toml").write_text(toml, encoding="utf-8")
    return config_mod.read(workdir=workdir)


def num(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def short(text: str, width: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


# -- backtests ----------------------------------------------------------------------------------------------

def run_backtest(cfg: Any, keep: Path) -> tuple[Any, dict[str, float]]:
    from opsloop.backtest import backtest

    with clock() as took:
        result = backtest(cfg, every=DAY, keep=keep)
    return result, took


def monitor_figure(cycle: Any, monitor: str, name: str) -> float:
    for report in cycle.monitor:
        if report["monitor"] == monitor:
            return report["metrics"].get(name, math.nan)
    return math.nan


def show_chunks(result: Any) -> None:
    """The backtest table: per chunk the three strategies side by side, what the cycle did, then the means."""
    print(f"  first version {result.train['version']} on {result.train['rows']:,} rows "
          f"({result.train['start']} to {result.train['end']}); {len(result.chunks)} chunks, "
          f"{result.retrains} retrain(s), {result.promotions} promotion(s)")
    print(f"  {'chunk end (UTC)':<16} {'rows':>5} {'pos':>4} | {'PR AUC loop':>11} {'stale':>6} {'always':>6} | "
          f"{'F1 loop':>7} {'stale':>6} {'always':>6} | {'loop model':<12} {'psi':>6} {'mon f1':>6} | cycle")
    for c in result.chunks:
        f = c.figures
        cyc = c.cycle
        did = cyc.status
        if cyc.gate:
            g = cyc.gate
            ci = g.get("ci") or [None, None]
            did += (f" (gate {g['metric']} {num(g['challenger'])} vs {num(g['champion'])}, margin "
                    f"{num(g['margin'], '+.3f')}, CI [{num(ci[0], '+.3f')}, {num(ci[1], '+.3f')}])")
        recalibrated = cyc.recalibrated or {}
        if recalibrated.get("applied"):
            did += (f"; threshold {recalibrated['old']['value']:.4g} -> {recalibrated['new']['value']:.4g} "
                    f"(F1 {recalibrated['old']['f1']:.3f} -> {recalibrated['new']['f1']:.3f} on the gate window)")
        probation = cyc.probation or {}
        if probation.get("gates"):  # the version the loop promoted, judged against the one it replaced
            g = probation["gates"][0]
            did += (f"; probation of {probation['version']}: {probation['outcome']} ({g['metric']} "
                    f"{num(g['champion'])} vs {num(g['challenger'])} for {probation['against']})")
        if cyc.error:
            did += f" error: {short(cyc.error, 80)}"
        print(f"  {c.end:%Y-%m-%d %H:%M} {c.rows:>5,} {c.positives:>4} | {num(f['loop'].get('pr_auc')):>11} "
              f"{num(f['stale'].get('pr_auc')):>6} {num(f['always'].get('pr_auc')):>6} | "
              f"{num(f['loop'].get('f1')):>7} {num(f['stale'].get('f1')):>6} {num(f['always'].get('f1')):>6} | "
              f"{c.models['loop']:<12} {num(monitor_figure(cyc, 'drift-monitor', 'drift_max_psi'), '.2f'):>6} "
              f"{num(monitor_figure(cyc, 'quality-monitor', 'f1'), '.2f'):>6} | {cyc.decision} -> {did}")
        print(f"  {'':<16}   reason: {short(cyc.reasons[0] if cyc.reasons else '-', 150)}")
        if cyc.decision == "retrain" and cyc.status == "keep" and len(cyc.reasons) > 1:
            print(f"  {'':<16}   then:   {short(cyc.reasons[-1], 150)}")
    for strategy, f in result.incidents.items():  # the on-call view, over the whole replay
        print(f"  on call, {strategy:<6}: {f['incidents_caught']:.0f} of {f['incidents']:.0f} incidents caught, median "
              f"delay {num(f['delay_median_s'] / 60, '.0f')} min, {f['alerts_per_day']:.1f} alerts/day "
              f"({f['false_alerts_per_day']:.1f} false), point-adjusted F1 {num(f['pa_f1'])}")
    means = result.means()
    print(f"  {'mean over chunks':<27} | {num(means['loop'].get('pr_auc')):>11} {num(means['stale'].get('pr_auc')):>6} "
          f"{num(means['always'].get('pr_auc')):>6} | {num(means['loop'].get('f1')):>7} "
          f"{num(means['stale'].get('f1')):>6} {num(means['always'].get('f1')):>6} |")


def verdict(result: Any) -> dict[str, Any]:
    """Did the loop see the shift (drift or quality named in a cycle's reasons), retrain, promote?"""
    seen = [c for c in result.chunks
            if any(("psi" in r.lower() or "drift" in r.lower() or "below" in r.lower() or "dropped" in r.lower())
                   for r in c.cycle.reasons)]
    retrained = [c for c in result.chunks if c.cycle.candidate is not None]
    promoted = [c for c in result.chunks if c.cycle.promoted]
    return {"seen": seen, "retrained": retrained, "promoted": promoted}


def rescore_tail(cfg: Any, keep: Path, result: Any, tail: float) -> dict[str, Any]:
    """PR AUC on the last `tail` of rows (by time) of the models that scored each chunk, re-scored chunk by
    chunk (as the backtest scores) with the versions named in `chunk.models`, from the kept registry; and each
    version the loop promoted, alone on those rows against the stale one, judged by the built-in gate
    (`champion-challenger` at its defaults: margin, 90% block-bootstrap interval)."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from opsloop import data as data_mod
    from opsloop.bundle import read_bundle
    from opsloop.config import Config
    from opsloop.plugins import champion_gate
    from opsloop.runner import judge
    from opsloop.session import Session
    from opsloop.types import Contender

    table = {**cfg.table, "store": {"uri": str(keep / ".opsloop"), "plugins": ["local-store"]},
             "deploy": {"plugins": []}}
    session = Session.open(Config.from_table(table, path=cfg.path, workdir=keep))
    raw = data_mod.load(cfg)
    train_raw, replay = data_mod.periods(raw, cfg)
    frame = replay.frame.sort_values([raw.time, raw.series], kind="stable").reset_index(drop=True)
    times = pd.to_datetime(frame[raw.time], utc=True)
    all_times = pd.to_datetime(raw.frame[raw.time], utc=True)
    loaded: dict[str, Any] = {}
    scored: dict[tuple[str, int], tuple[Any, Any]] = {}
    parts: dict[str, list[Any]] = {"loop": [], "stale": [], "always": []}
    check = 0.0
    promoted = sorted({f"{result.model}:{c.cycle.candidate}" for c in result.chunks if c.cycle.promoted})
    stale_ref = result.chunks[0].models["stale"]
    with session.open_store() as store:
        def model(ref: str) -> Any:
            if ref not in loaded:
                name, n = ref.rsplit(":", 1)
                version = store.get(name, int(n))
                loaded[ref] = (version, read_bundle(Path(version.path), session.plugins, ref=version.ref,
                                                    digest=version.digest))
            return loaded[ref][1]

        def score(ref: str, i: int, rows: Any) -> tuple[Any, Any]:
            if (ref, i) not in scored:
                scored[(ref, i)] = judge(model(ref), rows)
            return scored[(ref, i)]

        for i, c in enumerate(result.chunks):
            mask = ((times >= c.start) & (times < c.end)).to_numpy()
            rows = replay.derive(frame[mask].reset_index(drop=True))
            for strategy in parts:
                judged, predictions = score(c.models[strategy], i, rows)
                labels = judged.frame[judged.target].to_numpy(dtype=float)
                scores = predictions["score"].to_numpy(dtype=float)
                parts[strategy].append(pd.DataFrame({"time": times[mask].to_numpy(), "label": labels,
                                                     "score": scores}))
                if labels.max() > 0:  # the backtest's own figure, recomputed
                    check = max(check, abs(average_precision_score(labels, scores)
                                           - c.figures[strategy]["pr_auc"]))
            for ref in promoted:
                score(ref, i, rows)
        out: dict[str, Any] = {"check": check, "alone": {}}
        replay_cut = times.quantile(1 - tail)
        all_cut = all_times.sort_values().iloc[int(math.floor(len(all_times) * (1 - tail)))]
        for strategy, frames in parts.items():
            joined = pd.concat(frames, ignore_index=True)
            joined["time"] = pd.to_datetime(joined["time"], utc=True)
            for label, cut in (("all", all_cut), ("replayed", replay_cut)):
                part = joined[joined["time"] >= cut]
                known = ~np.isnan(part["label"].to_numpy())
                out[(strategy, label)] = (average_precision_score(part["label"][known], part["score"][known]),
                                          int(known.sum()), int(part["label"][known].sum()))
        out["cuts"] = {"all": all_cut, "replayed": replay_cut}

        def whole(ref: str) -> tuple[Any, Any]:
            pieces = [scored[(ref, i)] for i in range(len(result.chunks))]
            judged = pieces[0][0].derive(pd.concat([p[0].frame for p in pieces], ignore_index=True))
            return judged, pd.concat([p[1] for p in pieces], ignore_index=True)

        for ref in promoted:
            (_, stale_preds), (rows, preds) = whole(stale_ref), whole(ref)
            when = pd.to_datetime(rows.frame[rows.time], utc=True)
            for label, cut in (("all", all_cut), ("replayed", replay_cut)):
                inside = (when >= cut).to_numpy()
                window = rows.derive(rows.frame[inside].reset_index(drop=True))
                verdict = champion_gate.gate(
                    champion=Contender(role="champion", version=loaded[stale_ref][0],
                                       predictions=stale_preds[inside].reset_index(drop=True)),
                    challenger=Contender(role="challenger", version=loaded[ref][0],
                                         predictions=preds[inside].reset_index(drop=True)),
                    window=window, options=champion_gate.Options(min_margin=0.0), run=None)
                out["alone"][(ref, label)] = verdict
    return out


def show_tail(tail_figures: dict[str, Any], tail: float, models: str) -> None:
    print(f"  re-scored chunks equal the backtest's per-chunk PR AUC to {tail_figures['check']:.1e}")
    for label, what in (("all", "of all rows"), ("replayed", "of the replayed rows")):
        loop, rows, pos = tail_figures[("loop", label)]
        stale = tail_figures[("stale", label)][0]
        always = tail_figures[("always", label)][0]
        print(f"  last {tail:.0%} {what} (from {tail_figures['cuts'][label]:%Y-%m-%d %H:%M}, {rows:,} rows, "
              f"{pos} positive): PR AUC loop {loop:.3f} ({models}) vs stale {stale:.3f} "
              f"(x{loop / stale:.2f}, {'HIGHER' if loop > stale else 'NOT higher'}); always {always:.3f}")
    for (ref, label), v in tail_figures["alone"].items():
        what = "of all rows" if label == "all" else "of the replayed rows"
        low, high = v.ci if v.ci is not None else (math.nan, math.nan)
        beyond = "HIGHER beyond noise" if low > 0 else ("higher, within noise" if v.margin > 0 else "NOT higher")
        print(f"  promoted {ref} alone on the last {tail:.0%} {what}: PR AUC {v.challenger:.4f} vs stale "
              f"{v.champion:.4f}, margin {v.margin:+.4f}, 90% CI [{low:+.4f}, {high:+.4f}] over time blocks "
              f"(champion-challenger's bootstrap): {beyond}")


def smd_part(args: argparse.Namespace, tmp: Path) -> None:
    frame = smd_frame(args.data_dir)
    source = tmp / "smd.parquet"
    frame.to_parquet(source, index=False)
    print(f"\n== SMD machine-1-6: {len(frame):,} rows, train before row 11,844 (2024-01-09 05:24), "
          f"replay {len(frame) - 11_844:,} rows in daily chunks ==")
    variants = [("defaults (+ drift-monitor, gate champion-challenger)", ""), RECALIBRATE, SMD_CHOSEN]
    if args.smd_alt:
        variants += SMD_ALTERNATIVES
    for i, (label, extra) in enumerate(variants):
        workdir = tmp / f"smd-{i}"
        cfg = project_config(workdir, SMD_DATA.format(source=source) + ADDITIONS + extra)
        result, took = run_backtest(cfg, workdir / "keep")
        print(f"\n-- SMD, {label}: backtest {took['wall']:.0f} s wall, {took['cpu']:.0f} s CPU --")
        show_chunks(result)
        v = verdict(result)
        first = v["seen"][0].end if v["seen"] else None
        print(f"  shift seen (drift or quality named in a cycle's reasons): "
              f"{'chunk ending ' + format(first, '%Y-%m-%d %H:%M') if first else 'NO'}; "
              f"retrained after {len(v['retrained'])} chunk(s) "
              f"{[format(c.end, '%m-%d') for c in v['retrained']]}; promoted {len(v['promoted'])} "
              f"{[format(c.end, '%m-%d') for c in v['promoted']]}")
        models = ", ".join(sorted({c.models["loop"] for c in result.chunks}))
        show_tail(rescore_tail(cfg, workdir / "keep", result, args.tail), args.tail, models)


def asd_part(args: argparse.Namespace, tmp: Path) -> None:
    from opsloop.plugins.threshold_policy import Options, parse_duration

    defaults = Options()
    cooldown = parse_duration(defaults.cooldown)
    period = parse_duration(defaults.retrain_period)
    variants = [("defaults (+ drift-monitor, gate champion-challenger)", ""), RECALIBRATE]
    guarded = 3  # the first three variants keep the guards at their defaults: checked
    if args.asd_forced:
        variants.append(("NOT DEFAULT: min_f1 0.99, min_positives 1 (a retrain wish every chunk; guards at their "
                         "defaults)", ASD_FORCED))
        variants.append(("NOT DEFAULT: a retrain wish every chunk, no cool-down or rate limit: the gate alone "
                         "decides", ASD_UNGUARDED))
        variants.append(("NOT DEFAULT: the same, [loop] holdout = 1d (the default until the figures below)",
                         ASD_UNGUARDED + '\n[loop]\nholdout = "1d"\n'))
    for i, (label, extra) in enumerate(variants):
        workdir = tmp / f"asd-{i}"
        cfg = project_config(workdir, ADDITIONS + extra)
        result, took = run_backtest(cfg, workdir / "keep")
        print(f"\n== ASD week 2, 12 servers, {label}: backtest {took['wall']:.0f} s wall, {took['cpu']:.0f} s CPU ==")
        show_chunks(result)
        retrains = [c.end for c in result.chunks if c.cycle.decision == "retrain"]
        gaps = [b - a for a, b in zip(retrains, retrains[1:], strict=False)]
        worst = max((sum(1 for t in retrains if 0 <= (t - s).total_seconds() < period.total_seconds())
                     for s in retrains), default=0)
        ok = all(g >= cooldown for g in gaps) and worst <= (defaults.max_retrains or math.inf)
        if i >= guarded:
            print(f"  retrain decisions at {[format(t, '%m-%d %H:%M') for t in retrains] or 'none'}; promoted "
                  f"{[format(c.end, '%m-%d') for c in result.chunks if c.cycle.promoted]} (guards off: not checked)")
            continue
        print(f"  retrain decisions at {[format(t, '%m-%d %H:%M') for t in retrains] or 'none'}; "
              f"closest two {min(gaps) if gaps else '-'} apart (cool-down {defaults.cooldown}); at most {worst} in "
              f"any {defaults.retrain_period} (max_retrains {defaults.max_retrains}): "
              f"{'RESPECTED' if ok else 'VIOLATED'}")
        held = [c for c in result.chunks if any("cool-down" in r or "max_retrains" in r for r in c.cycle.reasons)]
        if held:
            print(f"  held back by a guard: {[format(c.end, '%m-%d') for c in held]}")


# -- overhead -----------------------------------------------------------------------------------------------

def opsloop(*args: str, cwd: Path) -> None:
    exe = Path(sys.executable).with_name("opsloop")
    subprocess.run([str(exe), *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def overhead_setup(tmp: Path) -> Path:
    from opsloop import config as config_mod
    from opsloop import data as data_mod

    path = tmp / "overhead-project"
    cfg = project_config(path, ADDITIONS + OVERHEAD_POLICY)
    opsloop("run", "--quiet", cwd=path)
    frame = data_mod.load(cfg).frame.query(config_mod.read(workdir=path).data.monitor)
    labels = frame[["entity", "timestamp", "label"]].rename(columns={"entity": "series", "timestamp": "time"})
    labels.to_csv(path / "labels.csv", index=False)
    opsloop("feedback", "--file", str(path / "labels.csv"), cwd=path)
    return path


def timed_runner_class() -> type:
    from opsloop.runner import Runner

    class TimedRunner(Runner):
        """The Runner, recording the CPU time of each stage and the time of loads and the twin check."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.cpu: dict[str, float] = {}
            self.parts: dict[str, list[float]] = {}

        def add(self, name: str, took: dict[str, float]) -> None:
            wall, cpu = self.parts.get(name, [0.0, 0.0])
            self.parts[name] = [wall + took["wall"], cpu + took["cpu"]]

        def _stage(self, stage: str, plugins: list[str], work: Callable[[], Any], summary: Callable[[Any], str]) -> Any:
            start = time.process_time()
            try:
                return super()._stage(stage, plugins, work, summary)
            finally:
                self.cpu[stage] = time.process_time() - start

        def load(self, version: Any) -> Any:
            with clock() as took:
                model = super().load(version)
            self.add("load versions", took)
            return model

        def twin(self, raw: Any) -> Any:
            with clock() as took:
                found = super().twin(raw)
            self.add("twin check (store versions, lineage key)", took)
            return found

        @property
        def store(self) -> Any:
            store = Runner.store.fget(self)
            if not getattr(store, "_timed", False):
                for name, part in (("lock", "lock"), ("unlock", "journal + unlock"),
                                   ("record_cycle", "journal + unlock")):
                    setattr(store, name, self._timed(getattr(store, name), part))
                store._timed = True
            return store

        def _timed(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
            def wrapper(*a: Any, **k: Any) -> Any:
                with clock() as took:
                    out = fn(*a, **k)
                self.add(part, took)
                return out
            return wrapper

    return TimedRunner


@contextmanager
def timed_judge(runner: Any) -> Iterator[None]:
    """Time `opsloop.runner.judge` (the gate's scoring of both versions) and `opsloop.recalibrate.choose_again`
    (production's threshold chosen again after a rejection, on the gate's scores: loop work, not a stage) while
    a cycle runs."""
    import opsloop.recalibrate as recalibrate_mod
    import opsloop.runner as runner_mod

    original, choose = runner_mod.judge, recalibrate_mod.choose_again

    def judge(model: Any, current: Any) -> Any:
        with clock() as took:
            out = original(model, current)
        runner.add("gate scoring (judge x2)", took)
        return out

    def choose_again(*a: Any, **k: Any) -> Any:
        with clock() as took:
            out = choose(*a, **k)
        runner.add("recalibrate (threshold chosen again)", took)
        return out

    runner_mod.judge, recalibrate_mod.choose_again = judge, choose_again
    try:
        yield
    finally:
        runner_mod.judge, recalibrate_mod.choose_again = original, choose


def session_for(path: Path) -> Any:
    from opsloop import config as config_mod
    from opsloop.session import Session

    return Session.open(config_mod.read(workdir=path))


def log_of(path: Path) -> Path:
    from opsloop.serving.settings import Settings

    return Settings().resolve(path.absolute()).log_path


def cycle_leg(path: Path, now: datetime) -> dict[str, Any]:
    from opsloop.history import LogInputs
    from opsloop.loop import Cycle

    session = session_for(path)
    runner = timed_runner_class()(session)
    inputs = LogInputs(session=session, log=log_of(path))

    class TimedInputs:
        def observe(self, *a: Any) -> Any:
            with clock() as took:
                out = inputs.observe(*a)
            runner.add("observe (prediction log + source)", took)
            return out

    with timed_judge(runner), clock() as took:
        result = Cycle(runner, TimedInputs(), now=now).run()
    if result.status != "promoted" and result.status != "rejected":
        raise SystemExit(f"the overhead cycle did not retrain and gate: {result.status} {result.error} "
                         f"{result.reasons}")
    stages = {s.stage: (s.seconds, runner.cpu.get(s.stage, 0.0)) for s in runner.result.stages}
    return {"total": took, "stages": stages, "parts": dict(runner.parts), "status": result.status,
            "steps": result.steps}


def hand_leg(path: Path, now: datetime) -> dict[str, Any]:
    """The cycle's stages with the Runner's methods, on data read before the clock starts."""
    import attrs

    from opsloop.history import LogInputs
    from opsloop.loop import split
    from opsloop.monitoring import reference_for
    from opsloop.runner import judge

    session = session_for(path)
    runner = timed_runner_class()(session)
    runner.run = attrs.evolve(runner.run, now=now)
    name = runner.run.model_name
    production = runner.store.resolve(f"{name}@production")
    model0 = runner.load(production)
    observed = LogInputs(session=session, log=log_of(path)).observe(runner, production, model0, now)
    train, holdout, _ = split(observed.history, session.config.loop)
    reference, _ = reference_for(production, observed.current)
    runner.parts.clear()
    with clock() as took:
        model = runner.load(production)
        reports = runner.monitor(production, None, observed.current, reference, predictions=observed.predictions)
        runner.decide(production, reports)
        features, steps, _ = runner.preprocess(train, prefix="retrain.")
        trained = runner.train(features, prefix="retrain.")
        validation = runner.validate(features, prefix="retrain.")
        candidate = runner.register(trained, train, steps, validation, prefix="retrain.", parent=production.ref,
                                    alias="candidate")
        challenger = runner.load(candidate)
        window, challenger_preds = judge(challenger, holdout)
        _, champion_preds = judge(model, holdout)
        from opsloop.types import Contender

        for gate in session.config.selected("gate"):
            session.plugins.call(gate, "gate", champion=Contender(role="champion", version=production,
                                                                  predictions=champion_preds),
                                 challenger=Contender(role="challenger", version=candidate,
                                                      predictions=challenger_preds),
                                 window=window, options=session.options_for("gate", gate), run=runner.run)
    runner.close()
    return {"total": took}


def overhead_part(args: argparse.Namespace, tmp: Path) -> None:
    print("\n== overhead: one loop cycle that retrains and gates (ASD, core/default.toml + drift-monitor + gate, "
          'min_f1 0.99, min_positives 1, cooldown "0") ==')
    with clock() as took:
        base = overhead_setup(tmp)
    print(f"  setup (opsloop run, opsloop feedback): {took['wall']:.0f} s")
    now = datetime.now(UTC)
    cycles, hands = [], []
    for r in range(args.repeats):
        legs = [("cycle", cycle_leg), ("hand", hand_leg)]
        if r % 2:
            legs.reverse()
        for leg, fn in legs:
            copy = tmp / f"overhead-{r}-{leg}"
            shutil.copytree(base, copy)
            out = fn(copy, now)
            (cycles if leg == "cycle" else hands).append(out)
            shutil.rmtree(copy, ignore_errors=True)
        c, h = cycles[-1], hands[-1]
        print(f"  repeat {r + 1}: cycle {c['total']['wall']:.2f} s wall / {c['total']['cpu']:.2f} s CPU "
              f"({c['status']}); by hand {h['total']['wall']:.2f} / {h['total']['cpu']:.2f}")

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def stages_of(c: dict[str, Any], i: int) -> float:
        """The cycle's own stages plus the gate's scoring of both versions (outside the gate stage's clock)."""
        return sum(s[i] for s in c["stages"].values()) + c["parts"].get("gate scoring (judge x2)", [0.0, 0.0])[i]

    pairs = list(zip(cycles, hands, strict=True))
    rows = [("whole cycle", [c["total"]["wall"] for c in cycles], [c["total"]["cpu"] for c in cycles]),
            ("its stages + the gate's scoring", [stages_of(c, 0) for c in cycles], [stages_of(c, 1) for c in cycles]),
            ("the same stages by hand", [h["total"]["wall"] for h in hands], [h["total"]["cpu"] for h in hands])]
    print(f"\n  medians of {args.repeats} repeats                 wall s    CPU s")
    for label, walls, cpus in rows:
        print(f"  {label:<40} {med(walls):7.2f} {med(cpus):8.2f}")
    vs_stages = ([c["total"]["wall"] / stages_of(c, 0) for c in cycles],
                 [c["total"]["cpu"] / stages_of(c, 1) for c in cycles])
    vs_hand = ([c["total"]["wall"] / h["total"]["wall"] for c, h in pairs],
               [c["total"]["cpu"] / h["total"]["cpu"] for c, h in pairs])
    for label, (walls, cpus) in (("cycle / its own stages", vs_stages), ("cycle / the same stages by hand", vs_hand)):
        print(f"  {label:<32} median x{med(walls):.3f} wall, x{med(cpus):.3f} CPU   (per repeat: wall "
              f"{', '.join(f'{v:.3f}' for v in walls)}; CPU {', '.join(f'{v:.3f}' for v in cpus)})")
    print("\n  where the cycle's time goes (medians, wall s / CPU s):")
    for stage in cycles[0]["stages"]:
        print(f"    stage {stage:<34} {med([c['stages'][stage][0] for c in cycles]):7.2f} "
              f"{med([c['stages'][stage][1] for c in cycles]):7.2f}")
    parts = sorted({p for c in cycles for p in c["parts"]})
    for part in parts:
        print(f"    {part:<40} {med([c['parts'].get(part, [0, 0])[0] for c in cycles]):7.2f} "
              f"{med([c['parts'].get(part, [0, 0])[1] for c in cycles]):7.2f}")
    rest_w = med([c["total"]["wall"] - sum(s[0] for s in c["stages"].values()) - sum(p[0] for p in c["parts"].values())
                  for c in cycles])
    rest_c = med([c["total"]["cpu"] - sum(s[1] for s in c["stages"].values()) - sum(p[1] for p in c["parts"].values())
                  for c in cycles])
    print(f"    {'the rest (resolve, split, alias move...)':<40} {rest_w:7.2f} {rest_c:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="smd,asd,overhead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--smd-alt", action="store_true", help="also replay SMD with SMD_ALTERNATIVES (not defaults)")
    parser.add_argument("--asd-forced", action="store_true", help="also replay ASD with a retrain wish every chunk")
    parser.add_argument("--tail", type=float, default=0.3, help="the share of rows, by time, for the tail PR AUC")
    args = parser.parse_args()
    if not (args.data_dir / "smd").is_dir() and Path("/work/shared/data/smd").is_dir():
        args.data_dir = Path("/work/shared/data")
    parts = args.part.split(",")
    with tempfile.TemporaryDirectory(prefix="opsloop-bench-loop-") as tmp:
        for part, fn in (("smd", smd_part), ("asd", asd_part), ("overhead", overhead_part)):
            if part in parts:
                fn(args, Path(tmp))


if __name__ == "__main__":
    main()
