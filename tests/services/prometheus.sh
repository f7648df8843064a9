#!/usr/bin/env bash
# Install Debian's prometheus and prometheus-node-exporter packages for the
# opsloop-prometheus tests, which start their own throwaway server (and
# exporter) on free 127.0.0.1 ports. On success prints three lines,
#   OPSLOOP_TEST_PROMETHEUS=/usr/bin/prometheus
#   OPSLOOP_TEST_PROMTOOL=/usr/bin/promtool
#   OPSLOOP_TEST_NODE_EXPORTER=/usr/bin/prometheus-node-exporter
# and exits 0; otherwise explains on stderr and exits 1 (the tests then skip
# with that reason). Starts nothing, and leaves no system prometheus service
# on the default port 9090 (nor a node exporter on 9100): the packages'
# maintainer scripts are kept from starting them, and any the packages did
# start are stopped and disabled.
set -uo pipefail
say() { echo "prometheus.sh: $*" >&2; }
BINARIES=(prometheus promtool prometheus-node-exporter)

have_all() {
  local b
  for b in "${BINARIES[@]}"; do command -v "$b" >/dev/null || return 1; done
}

stop_services() {
  # Debian's packages enable prometheus.service and prometheus-node-exporter.service; the tests need
  # neither (they start their own on free ports).
  local unit
  for unit in prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now "$unit.service" >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
      service "$unit" stop >/dev/null 2>&1 || true
    fi
  done
}

if ! have_all; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "Prometheus is not installed and this is not root on Debian/Ubuntu: cannot install it"
    exit 1
  fi
  say "installing Debian's prometheus and prometheus-node-exporter packages"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d exit 101 tells invoke-rc.d not to start the services the packages install (the
  # standard Debian way for images and chroots); only when no policy is in place already.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends "prometheus" \
    "prometheus-node-exporter") >/dev/null 2>&1
  status=$?
  [ -n "$policy" ] && rm -f "$policy"
  stop_services
  [ "$status" = 0 ] || { say "apt-get install prometheus prometheus-node-exporter failed"; exit 1; }
  have_all || { say "packages installed but one of ${BINARIES[*]} is not on PATH"; exit 1; }
fi
stop_services

echo "OPSLOOP_TEST_PROMETHEUS=$(command -v prometheus)"
echo "OPSLOOP_TEST_PROMTOOL=$(command -v promtool)"
echo "OPSLOOP_TEST_NODE_EXPORTER=$(command -v prometheus-node-exporter)"
