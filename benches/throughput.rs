//! Throughput over a lossy underlay: on6 side by side with the native path
//! and the peer tunnels this machine can install, measured in one run on one
//! topology (two sites, a host behind each, an underlay link between the
//! sites' namespaces).
//!
//! Loss is per wire packet: nftables `numgen random` on the netdev ingress
//! hook of each site's underlay interface, with TSO/GSO/GRO off there (a rule
//! on output would drop whole 47 KB GSO batches). Traffic is iperf3 TCP with
//! the inner congestion control set per run (BBR and CUBIC differ enormously
//! under loss), plus ICMPv6 RTT, CPU seconds per GB and peak memory of the
//! tunnel processes.
//!
//! `cargo bench --bench throughput` runs the full sweep; `-- --quick` (and
//! `cargo test`, as a check that the bench works) runs a small subset.
//! Results: `target/bench/throughput.{json,md}`.

use on6::demo::overlay::{underlay_v6, Overlay, OverlayOptions};
use on6::netns::{self, PingOpts};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    Native,
    On6,
    WireguardGo,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Native => "native (no tunnel)",
            Peer::On6 => "on6",
            Peer::WireguardGo => "wireguard-go",
        }
    }
}

/// Peers named by the issue that this bench does not run yet, and why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "quincy",
        "not installed: crates.io build not wired into the bench yet",
    ),
    (
        "boringtun",
        "not installed: crates.io build not wired into the bench yet",
    ),
    (
        "tinc",
        "installable (Debian tinc 1.0.36); configuration not written yet",
    ),
    (
        "yggdrasil",
        "installable (Debian 0.4.7); configuration not written yet",
    ),
    (
        "nebula",
        "installable (Debian 1.6.1); configuration not written yet",
    ),
    (
        "openvpn",
        "installable (Debian 2.6.14); configuration not written yet",
    ),
];

#[derive(serde::Serialize, Clone)]
struct Row {
    peer: &'static str,
    loss_pct: f64,
    delay_ms: u32,
    congestion: &'static str,
    streams: u32,
    mbit_s: Option<f64>,
    rtt_p50_ms: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    peak_rss_mib: Option<f64>,
    note: String,
}

impl Row {
    /// A peer that produced no measurement, and why.
    fn unmeasured(peer: &'static str, note: impl Into<String>) -> Row {
        Row {
            peer,
            loss_pct: 0.0,
            delay_ms: 0,
            congestion: "-",
            streams: 0,
            mbit_s: None,
            rtt_p50_ms: None,
            cpu_s_per_gb: None,
            peak_rss_mib: None,
            note: note.into(),
        }
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian packages the bench needs when missing (as the project's scripts do).
fn ensure(tool: &str, package: &str) -> bool {
    if have(tool) {
        return true;
    }
    eprintln!("installing {package} for {tool}");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    have(tool)
}

fn topology(start_on6: bool) -> Overlay {
    let mut o = OverlayOptions::new(2, env!("CARGO_BIN_EXE_on6"));
    o.start = start_on6;
    o.log = "warn".into();
    let ov = Overlay::build(&o).expect("topology");
    for s in &ov.sites {
        // Per-packet loss needs packets, not GSO batches, on the wire.
        let _ = in_ns(
            s.site_ns.name(),
            &[
                "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "gro", "off",
            ],
        );
    }
    ov
}

fn set_loss(ov: &Overlay, pct: f64) {
    for s in &ov.sites {
        let ns = s.site_ns.name();
        let _ = in_ns(ns, &["nft", "delete", "table", "netdev", "on6bench"]);
        if pct > 0.0 {
            let per_10k = (pct * 100.0).round() as u32;
            let rules = format!(
                "table netdev on6bench {{\n  chain ingress {{\n    type filter hook ingress device \"ul0\" priority 0; policy accept;\n    numgen random mod 10000 < {per_10k} drop\n  }}\n}}\n"
            );
            let path = ov.dir.join(format!("loss-{ns}.nft"));
            std::fs::write(&path, rules).expect("writing the loss rule");
            in_ns(ns, &["nft", "-f", &path.to_string_lossy()]).expect("loss rule");
        }
    }
}

/// Starts a peer tunnel between the two sites; returns its processes.
fn start_peer(peer: Peer, ov: &Overlay) -> Result<Vec<Child>, String> {
    let (a, b) = (&ov.sites[0], &ov.sites[1]);
    match peer {
        Peer::On6 => Ok(vec![]),
        Peer::Native => {
            // Plain IPv6 routing over the underlay: each site routes the other's prefix to it.
            for (from, to) in [(a, 1), (b, 0)] {
                let other = &ov.sites[to].prefix.to_string();
                in_ns(
                    from.site_ns.name(),
                    &[
                        "ip",
                        "-6",
                        "route",
                        "add",
                        other,
                        "via",
                        &underlay_v6(to).to_string(),
                    ],
                )?;
            }
            Ok(vec![])
        }
        Peer::WireguardGo => {
            let mut children = Vec::new();
            let keys: Vec<(String, String)> = (0..2)
                .map(|_| {
                    let private = run(Command::new("wg").arg("genkey"))
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    let mut p = Command::new("wg")
                        .arg("pubkey")
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .expect("wg");
                    use std::io::Write;
                    let _ = p.stdin.take().map(|mut s| s.write_all(private.as_bytes()));
                    let public = String::from_utf8_lossy(
                        &p.wait_with_output().map(|o| o.stdout).unwrap_or_default(),
                    )
                    .trim()
                    .to_string();
                    (private, public)
                })
                .collect();
            let setup = |children: &mut Vec<Child>| -> Result<(), String> {
                for (i, s) in ov.sites.iter().enumerate() {
                    let other = &ov.sites[1 - i];
                    let ns = s.site_ns.name();
                    // wireguard-go's control socket lives in /var/run/wireguard, shared by all
                    // namespaces: each side needs its own interface name.
                    let dev = format!("wg{i}");
                    let child = Command::new("ip")
                        .args(["netns", "exec", ns, "wireguard-go", "-f", &dev])
                        .env("WG_PROCESS_FOREGROUND", "1")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .map_err(|e| e.to_string())?;
                    children.push(child);
                    let key_file = ov.dir.join(format!("wg{i}.key"));
                    std::fs::write(&key_file, &keys[i].0).map_err(|e| e.to_string())?;
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while in_ns(ns, &["ip", "link", "show", &dev]).is_err()
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    in_ns(
                        ns,
                        &[
                            "wg",
                            "set",
                            &dev,
                            "private-key",
                            &key_file.to_string_lossy(),
                            "listen-port",
                            "51820",
                            "peer",
                            &keys[1 - i].1,
                            "endpoint",
                            &format!("{}:51820", other.underlay),
                            "allowed-ips",
                            &other.prefix.to_string(),
                        ],
                    )?;
                    in_ns(ns, &["ip", "link", "set", &dev, "mtu", "1420", "up"])?;
                    in_ns(
                        ns,
                        &[
                            "ip",
                            "-6",
                            "route",
                            "add",
                            &other.prefix.to_string(),
                            "dev",
                            &dev,
                        ],
                    )?;
                }
                Ok(())
            };
            if let Err(e) = setup(&mut children) {
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
            Ok(children)
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One iperf3 TCP run from host A to host B: (Mbit/s, bytes received).
fn iperf(ov: &Overlay, cc: &str, streams: u32, secs: u32) -> Result<(f64, f64), String> {
    let (a, b) = (&ov.sites[0], &ov.sites[1]);
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            b.host_ns.name(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns(
        a.host_ns.name(),
        &[
            "iperf3",
            "-6",
            "-c",
            &b.host_addr.to_string(),
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-C",
            cc,
            "-P",
            &streams.to_string(),
            "-J",
        ],
    );
    let _ = server.kill();
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_str(&out?).map_err(|e| e.to_string())?;
    let sum = &json["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) => Ok((bps / 1e6, bytes)),
        _ => Err(json["error"].as_str().unwrap_or("no result").to_string()),
    }
}

fn rtt_p50(ov: &Overlay) -> Option<f64> {
    let dst = ov.sites[1].host_addr;
    let stats = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping_many(dst, 20, Duration::from_millis(20), PingOpts::default())
    })
    .ok()?;
    stats.p50().map(|d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    if !netns::is_root() {
        eprintln!("SKIPPED throughput bench: needs root for network namespaces");
        return;
    }
    for (tool, pkg) in [
        ("iperf3", "iperf3"),
        ("nft", "nftables"),
        ("ethtool", "ethtool"),
    ] {
        assert!(
            ensure(tool, pkg),
            "{tool} is required and could not be installed"
        );
    }
    let wg = ensure("wireguard-go", "wireguard-go") && ensure("wg", "wireguard-tools");
    let (losses, ccs, streams, secs): (&[f64], &[&str], &[u32], u32) = if quick {
        (&[0.0, 1.0], &["bbr", "cubic"], &[1], 3)
    } else {
        (&[0.0, 0.1, 1.0, 5.0], &["bbr", "cubic"], &[1, 4], 10)
    };
    let mut peers = vec![Peer::Native, Peer::On6];
    let mut rows = Vec::new();
    if wg {
        peers.push(Peer::WireguardGo);
    } else {
        rows.push(Row::unmeasured("wireguard-go", "could not be installed"));
    }
    let started = Instant::now();
    for peer in peers {
        let ov = topology(peer == Peer::On6);
        let children = match start_peer(peer, &ov) {
            Ok(c) => c,
            Err(e) => {
                rows.push(Row::unmeasured(
                    peer.name(),
                    format!("failed to start: {e}"),
                ));
                continue;
            }
        };
        let mut pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        pids.extend(ov.pids());
        std::thread::sleep(Duration::from_millis(500));
        for &loss in losses {
            set_loss(&ov, loss);
            let rtt = rtt_p50(&ov);
            for &cc in ccs {
                for &n in streams {
                    let before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
                    let result = iperf(&ov, cc, n, secs);
                    let after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
                    let (mbit_s, cpu, note) = match result {
                        Ok((mbps, bytes)) => {
                            let cpu_s = (after - before) as f64 / 100.0;
                            (
                                Some(mbps),
                                (!pids.is_empty() && bytes > 0.0).then(|| cpu_s / (bytes / 1e9)),
                                String::new(),
                            )
                        }
                        Err(e) => (None, None, e),
                    };
                    let rss = pids
                        .iter()
                        .map(|p| peak_rss_kib(*p))
                        .max()
                        .filter(|_| !pids.is_empty())
                        .map(|k| k as f64 / 1024.0);
                    eprintln!(
                        "{:<20} loss {loss:>4}% {cc:<5} x{n}: {:?} Mbit/s",
                        peer.name(),
                        mbit_s.map(|m| m.round())
                    );
                    rows.push(Row {
                        peer: peer.name(),
                        loss_pct: loss,
                        delay_ms: 0,
                        congestion: cc,
                        streams: n,
                        mbit_s,
                        rtt_p50_ms: rtt,
                        cpu_s_per_gb: cpu,
                        peak_rss_mib: rss,
                        note,
                    });
                }
            }
        }
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(ov);
    }
    for (peer, why) in NOT_RUN {
        rows.push(Row::unmeasured(peer, *why));
    }

    let mut md = String::from("| peer | loss % | delay ms | inner CC | streams | Mbit/s | RTT p50 ms | CPU s/GB | peak RSS MiB | note |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.peer,
            r.loss_pct,
            r.delay_ms,
            r.congestion,
            r.streams,
            f(r.mbit_s, 0),
            f(r.rtt_p50_ms, 3),
            f(r.cpu_s_per_gb, 2),
            f(r.peak_rss_mib, 1),
            r.note
        ));
    }
    println!(
        "\nThroughput through the underlay (single machine, {} mode, {:.0} s)\n\n{md}",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    println!("Delay, jitter and reordering (userspace impairment relay) are not part of this version of the bench.");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let stem = if quick {
        "throughput_quick"
    } else {
        "throughput"
    };
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&rows).unwrap_or_default(),
    )
    .expect("writing results");
    std::fs::write(dir.join(format!("{stem}.md")), &md).expect("writing results");
    let measured = rows.iter().filter(|r| r.mbit_s.is_some()).count();
    assert!(
        rows.iter()
            .any(|r| r.peer == "on6" && r.mbit_s.is_some_and(|m| m > 0.0)),
        "on6 carried no traffic"
    );
    assert!(measured >= 4, "too few measurements succeeded");
}
