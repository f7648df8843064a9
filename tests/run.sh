#!/usr/bin/env bash
# The README's test line: install what the tests need, start the services they
# use where this machine allows it, and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Always in a virtualenv, the way a newcomer runs it (issue 8: CI's system Python once hid three
# failures that a fresh virtualenv shows). Inside an active one, use it; otherwise make (or reuse)
# .venv here. CI's clean clone has none, so CI always tests a fresh one.
if ! python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
echo "tests/run.sh: testing in the virtualenv $(python -c 'import sys; print(sys.prefix)')" >&2

python -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The contrib distributions, as a vendor's package would be installed (pytest collects contrib/*/tests). A
# package whose dependencies cannot be installed here is skipped: its tests skip with the reason.
for dist in contrib/*/pyproject.toml; do
  dist=$(dirname "$dist")
  python -m pip install --quiet --disable-pip-version-check -e "./$dist" \
    || echo "tests/run.sh: could not install $dist: its tests will be skipped" >&2
done

# PostgreSQL for the shared-registry store tests: installed and started by
# tests/services/postgres.sh (as root with apt-get); without it those tests
# skip with the reason.
if [ -f tests/services/postgres.sh ]; then
  if env_line=$(bash tests/services/postgres.sh); then
    export "$env_line"
  else
    echo "PostgreSQL not available: its store tests will be skipped" >&2
  fi
fi

# Prometheus (and its node exporter) for opsloop-prometheus's tests: installed
# by tests/services/prometheus.sh (as root with apt-get), which prints the
# binaries' paths; the tests start their own servers. Without it they skip.
if [ -f tests/services/prometheus.sh ]; then
  if env_lines=$(bash tests/services/prometheus.sh); then
    while read -r env_line; do export "$env_line"; done <<<"$env_lines"
  else
    echo "Prometheus not available: opsloop-prometheus's tests will be skipped" >&2
  fi
fi

# Headless Chromium (Debian's package) opens `opsloop report`'s page in tests/cli/test_report.py: installed
# by tests/services/chromium.sh (as root with apt-get), which prints its path. Without it that test skips.
if [ -f tests/services/chromium.sh ]; then
  if env_line=$(bash tests/services/chromium.sh); then
    export "$env_line"
  else
    echo "Chromium not available: the report's browser test will be skipped" >&2
  fi
fi

python -m pytest "$@"
