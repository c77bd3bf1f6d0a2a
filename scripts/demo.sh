#!/usr/bin/env bash
# The main job: a multi-site on6 overlay on this machine with real traffic.
# Arguments go to `on6 demo` (--sites N, --keep, --remote-gateway K, --bytes B).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "on6 demo needs root (namespaces, TUN): run with sudo" >&2; exit 1; }
./scripts/setup.sh
cargo build --release --quiet
exec ./target/release/on6 demo "$@"
