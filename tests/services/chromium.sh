#!/usr/bin/env bash
# Install Debian's chromium package for the `opsloop report` test that opens the report in a headless
# browser (tests/cli/test_report.py, through Playwright with this executable: Playwright's own browser
# download is not needed). On success prints one line,
#   OPSLOOP_TEST_CHROMIUM=/usr/bin/chromium
# and exits 0; otherwise explains on stderr and exits 1 (the test then skips with that reason).
# Starts nothing.
set -uo pipefail
say() { echo "chromium.sh: $*" >&2; }

find_chromium() {
  local candidate
  for candidate in "${OPSLOOP_TEST_CHROMIUM:-}" /usr/bin/chromium "$(command -v chromium 2>/dev/null)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if ! found=$(find_chromium); then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "Chromium is not installed and this is not root on Debian/Ubuntu: cannot install it"
    exit 1
  fi
  say "installing Debian's chromium package"
  export DEBIAN_FRONTEND=noninteractive
  if ! (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1; then
    say "apt-get install chromium failed"
    exit 1
  fi
  found=$(find_chromium) || { say "the chromium package is installed but /usr/bin/chromium is not there"; exit 1; }
fi

# It must start: a browser that cannot run (a missing library) is reported here, not as a test failure.
if ! "$found" --headless=new --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1; then
  say "$found is installed but does not start headless"
  exit 1
fi
echo "OPSLOOP_TEST_CHROMIUM=$found"
