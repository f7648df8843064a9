"""Bad input met by the hook itself: each a one-line DataError or ConfigError that says where."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("opsloop_prometheus",
                    reason="opsloop-prometheus is not installed (pip install -e ./contrib/opsloop-prometheus)")

from opsloop.config import DataSection  # noqa: E402
from opsloop.errors import ConfigError, DataError  # noqa: E402

import opsloop_prometheus  # noqa: E402
from opsloop_prometheus import Options  # noqa: E402

RANGE = {"start": "2024-01-03T00:00:00Z", "end": "2024-01-03T01:00:00Z", "step": "5m"}


def read(source: str, tmp_path, **options):
    options = Options(**{"queries": {"m01": 'asd_m01{job="asd"}'}, **RANGE, **options})
    return opsloop_prometheus.load_data(source=source, options=options, data=DataSection(), workdir=tmp_path)


def test_a_server_that_never_answers_is_a_timeout(tmp_path):
    # A real listener that accepts connections (the kernel's backlog) and never answers a byte.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        port = sock.getsockname()[1]
        with pytest.raises(DataError) as caught:
            read(f"prometheus://127.0.0.1:{port}", tmp_path, timeout=0.5)
    assert str(caught.value) == (f'http://127.0.0.1:{port}: query m01 (asd_m01{{job="asd"}}): no answer within '
                                 "0.5 s (timeout)")


def test_an_http_error_names_the_status(prometheus, tmp_path):
    with pytest.raises(DataError, match=r"^http://127.0.0.1:\d+/not-prometheus: query m01 \(asd_m01\{job=\"asd\"\}\): "
                                        r"HTTP 404 Not Found"):
        read(f"prometheus://127.0.0.1:{prometheus['port']}/not-prometheus", tmp_path)


def test_two_series_that_make_one_series_name(prometheus, tmp_path):
    with pytest.raises(DataError, match=r"two series make the series 'asd' \(asd_m01\{instance=\"omi-1\", "
                                        r"job=\"asd\"\} and .*\): aggregate them, e\.g\. sum by \(job\)"):
        read(prometheus["url"], tmp_path, series_labels=["job"])


def test_query_names_that_take_a_reserved_column(prometheus, tmp_path):
    with pytest.raises(ConfigError, match=r"\[data.prometheus.queries\] the query name 'timestamp' is also"):
        read(prometheus["url"], tmp_path, queries={"timestamp": "asd_m01"})


def test_a_range_without_a_step(prometheus, tmp_path):
    with pytest.raises(ConfigError, match=r"\[data.prometheus.end\] the range holds no step: end"):
        read(prometheus["url"], tmp_path, start="2024-01-03T00:00:00Z", end="2024-01-02T00:00:00Z")


@pytest.mark.parametrize(("source", "says"), [
    ("prometheus://", "names no host"),
    ("ftp://127.0.0.1:9090", "is not a Prometheus address"),
    ("prometheus://127.0.0.1:9090?query=up", "takes no ?query"),
])
def test_bad_addresses(source, says, tmp_path):
    with pytest.raises(ConfigError, match=r"\[data.source\] .*" + says.replace("?", r"\?")):
        read(source, tmp_path)


def test_a_missing_incidents_file_and_token_file(prometheus, tmp_path):
    with pytest.raises(DataError, match=r"incidents file not found: .*nowhere\.csv"):
        read(prometheus["url"], tmp_path, incidents="nowhere.csv")
    with pytest.raises(ConfigError, match=r"\[data.prometheus.bearer_token_file\] cannot read the bearer token"):
        read(prometheus["url"], tmp_path, bearer_token_file="token")


def test_https_and_basic_authentication(prometheus, guarded_prometheus, tmp_path, stand):
    port, password, cert = guarded_prometheus["port"], stand.PASSWORD, guarded_prometheus["cert"]
    options = {"queries": {"up": 'up{job="prometheus"}'}, "start": "-30s", "end": "now", "step": "1s",
               "ca_file": str(cert)}
    frame = read(f"prometheus+https://opsloop:{password}@127.0.0.1:{port}", tmp_path, **options)
    # It scrapes the first server: one series, named after that target's instance label.
    assert frame["series"].unique().tolist() == [f"127.0.0.1:{prometheus['port']}"]
    assert (frame["up"].dropna() == 1).all() and frame["up"].notna().sum() >= 2
    read(f"https://127.0.0.1:{port}", tmp_path, headers=stand.basic("opsloop", password), **options)

    with pytest.raises(DataError) as caught:
        read(f"prometheus+https://opsloop:wrong@127.0.0.1:{port}", tmp_path, **options)
    # The password stays out of the message.
    assert str(caught.value).startswith(f"https://127.0.0.1:{port}: query up (up{{job=\"prometheus\"}}): HTTP 401 ")
    with pytest.raises(DataError, match=r": HTTP 401 "):
        read(f"prometheus+https://127.0.0.1:{port}", tmp_path, **options)
    # Without the CA the certificate is not trusted; over plain HTTP the server says it speaks HTTPS.
    with pytest.raises(DataError, match=r"^https://127.0.0.1:\d+: query up .*: cannot connect: the server's TLS "
                                        r"certificate is not trusted \(self.signed certificate\): name the CA"):
        read(f"prometheus+https://opsloop:{password}@127.0.0.1:{port}", tmp_path,
             **{**options, "ca_file": None})
    with pytest.raises(DataError, match=r"^http://127.0.0.1:\d+: query up .*: HTTP 400 Bad Request"):
        read(f"prometheus://opsloop:{password}@127.0.0.1:{port}", tmp_path, **options)
    with pytest.raises(ConfigError, match=r"\[data.prometheus.ca_file\] cannot read the CA file"):
        read(f"prometheus+https://127.0.0.1:{port}", tmp_path, **{**options, "ca_file": "no-such.pem"})


def test_a_bearer_token_file_is_read(prometheus, tmp_path):
    # Prometheus itself does not check bearer tokens (a proxy in front would): the request still succeeds.
    (tmp_path / "token").write_text("s3cret\n", encoding="utf-8")
    frame = read(prometheus["url"], tmp_path, bearer_token_file="token")
    assert len(frame) == 3 * 13


@pytest.mark.parametrize(("options", "key", "says"), [
    ({"queries": {}}, "queries", "name at least one query"),
    ({"queries": [{"name": "a", "query": "up", "rate": "5m", "increase": True}]}, "queries", "choose one"),
    ({"queries": [{"name": "a", "query": "up", "ratee": "5m"}]}, "queries", "unknown key 'ratee'"),
    ({"queries": [{"name": "a", "query": "up"}, {"name": "a", "query": "up"}]}, "queries", "used twice"),
    ({"step": "5 minutes"}, "step", "is not a duration"),
    ({"start": "last tuesday"}, "start", "is not a time"),
    ({"max_points": 20000}, "max_points", "at most 11000"),
    ({"start": 3}, "start", "expected a time such as"),
    ({"fill_limit": -1}, "fill_limit", "0 or more"),
    ({"series_labels": []}, "series_labels", "at least one label"),
])
def test_options_are_checked(options, key, says):
    from opsloop.config import structure

    table = {"queries": {"m01": "asd_m01"}, **options}
    with pytest.raises(ConfigError) as caught:
        structure(table, Options, section="data.prometheus", source="opsloop.toml")
    assert f"[data.prometheus.{key}]" in str(caught.value) and says in str(caught.value)


def test_toml_date_times_are_times():
    import tomllib

    from opsloop.config import structure

    table = tomllib.loads('queries = {m01 = "asd_m01"}\nstart = 2024-01-03T01:00:00+01:00\nend = 2024-01-03T01:00:00\n')
    options = structure(table, Options, section="data.prometheus", source="opsloop.toml")
    assert (options.start, options.end) == ("2024-01-03T01:00:00+01:00", "2024-01-03T01:00:00+00:00")
