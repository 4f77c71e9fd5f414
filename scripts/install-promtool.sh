#!/usr/bin/env bash
# Install promtool (Prometheus' config and rule checker), which tests/deploy needs.
#
# Idempotent: does nothing when promtool is already on PATH. Otherwise installs
# Debian/Ubuntu's `prometheus` package with apt-get. The package would start a
# Prometheus service on install; a policy-rc.d that denies every service start is
# put in place for the install (unless one already exists), so nothing is left running.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    cat >&2 <<'MSG'
promtool is not installed and apt-get is not available to install it.
Install Prometheus' promtool yourself and put it on PATH, for example from
https://prometheus.io/download/ (it ships in the prometheus-*.tar.gz archive),
or `brew install prometheus` on macOS.
MSG
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "promtool is missing; installing it needs root (or sudo): apt-get install prometheus" >&2
        exit 1
    fi
fi

POLICY=/usr/sbin/policy-rc.d
placed_policy=0
cleanup() {
    if [ "$placed_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
    # Exit code 101 tells invoke-rc.d that starting services is forbidden.
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    placed_policy=1
fi

echo "installing promtool with apt-get (package: prometheus)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${SUDO[@]}" apt-get update -q
fi
"${SUDO[@]}" apt-get install -y -q --no-install-recommends prometheus

# Belt and braces: on a host where a service manager ran the unit anyway, stop it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${SUDO[@]}" systemctl stop prometheus || true
    "${SUDO[@]}" systemctl disable prometheus || true
fi

command -v promtool >/dev/null 2>&1 || { echo "apt-get ran but promtool is not on PATH" >&2; exit 1; }
echo "promtool: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
