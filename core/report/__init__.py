"""`opsloop report`: one self-contained HTML page of a model's registry, validation, monitoring and loop.

`write` reads (`opsloop.report.collect`), draws (`opsloop.report.figures`,
Plotly) and writes the page (`opsloop.report.page`) atomically: a temporary
file beside the target, then a rename. Nothing is written anywhere else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import OpsloopError

if TYPE_CHECKING:
    from opsloop.config import Config

MISSING_PLOTLY = "opsloop report needs plotly: pip install 'opsloop[report]'"


def plotly_js() -> str:
    """plotly.js, to be inlined once; OpsloopError in one line when plotly is not installed."""
    try:
        import plotly.offline
    except ImportError:
        raise OpsloopError(MISSING_PLOTLY) from None
    return plotly.offline.get_plotlyjs()


def check_output(path: Path) -> Path:
    """Where the page goes, checked before any work: its directory exists and the path is not a directory."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise OpsloopError(f"cannot write the report to {path}: it is a directory (give a file, e.g. -o report.html)")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OpsloopError(f"cannot write the report to {path}: {parent} {what}")
    return path


def write(cfg: Config, output: Path, *, model: str | None, log: Path, window: str | None) -> dict[str, Any]:
    """Read, draw and write the report; a summary of what it shows (`output`, `bytes` and each section's state)."""
    from opsloop.report import collect, page

    output = check_output(output)
    js = plotly_js()
    got = collect.gather(cfg, model=model, log=log, window=window)
    text, summary = page.render(got, js)
    data = text.encode("utf-8")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
        tmp = None
    except OSError as exc:
        raise OpsloopError(f"cannot write the report to {output}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    rows = sum(s.rows for s in got.scores)
    return {"output": str(output), "bytes": len(data), **summary, "logged_rows": rows,
            "thinned": any(s.thinned for s in got.scores), "alias_changes": len(got.history),
            "cycles": None if got.cycles is None else len(got.cycles), "window": got.window}
