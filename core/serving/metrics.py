"""`/metrics` in the Prometheus text format (version 0.0.4).

Counters and a latency histogram per route are plain integers updated on the
event loop (no locks, no client library), schema findings on request rows
among them (`found`); the model gauges come from the
watcher; the live quality gauges from the prediction log joined with the
feedback; the monitor gauges from the last monitor report on disk, which
`opsloop run` leaves there (`write_monitor_report`) and `/metrics` reads
(`Metrics.monitor_reports`): both ends of that file are in this module.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import numbers
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.serving.history import SeriesCounts

if TYPE_CHECKING:
    from opsloop.serving.model import Served
    from opsloop.types import MonitorReport

#: Latency buckets, seconds: single rows land in the first ones, 1,000-row requests in the middle.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Most characters of the fallback reason on `opsloop_model_info` (the model metadata has it whole).
REASON_CHARS = 300
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
           411: "length_required", 413: "too_large", 415: "unsupported_encoding", 422: "invalid_input", 500: "internal", 503: "unavailable"}


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: Any) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _shorten(text: str, limit: int = REASON_CHARS) -> str:
    """One line of at most `limit` characters (a plugin's error can be long; the metadata keeps it whole)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative on output, per bucket while counting."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Metrics:
    """Everything `/metrics` reports about this server."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(Histogram)
        self.rows: dict[tuple[str, int], int] = defaultdict(int)
        self.swaps = 0
        self.load_errors = 0
        self.poll_errors = 0
        self.model: dict[str, Any] = {}
        #: Requests whose rows showed a finding, by (model, version, check, column): bounded, as the columns come
        #: from the versions' input schemas and the checks from a fixed list.
        self.findings: dict[tuple[str, int, str, str], int] = defaultdict(int)
        #: The kept series' counters, across versions (`opsloop.serving.history`).
        self.series = SeriesCounts()
        self._report: tuple[tuple[int, int, int], float, list[dict[str, Any]]] | None = None

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[route, status] += 1
        self.latency[route].observe(seconds)

    def found(self, served: Served, findings: list[tuple[str, str]]) -> None:
        """Count one request for each (check, column) its rows showed (a pair twice in a request counts once)."""
        for check, column in set(findings):
            self.findings[served.name, served.version.version, check, column] += 1

    def model_loaded(self, served: Served, previous: Served | None = None) -> None:
        if previous is not None:
            self.swaps += 1
        self.model = {"model": served.name, "version": served.version.version, "digest": served.version.digest,
                      "scorer": served.scorer.kind, "fallback_reason": _shorten(served.scorer.reason),
                      "loaded_at": served.loaded_at}

    def render(self, *, alias: str, log: Any = None, quality: dict[int, dict[str, float]] | None = None,
               report: Path | None = None, history: Any = None) -> bytes:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("opsloop_requests_total", "counter", "HTTP requests answered, by route and status code.")
        for (route, code), n in sorted(self.requests.items()):
            out.append(f"opsloop_requests_total{_labels(route=route, code=code)} {n}")
        family("opsloop_request_errors_total", "counter", "Requests answered with an error (4xx, 5xx), by reason.")
        for (route, code), n in sorted(self.requests.items()):
            if code >= 400:
                out.append(f"opsloop_request_errors_total{_labels(route=route, code=code, reason=REASONS.get(code, 'error'))} {n}")
        family("opsloop_request_duration_seconds", "histogram", "Time from request to response, by route.")
        for route, h in sorted(self.latency.items()):
            total = 0
            for bound, count in zip((*BUCKETS, math.inf), h.counts, strict=True):
                total += count
                le = "+Inf" if bound == math.inf else repr(bound)
                out.append(f"opsloop_request_duration_seconds_bucket{_labels(route=route, le=le)} {total}")
            out.append(f"opsloop_request_duration_seconds_sum{_labels(route=route)} {_number(h.sum)}")
            out.append(f"opsloop_request_duration_seconds_count{_labels(route=route)} {total}")
        family("opsloop_predictions_total", "counter", "Rows scored, by model version.")
        for (model, version), n in sorted(self.rows.items()):
            out.append(f"opsloop_predictions_total{_labels(model=model, version=version)} {n}")
        family("opsloop_schema_findings_total", "counter",
               "Requests whose rows showed a schema-check finding (out_of_range, missing_rate, unseen_category), "
               "by model version and column.")
        for (model, version, check, column), n in sorted(self.findings.items()):
            labels = _labels(model=model, version=version, check=check, column=column)
            out.append(f"opsloop_schema_findings_total{labels} {n}")
        m = self.model
        family("opsloop_model_version", "gauge", "The version being served.")
        out.append(f"opsloop_model_version{_labels(model=m['model'], alias=alias)} {m['version']}")
        family("opsloop_model_info", "gauge", "The version being served, its digest, its scorer (fast or replay) and "
                                              "why it replays (empty on the fast path) (always 1).")
        labels = _labels(model=m['model'], alias=alias, version=m['version'], digest=m['digest'], scorer=m['scorer'],
                         fallback_reason=m['fallback_reason'])
        out.append(f"opsloop_model_info{labels} 1")
        family("opsloop_model_loaded_timestamp_seconds", "gauge", "When the serving version was loaded.")
        out.append(f"opsloop_model_loaded_timestamp_seconds{_labels(model=m['model'])} {m['loaded_at']:.3f}")
        for name, value, help_ in (("opsloop_model_swaps_total", self.swaps, "Hot swaps since start."),
                                   ("opsloop_model_load_errors_total", self.load_errors,
                                    "Versions the alias moved to that could not be loaded."),
                                   ("opsloop_store_poll_errors_total", self.poll_errors,
                                    "Failed looks at the alias in the store.")):
            family(name, "counter", help_)
            out.append(f"{name} {value}")
        self._series(out, family, m["model"], history)
        if log is not None:
            for name, kind, value, help_ in (
                    ("opsloop_prediction_log_rows_total", "counter", log.written, "Predictions written to the log."),
                    ("opsloop_prediction_log_feedback_total", "counter", log.feedback, "Labels written to the log."),
                    ("opsloop_prediction_log_errors_total", "counter", log.errors,
                     "Prediction requests and labels that could not be written (the rest of their batch was)."),
                    ("opsloop_prediction_log_reopened_total", "counter", log.reopened,
                     "Times the log file was found deleted or replaced while serving, and a new one opened."),
                    ("opsloop_prediction_log_dropped_total", "counter", log.dropped,
                     "Predictions answered but not logged: the log writer was log_max_pending rows behind."),
                    ("opsloop_prediction_log_read_errors_total", "counter", log.quality_errors,
                     "Reads of the live quality figures that failed (the log file is not a database...); "
                     "opsloop_live_quality is left out then."),
                    ("opsloop_prediction_log_queue", "gauge", log.pending, "Items queued, not yet written.")):
                family(name, kind, help_)
                out.append(f"{name} {value}")
        if quality:
            family("opsloop_live_quality", "gauge",
                   "Quality of logged predictions against the feedback received (latest labels), by version.")
            for version, figs in sorted(quality.items()):
                for metric, value in figs.items():
                    out.append(f"opsloop_live_quality{_labels(model=m['model'], version=version, metric=metric)} "
                               f"{_number(value)}")
        reports = self.monitor_reports(report)
        if reports:
            family("opsloop_monitor", "gauge", "Figures of the last monitor report (e.g. drift, precision, recall).")
            for r in reports:
                for metric, value in sorted((r.get("metrics") or {}).items()):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        out.append(f"opsloop_monitor{_labels(monitor=r.get('monitor', ''), model=r.get('model', ''), metric=metric)} "
                                   f"{_number(value)}")
            family("opsloop_monitor_alerts", "gauge", "Alerts in the last monitor report, by monitor.")
            for r in reports:
                out.append(f"opsloop_monitor_alerts{_labels(monitor=r.get('monitor', ''), model=r.get('model', ''))} "
                           f"{len(r.get('alerts') or [])}")
            family("opsloop_monitor_report_timestamp_seconds", "gauge", "When the monitor report was written.")
            out.append(f"opsloop_monitor_report_timestamp_seconds {self._report[1]:.3f}")  # type: ignore[index]
        family("opsloop_start_time_seconds", "gauge", "When this server started.")
        out.append(f"opsloop_start_time_seconds {self.started:.3f}")
        return ("\n".join(out) + "\n").encode()

    def _series(self, out: list[str], family: Any, model: str, history: Any) -> None:
        """The kept series (`opsloop.serving.history`): held now, the limit, and what happened to them."""
        counts = self.series
        label = _labels(model=model)
        family("opsloop_series_held", "gauge", "Series whose recent rows the server keeps for the serving version's "
                                               "windows (0: the version reads no series' past).")
        out.append(f"opsloop_series_held{label} {len(history.held) if history is not None else 0}")
        family("opsloop_series_limit", "gauge", "Most series kept (--max-series).")
        out.append(f"opsloop_series_limit{label} {history.max_series if history is not None else 0}")
        for name, value, help_ in (
                ("opsloop_series_evicted_total", counts.evicted,
                 "Series dropped for the limit, least recently seen first (read back from the prediction log "
                 "when they return)."),
                ("opsloop_series_restored_total", counts.restored,
                 "Series read back from the prediction log (after a start, a hot swap or an eviction)."),
                ("opsloop_series_new_total", counts.new,
                 "Series that started without history: none in the prediction log (new, or --no-log)."),
                ("opsloop_series_restore_errors_total", counts.restore_errors,
                 "Series whose logged rows could not be read back (they started without history)."),
                ("opsloop_series_refused_total", counts.refused,
                 "Requests refused (422) for a row out of time order, twice, or without a time or series key.")):
            family(name, "counter", help_)
            out.append(f"{name}{label} {value}")

    def monitor_reports(self, path: Path | None) -> list[dict[str, Any]]:
        """The reports in a monitor report file (re-read when it changes); [] when there is none.

        The file is `write_monitor_report`'s `{"run_id": ..., "monitor": [...]}`,
        the output of `opsloop run --json` (the same `monitor` list), a list of
        reports, or one report. A file being replaced is read whole or not at
        all (the writer renames it into place): when it cannot be read, the
        figures read last stay.
        """
        if path is None:
            return []
        try:
            st = path.stat()
        except OSError:
            self._report = None
            return []
        # A replaced file is a new inode: a report rewritten within the clock's resolution is still seen.
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._report is None or self._report[0] != key:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return self._report[2] if self._report is not None else []
            if isinstance(data, dict):
                data = data.get("monitor", [data])
            reports = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
            self._report = (key, st.st_mtime, reports)
        return self._report[2]


def write_monitor_report(path: Path, run_id: str, reports: list[MonitorReport]) -> None:
    """Leave `reports` where `Metrics.monitor_reports` reads them, atomically (a temporary file, then a rename).

    Figures are written as JSON numbers whatever their type (numpy scalars
    included), so that every one becomes a gauge; NaN stays NaN.
    """
    import attrs

    def number(value: Any) -> Any:
        if isinstance(value, numbers.Integral):
            return int(value)
        return float(value) if isinstance(value, numbers.Real) else str(value)

    text = json.dumps({"run_id": run_id, "monitor": [attrs.asdict(r) for r in reports]}, default=number, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
