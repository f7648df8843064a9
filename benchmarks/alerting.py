"""Alert threshold rules on real data: what each `[alerting]` rule gives an on-call team (issue 13).

Usage: python benchmarks/alerting.py [--part asd,smd] [--data-dir ../shared/data]

For each data set, one version is built with the shipped defaults
(core/default.toml: its preprocess, trainer, validator and `[alerting]`),
exactly as `opsloop run` builds it, on the training period:

- `asd`: the embedded ASD data with core/default.toml's periods (train on
  the first week of omi-1..6, monitor the second week of all 12 servers;
  5-minute steps);
- `smd`: SMD machine-1-6's labelled half (1-minute steps), first half
  trained, second half monitored (a strong shift lies in the second half).

Then every rule of RULES chooses a threshold from the version's out-of-fold
scores (the ones its bundle keeps, as `opsloop models promote --rule` does),
and the monitored period, scored once by the version, is judged at each
threshold: per-row precision, recall and F1, and what a pager sees
(opsloop.incidents): incidents caught of all, median detection delay, alerts
and false alerts per series-day, point-adjusted F1. The out-of-fold figures
the rule was chosen on are printed beside them (the rule's promise), so the
table shows how far each promise holds on a later period. `0.5 (old)` is the
model's own decision before thresholds existed.

Every figure comes from one run; nothing is timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: (label, rule, target): the rules compared; the shipped default is marked in the output.
RULES: list[tuple[str, str, float | None]] = [
    ("0.5 (old)", "fixed", 0.5),
    ("f1", "f1", None),
    ("precision 0.9", "precision", 0.9),
    ("precision 0.5", "precision", 0.5),
    ("recall 0.5", "recall", 0.5),
    ("budget 1/day", "budget", 1.0),
    ("budget 0.5/day", "budget", 0.5),
    ("budget 0.2/day", "budget", 0.2),
]

SMD = """
[project]
name = "smd-alerting"

[data]
source = "{source}"
target = "label"
time = "timestamp"
series = "entity"
train = "timestamp < '2024-01-15 22:00:00'"
monitor = "timestamp >= '2024-01-15 22:00:00'"
"""


def smd_source(data_dir: Path, workdir: Path) -> str:
    spec = importlib.util.spec_from_file_location("build_embedded_data", REPO / "tools" / "build_embedded_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    frame = tool.smd_frame(data_dir / "smd")
    half = frame["timestamp"].iloc[len(frame) // 2]
    path = workdir / "smd-machine-1-6.parquet"
    frame.to_parquet(path, index=False)
    return str(path), str(half)


def build(workdir: Path, toml: str | None) -> tuple[Any, Any, Any, Any]:
    """The default version on the training period, its loaded model, the monitored rows and the OOF rows."""
    from opsloop import alerting
    from opsloop import config as config_mod
    from opsloop import data as data_mod
    from opsloop.runner import Runner, judge
    from opsloop.session import Session

    workdir.mkdir(parents=True, exist_ok=True)
    if toml:
        (workdir / "opsloop.toml").write_text(toml, encoding="utf-8")
    cfg = config_mod.read(workdir=workdir)
    session = Session.open(cfg)
    runner = Runner(session)
    raw = data_mod.load(cfg)
    train, monitor = data_mod.periods(raw, cfg)
    version = runner.build(train).version
    model = runner.load(version)
    judged, predictions = judge(model, monitor)
    return cfg, version, (judged, predictions), alerting.read_oof(version.path)


def figures(frame: Any, target: str, series: str, time: str, score: Any, value: float) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    from opsloop import alerting

    rows = pd.DataFrame({"score": np.asarray(score, dtype=float), "label": frame[target].to_numpy(),
                         "series": frame[series].to_numpy(), "time": pd.to_datetime(frame[time]).to_numpy()})
    rows = rows[rows["label"].isin([0, 1])]
    return alerting.achieved(rows, value)


def num(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def report(name: str, cfg: Any, version: Any, scored: tuple[Any, Any], oof: Any) -> None:
    from opsloop import alerting
    from opsloop.errors import ConfigError

    judged, predictions = scored
    frame = judged.frame
    default = (cfg.alerting.rule, cfg.alerting.aim)
    print(f"\n{name}: {version.ref}, trained on {oof is not None and len(oof):,} out-of-fold rows; monitored "
          f"{len(frame):,} rows, {int((frame[judged.target] == 1).sum()):,} positive")
    print(f"  {'rule':<16} {'threshold':>9} | {'oof prec':>8} {'rec':>5} {'inc':>7} {'al/d':>5} | "
          f"{'mon prec':>8} {'rec':>5} {'f1':>5} {'incidents':>9} {'delay':>7} {'al/d':>5} {'false/d':>7} "
          f"{'pa_f1':>5}")
    for label, rule, target in RULES:
        section = alerting.AlertingSection(rule=rule, target=target)
        mark = " *" if (rule, section.aim) == default else "  "
        try:
            threshold = alerting.choose(oof, section)
        except ConfigError as exc:
            print(f"{mark}{label:<16} cannot be met: {exc.message.split('cannot be met: ')[-1].split('; ')[0]}")
            continue
        o = threshold["achieved"]
        m = figures(frame, judged.target, judged.series, judged.time, predictions["score"], threshold["value"])
        delay = m.get("delay_median_s", math.nan)
        print(f"{mark}{label:<16} {threshold['value']:>9.4g} | {num(o['precision']):>8} {num(o['recall'], '.2f'):>5} "
              f"{o['incidents_caught']:>3.0f}/{o['incidents']:<3.0f} {num(o['alerts_per_day'], '.2f'):>5} | "
              f"{num(m['precision']):>8} {num(m['recall'], '.2f'):>5} {num(m['f1'], '.2f'):>5} "
              f"{m['incidents_caught']:>4.0f}/{m['incidents']:<4.0f} "
              f"{num(delay / 60, '.0f') + ' min' if math.isfinite(delay) else '-':>7} "
              f"{num(m['alerts_per_day'], '.2f'):>5} {num(m['false_alerts_per_day'], '.2f'):>7} "
              f"{num(m['pa_f1'], '.2f'):>5}")
    print("  * the shipped default. oof: out-of-fold rows of the training period (where the rule chose); "
          "mon: the monitored period. inc/incidents: caught of all; delay: median from incident start to first "
          "alert; al/d, false/d: alerts and false alerts per series-day.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="asd,smd")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    parts = set(args.part.split(","))
    with tempfile.TemporaryDirectory(prefix="opsloop-alerting-") as tmp:
        root = Path(tmp)
        if "asd" in parts:
            report("ASD (embedded; default periods)", *build(root / "asd", None))
        if "smd" in parts:
            source, half = smd_source(args.data_dir, root)
            toml = SMD.format(source=source).replace("2024-01-15 22:00:00", half)
            report(f"SMD machine-1-6 (first half trained, second half from {half} monitored)",
                   *build(root / "smd", toml))
    return 0


if __name__ == "__main__":
    sys.exit(main())
