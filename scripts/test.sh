#!/usr/bin/env bash
# Runs every check of the project on a fresh machine: installs the Prometheus
# and Alertmanager tools the tests use (Debian packages) when missing, then
# formatting, lints and the whole test suite. The tests start their own
# throwaway PostgreSQL from the installed server binaries (or use
# DATABASE_URL when it is set).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    else
        echo "missing ${missing[*]}: install the Debian packages (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
cargo test --locked --doc
