#!/usr/bin/env bash
# Installs what on6's demo and tests need on a fresh Debian/Ubuntu machine:
# iproute2 (namespaces, veth), nftables (NAT and loss emulation), ping for users,
# Prometheus (the metrics tests run a real server and promtool).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v ping >/dev/null || need+=(iputils-ping)
# Prometheus server and promtool: the metrics tests scrape a live overlay with them.
command -v promtool >/dev/null || need+=(prometheus)
# The throughput bench (its quick mode runs under cargo test): iperf3, ethtool, and the peer tunnels.
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ethtool >/dev/null || need+=(ethtool)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
