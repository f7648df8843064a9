"""A real Prometheus for opsloop-prometheus's tests, holding real ASD telemetry and scraping a real exporter.

The session's server is Debian's `prometheus` (tests/services/prometheus.sh installs it; the paths come from
OPSLOOP_TEST_PROMETHEUS / OPSLOOP_TEST_PROMTOOL / OPSLOOP_TEST_NODE_EXPORTER, else from PATH), started on a
free 127.0.0.1 port with a temporary TSDB into which `promtool tsdb create-blocks-from openmetrics` first
backfills a slice of the embedded ASD data (three servers, four metrics, two weeks of 5-minute steps, a few
rows removed to make gaps) and a counter that resets. It scrapes `prometheus-node-exporter` every second, on a
port chosen here; the exporter itself is started and stopped by the tests that need it.

opsloop's kit (`opsloop.testing`) is imported by the test modules that use it rather than named in
`pytest_plugins` here (see contrib/opsloop-pyod/tests/conftest.py for why).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

#: The ASD slice put into Prometheus: servers with incidents in both weeks, a few of the 19 metrics.
SERVERS = ["omi-1", "omi-9", "omi-12"]
METRICS = ["m01", "m05", "m10", "m14"]
#: Rows left out of the backfill, as (server, first timestamp, steps): gaps the plugin must show as NaN.
GAPS = [("omi-9", "2024-01-02 10:00", 6), ("omi-1", "2024-01-09 23:55", 1)]
#: The backfilled counter: +3 a step from 2024-01-01 00:00, reset to 0 at RESET_AT (then +3 again), one server.
COUNTER, RESET_AT = "asd_requests_total", "2024-01-01 06:00"
#: Generous: CI is a loaded 2-core machine.
DEADLINE = 90.0


def binary(variable: str, name: str) -> str:
    path = os.environ.get(variable) or shutil.which(name)
    if not path or not Path(path).is_file():
        pytest.skip(f"{name} is not installed (tests/services/prometheus.sh installs Debian's package as root; "
                    f"or set {variable})")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for(check, what: str, deadline: float = DEADLINE, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    """Poll `check()` until it returns something truthy; fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            pytest.fail(f"{what}: the process exited with {proc.returncode}\n{tail}")
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {deadline:g} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def asd():
    from opsloop import datasets

    return datasets.load("asd")


@pytest.fixture(scope="session")
def asd_slice(asd):
    """The ASD rows of SERVERS with METRICS and label, as in the CSV, before the GAPS are removed."""
    frame = asd[asd["entity"].isin(SERVERS)][["entity", "timestamp", *METRICS, "label"]]
    return frame.sort_values(["entity", "timestamp"]).reset_index(drop=True)


@pytest.fixture(scope="session")
def incidents(asd_slice) -> str:
    """ASD's labelled windows of the backfilled servers as an incidents file: one row per run of consecutive
    label-1 rows, from its first step to its last."""
    import numpy as np
    import pandas as pd

    rows = ["series,start,end"]
    for entity, rows_of in asd_slice.groupby("entity"):
        label = rows_of["label"].to_numpy()
        stamps = rows_of["timestamp"].to_numpy()
        starts = np.flatnonzero(np.diff(np.concatenate(([0], label))) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate((label, [0]))) == -1)
        for s, e in zip(starts, ends):
            rows.append(f"{entity},{pd.Timestamp(stamps[s]).isoformat()}Z,{pd.Timestamp(stamps[e]).isoformat()}Z")
    return "\n".join(rows) + "\n"


def gap_mask(frame):
    """True for the rows GAPS removes."""
    import pandas as pd

    mask = pd.Series(False, index=frame.index)
    for server, first, steps in GAPS:
        start = pd.Timestamp(first)
        end = start + pd.Timedelta(minutes=5 * (steps - 1))
        mask |= (frame["entity"] == server) & frame["timestamp"].between(start, end)
    return mask


def counter_values(times):
    """The backfilled counter at `times`: +3 a step, back to 0 at RESET_AT."""
    import numpy as np
    import pandas as pd

    times = pd.DatetimeIndex(times)
    reset, five = pd.Timestamp(RESET_AT), pd.Timedelta(minutes=5)
    steps = np.asarray((times - pd.Timestamp("2024-01-01")) // five)
    since = np.asarray((times - reset) // five)
    return np.where(times < reset, 3 * steps, 3 * since)


def openmetrics(frame) -> str:
    """The slice as OpenMetrics text: a gauge `asd_<metric>` per metric, labels instance and job."""
    import numpy as np
    import pandas as pd

    lines = []
    seconds = (frame["timestamp"] - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    for metric in METRICS:
        lines += [f"# HELP asd_{metric} ASD metric {metric}.", f"# TYPE asd_{metric} gauge"]
        for entity, value, stamp in zip(frame["entity"], frame[metric], seconds):
            # The float32's exact value as a double (0.5600000023841858 for 0.56): what the frame holds.
            lines.append(f'asd_{metric}{{instance="{entity}",job="asd"}} {np.float32(value)} {stamp}')
    server = frame[frame["entity"] == SERVERS[0]]
    lines += [f"# HELP {COUNTER.removesuffix('_total')} A counter that resets.",
              f"# TYPE {COUNTER.removesuffix('_total')} counter"]
    for value, stamp in zip(counter_values(server["timestamp"].to_numpy()), seconds[server.index]):
        lines.append(f'{COUNTER}{{instance="{SERVERS[0]}",job="asd"}} {value} {stamp}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory, asd_slice):
    """A running Prometheus with the ASD slice backfilled: a dict with url, port, node_port, tsdb."""
    server = binary("OPSLOOP_TEST_PROMETHEUS", "prometheus")
    promtool = binary("OPSLOOP_TEST_PROMTOOL", "promtool")
    root = tmp_path_factory.mktemp("prometheus")
    tsdb = root / "tsdb"
    tsdb.mkdir()
    source = root / "asd.om"
    source.write_text(openmetrics(asd_slice[~gap_mask(asd_slice)]), encoding="utf-8")
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(source), str(tsdb)],
                   check=True, capture_output=True, timeout=300)

    port, node_port = free_port(), free_port()
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node_port}']\n",
        encoding="utf-8")
    log = root / "prometheus.log"
    with log.open("wb") as out:
        # Retention of years: the backfilled ASD weeks are from 2024. A lookback of 1m (the default is 5m)
        # so that a backfilled 5-minute step with no sample is a gap rather than the sample before it.
        proc = subprocess.Popen(
            [server, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=20y",
             "--query.lookback-delta=1m", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=5).status == 200,
                 f"prometheus on {url} ready", proc=proc, log=log)
        yield {"url": url, "port": port, "node_port": node_port, "tsdb": tsdb, "log": log}
    finally:
        stop(proc)


#: bcrypt (cost 4) of the password "opsloop-test", for Prometheus's --web.config.file basic_auth_users.
PASSWORD, PASSWORD_HASH = "opsloop-test", "$2b$04$H49mRoTqUZ7iOgY9ppRr9.8d/ExaO3J7HLMfRdQANgEb.fPipP4hS"


@pytest.fixture(scope="session")
def guarded_prometheus(tmp_path_factory, prometheus):
    """A second Prometheus behind HTTPS (a self-signed certificate for 127.0.0.1, made here with openssl) and
    HTTP basic authentication (user `opsloop`, password PASSWORD), scraping the first one's own /metrics
    every second: a dict with url, port and cert (the certificate, its own CA)."""
    server = binary("OPSLOOP_TEST_PROMETHEUS", "prometheus")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the HTTPS server")
    root = tmp_path_factory.mktemp("guarded")
    port = free_port()
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    (root / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"basic_auth_users:\n  opsloop: {PASSWORD_HASH}\n", encoding="utf-8")
    (root / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: prometheus\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{prometheus['port']}']\n", encoding="utf-8")
    log = root / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [server, f"--config.file={root / 'prometheus.yml'}", f"--web.config.file={root / 'web.yml'}",
             f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    auth = urllib.request.Request(f"{url}/api/v1/query?query=count_over_time(up[1m])",
                                  headers=_basic("opsloop", PASSWORD))
    context = ssl.create_default_context(cafile=str(cert))

    def scraped() -> bool:  # ready, and three scrapes stored
        answer = urllib.request.urlopen(auth, timeout=5, context=context).read()
        result = json.loads(answer)["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= 3

    try:
        wait_for(scraped, f"guarded prometheus on {url} scraping", proc=proc, log=log)
        yield {"url": url, "port": port, "cert": cert}
    finally:
        stop(proc)


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def node_exporter(prometheus, tmp_path):
    """Start/stop `prometheus-node-exporter` on the port Prometheus scrapes; stopped at the end."""
    exporter = binary("OPSLOOP_TEST_NODE_EXPORTER", "prometheus-node-exporter")
    procs: list[subprocess.Popen] = []

    class Exporter:
        def start(self) -> None:
            log = tmp_path / f"node-exporter-{len(procs)}.log"
            with log.open("wb") as out:
                # Only the loadavg collector: a real exporter with its own counters, cheap to scrape.
                proc = subprocess.Popen(
                    [exporter, f"--web.listen-address=127.0.0.1:{prometheus['node_port']}",
                     "--collector.disable-defaults", "--collector.loadavg"],
                    stdout=out, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_for(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{prometheus['node_port']}/metrics", timeout=5).status == 200,
                "node exporter up", proc=proc, log=log)

        def stop(self) -> None:
            stop(procs[-1])

    try:
        yield Exporter()
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="session")
def stand():
    """This module's constants and helpers, for the test modules (pytest's importlib mode cannot import a
    conftest by name)."""
    import types

    return types.SimpleNamespace(SERVERS=SERVERS, METRICS=METRICS, GAPS=GAPS, COUNTER=COUNTER, RESET_AT=RESET_AT,
                                 counter_values=counter_values, gap_mask=gap_mask, get_json=get_json,
                                 wait_for=wait_for, DEADLINE=DEADLINE, PASSWORD=PASSWORD, basic=_basic)
