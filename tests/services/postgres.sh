#!/usr/bin/env bash
# Install (Debian's package) and start a throwaway PostgreSQL server on
# 127.0.0.1 for the PostgreSQL store tests. On success prints one line,
#   OPSLOOP_TEST_PG=postgresql://opsloop@127.0.0.1:PORT/opsloop
# and exits 0; otherwise explains on stderr and exits 1 (the tests then skip
# with that reason). Idempotent: a server this script started is reused.
set -uo pipefail

PORT="${OPSLOOP_TEST_PG_PORT:-54329}"
DATA="${OPSLOOP_TEST_PG_DIR:-/tmp/opsloop-test-pg}"
URL="postgresql://opsloop@127.0.0.1:${PORT}/opsloop"
say() { echo "postgres.sh: $*" >&2; }

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

BIN=$(find_bin)
if [ -z "$BIN" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "PostgreSQL is not installed and this is not root on Debian/Ubuntu: cannot install it"
    exit 1
  fi
  say "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql) >/dev/null 2>&1 || {
    say "apt-get install postgresql failed"; exit 1; }
  BIN=$(find_bin) || { say "postgresql installed but pg_ctl not found"; exit 1; }
fi

# PostgreSQL refuses to run as root: run it as the 'postgres' user the package creates.
RUNAS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
  RUNAS=(runuser -u postgres --)
fi

if "${RUNAS[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  echo "OPSLOOP_TEST_PG=$URL"
  exit 0
fi

rm -rf "$DATA"
mkdir -p "$DATA"
[ "$(id -u)" = 0 ] && chown postgres "$DATA"
"${RUNAS[@]}" "$BIN/initdb" -D "$DATA" -U opsloop --auth=trust -E UTF8 >/dev/null 2>&1 || {
  say "initdb failed"; exit 1; }
"${RUNAS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100" start >/dev/null 2>&1 || {
  say "server did not start; see $DATA/server.log"; exit 1; }
"${RUNAS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U opsloop opsloop >/dev/null 2>&1 || {
  say "createdb failed"; exit 1; }
echo "OPSLOOP_TEST_PG=$URL"
