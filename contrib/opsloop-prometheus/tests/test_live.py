"""A live target scraped every second: when it disappears its series are NaN (staleness), and when it comes
back its counters have reset."""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime, timezone
from urllib.parse import urlencode

import pytest

pytest.importorskip("opsloop_prometheus",
                    reason="opsloop-prometheus is not installed (pip install -e ./contrib/opsloop-prometheus)")

from opsloop.config import DataSection  # noqa: E402

import opsloop_prometheus  # noqa: E402
from opsloop_prometheus import Options  # noqa: E402

#: promhttp counts the scrapes the node exporter answered: a real counter, back to 0 when it restarts.
SCRAPES = 'promhttp_metric_handler_requests_total{job="node",code="200"}'


def instant(prometheus, stand, query: str) -> float | None:
    answer = stand.get_json(f"{prometheus['url']}/api/v1/query?{urlencode({'query': query})}")
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def test_a_target_that_disappears_gives_nan_and_its_restart_resets_its_counter(prometheus, node_exporter, tmp_path,
                                                                               stand):
    began = time.time()
    node_exporter.start()
    stand.wait_for(lambda: (instant(prometheus, stand, SCRAPES) or 0) >= 5, "five scrapes of the exporter")
    node_exporter.stop()
    # Failed scrapes for three seconds: Prometheus wrote staleness markers for the exporter's series.
    stand.wait_for(lambda: instant(prometheus, stand, 'max_over_time(up{job="node"}[3s])') == 0
                   and instant(prometheus, stand, 'count_over_time(up{job="node"}[3s])') >= 2,
                   "three seconds of failed scrapes")
    node_exporter.start()
    stand.wait_for(lambda: instant(prometheus, stand, f"resets({SCRAPES}[1m])") == 1
                   and (instant(prometheus, stand, SCRAPES) or 0) >= 4, "four scrapes after the restart")
    ended = time.time()

    queries = [{"name": "up", "query": 'up{job="node"}'}, {"name": "scrapes", "query": SCRAPES},
               {"name": "increase", "query": SCRAPES, "increase": True},
               {"name": "rate", "query": SCRAPES, "rate": "5s"}]
    options = Options(queries=queries, start=iso(began - 2), end=iso(ended), step="1s", series_labels=["job"])
    frame = opsloop_prometheus.load_data(source=prometheus["url"], options=options, data=DataSection(),
                                         workdir=tmp_path)
    assert frame["series"].unique().tolist() == ["node"]
    # The session's server scrapes the exporter's port all along: down (up 0) before this test started it
    # too. The gap that matters is the one after its first scrapes.
    first_up = frame["scrapes"].notna().idxmax()
    down = (frame["up"] == 0) & (frame.index > first_up)
    assert down.sum() >= 2, frame.to_string()
    # Staleness: while the target is down its series are NaN, not its last value repeated (the server's
    # lookback of 1 minute would repeat it were it not for the staleness markers).
    assert frame.loc[frame["up"] == 0, "scrapes"].isna().all()
    first_down = down.idxmax()
    before = frame.loc[:first_down, "scrapes"].max()
    after = frame.loc[first_down:, "scrapes"].dropna()
    assert before >= 4 and len(after) >= 3
    assert after.iloc[0] < before  # a real reset
    # Each step's increase is what the exporter answered in that second: never negative across the reset.
    increase = frame["increase"].dropna()
    assert len(increase) >= 4 and increase.between(0, 3).all()
    assert frame.loc[down, "increase"].isna().all()
    # rate() handles the reset on the server: never negative, up to about one scrape a second (less where
    # its 5 s window holds few samples, next to the gap).
    rate = frame["rate"].dropna()
    assert len(rate) >= 4 and rate.between(0, 3).all() and rate.max() > 0.5


def test_prometheus_answers_with_its_own_metrics_page(prometheus):
    # The fixture's server is the real thing: its build information names Prometheus 2.x or later.
    with urllib.request.urlopen(f"{prometheus['url']}/api/v1/status/buildinfo", timeout=10) as response:
        assert b'"version"' in response.read()
