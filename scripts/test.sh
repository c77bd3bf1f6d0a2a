#!/usr/bin/env bash
# Sets up and runs every test: unit tests and the network-namespace
# integration tests (which need root; without it they print SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then ./scripts/setup.sh; else echo "not root: namespace tests will be skipped" >&2; fi
cargo test --all-targets -- --test-threads=2 "$@"
