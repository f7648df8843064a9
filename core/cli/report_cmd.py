"""`opsloop report`: one self-contained HTML page of a model's registry, validation, monitoring and loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsloop.cli._options import ConfigOption, JsonOption, SetOption


def report(
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="The HTML file to write.")]
        = Path("report.html"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name (default: [project] name).")] = None,
    window: Annotated[str | None, typer.Option(
        "--window", "-w", metavar="DURATION",
        help="Length of the monitors' windows (1h, 6h, 1d, 7d; default: the shortest of 1h, 6h, 1d, 7d, 28d that "
             "cuts the logged period into at most 40).")] = None,
    log_path: Annotated[Path | None, typer.Option(
        "--log-path", dir_okay=False, help="Prediction log (default: .opsloop/serving/predictions.db).")] = None,
    json_: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write one self-contained HTML report (plots and tables, no network needed to open it): validation per fold,
    metrics across versions, scores against incidents per series, drift per feature and per series, the monitors'
    figures, alias history and the loop journal. Reads only: the registry and the log are left as they are.
    """
    from opsloop import config as config_mod
    from opsloop import report as report_mod
    from opsloop.serving.settings import Settings

    report_mod.check_output(output)  # before reading anything: a wrong -o fails at once
    report_mod.plotly_js()
    if window is not None:
        from opsloop.monitoring import parse_duration

        parse_duration(window)
    cfg = config_mod.read(config, overrides=set_ or ())
    log = Settings(log_path=log_path).resolve(Path(cfg.workdir).absolute()).log_path
    summary = report_mod.write(cfg, output, model=model, log=log, window=window)
    if json_:
        from opsloop.cli._render import print_json

        print_json(summary)
        return
    from opsloop.cli._render import console

    empty = [k for k, state in summary["sections"].items() if state != "shown"]
    console.print(f"wrote {summary['output']} ({summary['bytes'] / 1e6:.1f} MB): {summary['versions']} version(s), "
                  f"{summary['figures']} plot(s)" + (f"; nothing to show for {', '.join(empty)}" if empty else ""),
                  markup=False, highlight=False)
