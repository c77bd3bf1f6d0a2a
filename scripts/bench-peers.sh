#!/usr/bin/env bash
# Installs the peer tunnels the throughput bench compares on6 with:
# tinc, Yggdrasil, Nebula, OpenVPN (Debian packages) and boringtun, quincy
# (crates.io, built with `cargo install --locked` into target/bench-tools so a
# rerun reuses them). The full bench runs this script; quick mode (cargo test)
# does not: it runs whichever peers are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-peers.sh needs root (apt-get)" >&2; exit 1; }
./scripts/setup.sh
need=()
command -v tincd >/dev/null || need+=(tinc)
command -v yggdrasil >/dev/null || need+=(yggdrasil)
command -v nebula >/dev/null || need+=(nebula)
command -v openvpn >/dev/null || need+=(openvpn)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian packages start system services; the bench runs its own instances.
for unit in tinc yggdrasil openvpn; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
done
tools="target/bench-tools"
mkdir -p "$tools"
[ -x "$tools/bin/boringtun-cli" ] || cargo install --locked --root "$tools" boringtun-cli
# quincy 3 ships its binaries as separate crates; quincy-identity makes its certificates.
[ -x "$tools/bin/quincy-server" ] || cargo install --locked --root "$tools" quincy-server quincy-client quincy-identity
echo "peer tunnels installed; crates in $tools/bin"
