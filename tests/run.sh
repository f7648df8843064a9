#!/usr/bin/env bash
# The README's test line: install what the tests need, start the services they
# use where this machine allows it, and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]"

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

python -m pytest "$@"
