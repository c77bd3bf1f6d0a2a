//! Throughput over an impaired underlay: on6 side by side with the native
//! path and the peer tunnels (wireguard-go, boringtun, tinc, Yggdrasil,
//! Nebula, OpenVPN, quincy), measured in one run on one topology (two sites,
//! a host behind each, an underlay link between the sites' namespaces).
//! A reference tunnel of bare quinn datagrams ([`quinn_bare`]) runs beside
//! them: what any quinn-based design starts from here.
//!
//! Random loss is per wire packet: nftables `numgen random` on the netdev
//! ingress hook of each site's underlay interface, with TSO/GSO/GRO off there
//! (a rule on output would drop whole 47 KB GSO batches). Delay, jitter and
//! bursty (Gilbert-Elliott) loss come from on6's userspace impairment relay
//! ([`on6::impair::relay`]) run in a thread of this process inside its own
//! namespace on the underlay: the kernel here has no netem. UDP tunnels are
//! pointed at the relay's addresses instead of each other's. A bottleneck is
//! `tbf` on each site's underlay egress.
//!
//! Traffic is iperf3 TCP with the inner congestion control set per run (BBR
//! and CUBIC differ enormously under loss), iperf3 UDP at a fixed offered
//! rate (loss, jitter), ping RTT p50/p99, CPU seconds per GB and peak memory
//! of the tunnel processes.
//!
//! `cargo bench --bench throughput` runs `scripts/bench-peers.sh` (installs
//! the peers) and the full sweep; `-- --quick` (and `cargo test`, as a check
//! that the bench works) runs a small subset with the peers already
//! installed. Results: `target/bench/throughput.{json,md,png}`.

use on6::demo::overlay::{underlay_v6, Overlay, OverlayOptions, TUNNEL_PORT};
use on6::impair::relay::{Pipe, Relay};
use on6::impair::{self, GilbertElliott};
use on6::netns::{self, Netns};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "throughput/quinn_bare.rs"]
mod quinn_bare;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    Native,
    On6,
    WireguardGo,
    Boringtun,
    Tinc,
    Yggdrasil,
    Nebula,
    Openvpn,
    Quincy,
    QuinnBare,
}

const PEERS: [Peer; 10] = [
    Peer::Native,
    Peer::On6,
    Peer::WireguardGo,
    Peer::Boringtun,
    Peer::Tinc,
    Peer::Yggdrasil,
    Peer::Nebula,
    Peer::Openvpn,
    Peer::Quincy,
    Peer::QuinnBare,
];

/// The relay's address on the underlay; A sends to RELAY_A, B to RELAY_B.
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 250);
const RELAY_A: u16 = 40001;
const RELAY_B: u16 = 40002;

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Native => "native (no tunnel)",
            Peer::On6 => "on6",
            Peer::WireguardGo => "wireguard-go",
            Peer::Boringtun => "boringtun",
            Peer::Tinc => "tinc",
            Peer::Yggdrasil => "yggdrasil",
            Peer::Nebula => "nebula",
            Peer::Openvpn => "openvpn",
            Peer::Quincy => "quincy",
            Peer::QuinnBare => "quinn-bare",
        }
    }

    /// Programs the peer needs (crates from target/bench-tools/bin).
    fn programs(self) -> &'static [&'static str] {
        match self {
            Peer::Native | Peer::On6 | Peer::QuinnBare => &[],
            Peer::WireguardGo => &["wireguard-go", "wg"],
            Peer::Boringtun => &["boringtun-cli", "wg"],
            Peer::Tinc => &["tincd"],
            Peer::Yggdrasil => &["yggdrasil"],
            Peer::Nebula => &["nebula", "nebula-cert"],
            Peer::Openvpn => &["openvpn"],
            Peer::Quincy => &["quincy-server", "quincy-client", "quincy-identity"],
        }
    }

    /// The UDP port each side listens on, for peers whose UDP can go through
    /// the relay; `None` for peers it cannot carry.
    fn relay_port(self) -> Option<u16> {
        match self {
            Peer::On6 => Some(TUNNEL_PORT),
            Peer::WireguardGo | Peer::Boringtun => Some(51820),
            Peer::Nebula => Some(4242),
            Peer::Openvpn => Some(1194),
            Peer::Quincy => Some(55555),
            Peer::QuinnBare => Some(quinn_bare::PORT),
            // Native has no UDP underlay; Yggdrasil 0.4 peers over TCP only; tinc
            // sends UDP to the address its TCP meta connection came from.
            Peer::Native | Peer::Yggdrasil | Peer::Tinc => None,
        }
    }

    fn relay_excuse(self) -> &'static str {
        match self {
            Peer::Native => "no UDP underlay to relay",
            Peer::Yggdrasil => "TCP underlay (Yggdrasil 0.4 has no UDP/QUIC peering)",
            Peer::Tinc => "tinc 1.0 sends UDP to its TCP meta peer's address, not a relay",
            _ => "",
        }
    }
}

fn tools_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tools/bin")
}

/// A program's path: PATH first, then the crates built by scripts/bench-peers.sh.
fn program(name: &str) -> Option<String> {
    let local = tools_bin().join(name);
    if local.is_file() {
        return Some(local.to_string_lossy().into_owned());
    }
    run(Command::new("sh").args(["-c", &format!("command -v {name}")]))
        .ok()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

/// What impairs the underlay during one set of runs.
#[derive(Debug, Clone, Copy)]
struct Cond {
    /// Random per-packet loss (nftables), or the mean of the bursty loss.
    loss_pct: f64,
    /// Added round-trip delay (half each way, in the relay).
    delay_ms: u32,
    /// Gilbert-Elliott loss in the relay with this mean burst length (packets).
    burst: Option<f64>,
    /// Share of packets the relay holds back 5 ms so later ones overtake them.
    reorder_pct: f64,
    /// A bottleneck: `tbf` at this rate on each site's underlay egress, with
    /// 20 ms of queue (about one BDP of a 20 ms path).
    rate_mbit: Option<u32>,
}

impl Cond {
    fn iid(loss_pct: f64, delay_ms: u32) -> Cond {
        Cond {
            loss_pct,
            delay_ms,
            burst: None,
            reorder_pct: 0.0,
            rate_mbit: None,
        }
    }

    fn needs_relay(&self) -> bool {
        self.delay_ms > 0 || self.burst.is_some() || self.reorder_pct > 0.0
    }

    fn relay_config(&self, seed: u64) -> impair::Config {
        impair::Config {
            seed,
            loss: self.burst.map_or(GilbertElliott::none(), |b| {
                GilbertElliott::bursty(self.loss_pct / 100.0, b)
            }),
            delay: Duration::from_micros(u64::from(self.delay_ms) * 500),
            // Some jitter with any delay, as on a real path; it never reorders by itself.
            jitter: Duration::from_micros(if self.delay_ms > 0 { 1000 } else { 0 }),
            reorder: self.reorder_pct / 100.0,
            reorder_extra: Duration::from_millis(5),
        }
    }

    /// The random loss nftables applies (bursty loss is the relay's).
    fn nft_loss(&self) -> f64 {
        if self.burst.is_some() {
            0.0
        } else {
            self.loss_pct
        }
    }

    fn label(&self) -> String {
        let mut parts = Vec::new();
        match self.burst {
            Some(b) => parts.push(format!("relay GE loss, bursts of {b}")),
            None if self.loss_pct > 0.0 => parts.push("nft random loss".to_string()),
            None => {}
        }
        if self.delay_ms > 0 {
            parts.push(format!(
                "relay +{} ms each way, 1 ms jitter",
                self.delay_ms / 2
            ));
        }
        if self.reorder_pct > 0.0 {
            parts.push(format!("relay reorders {}% by 5 ms", self.reorder_pct));
        }
        if let Some(r) = self.rate_mbit {
            parts.push(format!("tbf {r} Mbit/s each way"));
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join("; ")
        }
    }
}

#[derive(serde::Serialize, Clone)]
struct Row {
    peer: &'static str,
    loss_pct: f64,
    delay_ms: u32,
    rate_mbit: Option<u32>,
    impairment: String,
    congestion: String,
    streams: u32,
    mbit_s: Option<f64>,
    udp_loss_pct: Option<f64>,
    udp_jitter_ms: Option<f64>,
    rtt_p50_ms: Option<f64>,
    rtt_p99_ms: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    peak_rss_mib: Option<f64>,
    note: String,
}

impl Row {
    /// A peer (or condition) that produced no measurement, and why.
    fn unmeasured(peer: &'static str, cond: Option<&Cond>, note: impl Into<String>) -> Row {
        Row {
            peer,
            loss_pct: cond.map_or(0.0, |c| c.loss_pct),
            delay_ms: cond.map_or(0, |c| c.delay_ms),
            rate_mbit: cond.and_then(|c| c.rate_mbit),
            impairment: cond.map_or("-".into(), Cond::label),
            congestion: "-".into(),
            streams: 0,
            mbit_s: None,
            udp_loss_pct: None,
            udp_jitter_ms: None,
            rtt_p50_ms: None,
            rtt_p99_ms: None,
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
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Runs `cmd` with `input` on stdin; returns stdout.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{cmd:?}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn have(tool: &str) -> bool {
    program(tool).is_some()
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

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not ready after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Processes of one tunnel: killed and reaped on drop, whatever happened.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    /// Starts `args` in namespace `ns`, output to `log`.
    fn spawn(
        &mut self,
        ns: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<(), String> {
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", args.join(" ")))?;
        self.0.push(child);
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.0.iter().map(Child::id).collect()
    }

    /// An error if a process has exited (with the tail of its log).
    fn check(&mut self, logs: &[PathBuf]) -> Result<(), String> {
        for c in &mut self.0 {
            if let Ok(Some(status)) = c.try_wait() {
                let tail = logs
                    .iter()
                    .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                    .map(|t| t.lines().rev().take(3).collect::<Vec<_>>().join(" / "))
                    .collect::<Vec<_>>()
                    .join(" | ");
                return Err(format!("a tunnel process exited with {status}: {tail}"));
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where traffic goes: iperf3 client and server namespaces and the server's address.
#[derive(Clone)]
struct Target {
    client_ns: String,
    server_ns: String,
    dst: IpAddr,
}

/// The impairment relay, running in a thread of this process inside the
/// relay namespace; stopped and joined on drop.
struct RelayRun {
    cfg: tokio::sync::watch::Sender<impair::Config>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayRun {
    fn start(ns: &str, pipe: Pipe, cfg: impair::Config) -> Result<RelayRun, String> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (set_cfg, cfg) = tokio::sync::watch::channel(cfg);
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            let started = netns::enter_netns(&ns)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())
                });
            let rt = match started {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match Relay::bind(&[pipe]) {
                    Ok(relay) => {
                        let _ = ready_tx.send(Ok(()));
                        if let Err(e) = relay
                            .run(cfg, async {
                                let _ = stopped.await;
                            })
                            .await
                        {
                            eprintln!("impairment relay stopped: {e}");
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("relay bind: {e}")));
                    }
                }
            });
        });
        let run = RelayRun {
            cfg: set_cfg,
            stop: Some(stop),
            thread: Some(thread),
        };
        ready
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("relay start: {e}"))??;
        Ok(run)
    }

    /// Applies a new impairment at once (same sockets, no gap).
    fn set(&self, cfg: impair::Config) {
        self.cfg.send_replace(cfg);
    }
}

impl Drop for RelayRun {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A topology with one peer tunnel up. Fields drop in order: processes,
/// the relay, its namespace, then the sites.
struct Bed {
    procs: Procs,
    target: Target,
    note: String,
    relay: Option<RelayRun>,
    // Held so the namespace lives as long as the relay in it.
    _relay_ns: Option<Netns>,
    ov: Overlay,
}

fn topology() -> Result<Overlay, String> {
    let mut o = OverlayOptions::new(2, env!("CARGO_BIN_EXE_on6"));
    // on6 starts after its endpoints may have been pointed at the relay.
    o.start = false;
    // THROUGHPUT_ON6_IN_ORDER=0 turns the tunnels' in-order hold off (A/B runs).
    o.tunnel_in_order = std::env::var("THROUGHPUT_ON6_IN_ORDER").map_or(true, |v| v != "0");
    o.log = "warn".into();
    let ov = Overlay::build(&o).map_err(|e| format!("topology: {e}"))?;
    for s in &ov.sites {
        // Per-packet loss needs packets, not GSO batches, on the wire.
        in_ns(
            s.site_ns.name(),
            &[
                "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "gro", "off",
            ],
        )?;
    }
    Ok(ov)
}

fn set_loss(ov: &Overlay, pct: f64) -> Result<(), String> {
    for s in &ov.sites {
        let ns = s.site_ns.name();
        let _ = in_ns(ns, &["nft", "delete", "table", "netdev", "on6bench"]);
        if pct > 0.0 {
            let per_10k = (pct * 100.0).round() as u32;
            let rules = format!(
                "table netdev on6bench {{\n  chain ingress {{\n    type filter hook ingress device \"ul0\" priority 0; policy accept;\n    numgen random mod 10000 < {per_10k} drop\n  }}\n}}\n"
            );
            let path = ov.dir.join(format!("loss-{ns}.nft"));
            write(&path, &rules)?;
            in_ns(ns, &["nft", "-f", &path.to_string_lossy()])?;
        }
    }
    Ok(())
}

/// Rate-limits each site's underlay egress with `tbf`, or removes the limit.
fn set_rate(ov: &Overlay, mbit: Option<u32>) -> Result<(), String> {
    for s in &ov.sites {
        let ns = s.site_ns.name();
        let _ = in_ns(ns, &["tc", "qdisc", "del", "dev", "ul0", "root"]);
        if let Some(r) = mbit {
            let rate = format!("{r}mbit");
            in_ns(
                ns,
                &[
                    "tc", "qdisc", "add", "dev", "ul0", "root", "tbf", "rate", &rate, "burst",
                    "64kb", "latency", "20ms",
                ],
            )?;
        }
    }
    Ok(())
}

fn site_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, i as u8 + 1)
}

/// Where site `i` sends to reach the other site's `port`: directly, or the relay.
fn endpoint(i: usize, port: u16, relayed: bool) -> SocketAddrV4 {
    match (relayed, i) {
        (false, _) => SocketAddrV4::new(site_v4(1 - i), port),
        (true, 0) => SocketAddrV4::new(RELAY_IP, RELAY_A),
        (true, _) => SocketAddrV4::new(RELAY_IP, RELAY_B),
    }
}

fn route6(ns: &str, prefix: &str, dev: &str) -> Result<(), String> {
    in_ns(ns, &["ip", "-6", "route", "add", prefix, "dev", dev]).map(drop)
}

fn wg_keypair() -> Result<(String, String), String> {
    let private = run(Command::new("wg").arg("genkey"))?.trim().to_string();
    let public = run_with_input(Command::new("wg").arg("pubkey"), &private)?;
    Ok((private, public))
}

impl Bed {
    fn new(peer: Peer, relayed: bool) -> Result<Bed, String> {
        let mut ov = topology()?;
        let (relay_ns, relay) = match (relayed, peer.relay_port()) {
            (true, Some(port)) => {
                let ns = Netns::create("on6r").map_err(|e| e.to_string())?;
                ov.underlay_link(&ns, &format!("{RELAY_IP}/24"))
                    .map_err(|e| e.to_string())?;
                let pipe = Pipe {
                    a_listen: SocketAddr::from(endpoint(0, port, true)),
                    b_listen: SocketAddr::from(endpoint(1, port, true)),
                    b_peer: SocketAddr::from(SocketAddrV4::new(site_v4(1), port)),
                    // quincy's client sends from an ephemeral port.
                    a_peer: (peer != Peer::Quincy)
                        .then(|| SocketAddr::from(SocketAddrV4::new(site_v4(0), port))),
                };
                // Transparent while the tunnel comes up; each condition then sets its own.
                let relay = RelayRun::start(ns.name(), pipe, impair::Config::transparent(0))?;
                (Some(ns), Some(relay))
            }
            _ => (None, None),
        };
        let mut procs = Procs::default();
        let (target, note) = start_peer(peer, &mut ov, &mut procs, relay.is_some())?;
        let bed = Bed {
            procs,
            target,
            note,
            relay,
            _relay_ns: relay_ns,
            ov,
        };
        Ok(bed)
    }

    fn pids(&self) -> Vec<u32> {
        let mut p = self.procs.pids();
        p.extend(self.ov.pids());
        p
    }
}

/// Starts `peer` between the two sites; returns where to send traffic and a note.
fn start_peer(
    peer: Peer,
    ov: &mut Overlay,
    procs: &mut Procs,
    relayed: bool,
) -> Result<(Target, String), String> {
    let hosts = Target {
        client_ns: ov.sites[0].host_ns.name().to_string(),
        server_ns: ov.sites[1].host_ns.name().to_string(),
        dst: IpAddr::V6(ov.sites[1].host_addr),
    };
    let endpoints = |dst: IpAddr| Target {
        client_ns: ov.sites[0].site_ns.name().to_string(),
        server_ns: ov.sites[1].site_ns.name().to_string(),
        dst,
    };
    let dir = ov.dir.clone();
    let ns = |i: usize| ov.sites[i].site_ns.name().to_string();
    let prefix = |i: usize| ov.sites[i].prefix.to_string();
    let mut logs = Vec::new();
    let mut log = |name: String| {
        let p = dir.join(name);
        logs.push(p.clone());
        p
    };
    let (target, note) = match peer {
        Peer::Native => {
            // Plain IPv6 routing over the underlay: each site routes the other's prefix to it.
            for i in 0..2 {
                in_ns(
                    &ns(i),
                    &[
                        "ip",
                        "-6",
                        "route",
                        "add",
                        &prefix(1 - i),
                        "via",
                        &underlay_v6(1 - i).to_string(),
                    ],
                )?;
            }
            (hosts, String::new())
        }
        Peer::On6 => {
            if relayed {
                for i in 0..2 {
                    let cfg = &ov.sites[i].config;
                    let text = std::fs::read_to_string(cfg).map_err(|e| e.to_string())?;
                    let direct = format!("endpoint = \"{}\"", endpoint(i, TUNNEL_PORT, false));
                    if !text.contains(&direct) {
                        return Err(format!("no `{direct}` in {}", cfg.display()));
                    }
                    let via = format!("endpoint = \"{}\"", endpoint(i, TUNNEL_PORT, true));
                    write(cfg, &text.replace(&direct, &via))?;
                }
            }
            let bin = PathBuf::from(env!("CARGO_BIN_EXE_on6"));
            for i in 0..2 {
                // THROUGHPUT_ON6_LOG=debug: the sites' logs, under the overlay's directory.
                let level = std::env::var("THROUGHPUT_ON6_LOG").unwrap_or_else(|_| "warn".into());
                ov.start_site(i, &bin, &level).map_err(|e| e.to_string())?;
            }
            ov.wait_ready(Duration::from_secs(30))
                .map_err(|e| e.to_string())?;
            (hosts, String::new())
        }
        Peer::WireguardGo | Peer::Boringtun => {
            let keys = [wg_keypair()?, wg_keypair()?];
            for i in 0..2 {
                // The control socket lives in /var/run/wireguard, shared by all
                // namespaces: each side needs its own interface name.
                let dev = format!("{}{i}", if peer == Peer::Boringtun { "bt" } else { "wg" });
                let logfile = log(format!("{dev}.log"));
                if peer == Peer::Boringtun {
                    let bin = program("boringtun-cli").ok_or("boringtun-cli missing")?;
                    procs.spawn(
                        &ns(i),
                        &[
                            &bin,
                            "-f",
                            "--disable-drop-privileges",
                            "-l",
                            &logfile.to_string_lossy(),
                            &dev,
                        ],
                        &[],
                        &dir.join(format!("{dev}.out")),
                    )?;
                } else {
                    procs.spawn(
                        &ns(i),
                        &["wireguard-go", "-f", &dev],
                        &[("WG_PROCESS_FOREGROUND", "1")],
                        &logfile,
                    )?;
                }
                wait_for(&dev, Duration::from_secs(5), || {
                    in_ns(&ns(i), &["ip", "link", "show", &dev]).is_ok()
                })?;
                let key_file = dir.join(format!("{dev}.key"));
                write(&key_file, &keys[i].0)?;
                in_ns(
                    &ns(i),
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
                        &endpoint(i, 51820, relayed).to_string(),
                        "allowed-ips",
                        &prefix(1 - i),
                    ],
                )?;
                in_ns(&ns(i), &["ip", "link", "set", &dev, "mtu", "1420", "up"])?;
                route6(&ns(i), &prefix(1 - i), &dev)?;
            }
            (hosts, String::new())
        }
        Peer::Tinc => {
            let tincd = program("tincd").ok_or("tincd missing")?;
            let conf = |i: usize| dir.join(format!("tinc{i}"));
            for i in 0..2 {
                std::fs::create_dir_all(conf(i).join("hosts")).map_err(|e| e.to_string())?;
                let connect = if i == 0 { "ConnectTo = s1\n" } else { "" };
                write(
                    &conf(i).join("tinc.conf"),
                    &format!("Name = s{i}\nMode = router\nInterface = tinc{i}\nAddressFamily = ipv4\n{connect}"),
                )?;
                write(
                    &conf(i).join("hosts").join(format!("s{i}")),
                    &format!(
                        "Address = {}\nPort = 655\nSubnet = {}\n",
                        site_v4(i),
                        prefix(i)
                    ),
                )?;
                let up = conf(i).join("tinc-up");
                write(
                    &up,
                    &format!("#!/bin/sh\nip link set \"$INTERFACE\" up\nip -6 route add {} dev \"$INTERFACE\"\n", prefix(1 - i)),
                )?;
                run(Command::new("chmod").arg("+x").arg(&up))?;
                // Without a terminal, -K writes the keys to the default files.
                run(Command::new(&tincd)
                    .arg("-c")
                    .arg(conf(i))
                    .arg("-K2048")
                    .stdin(Stdio::null()))?;
            }
            for i in 0..2 {
                let host = format!("s{i}");
                std::fs::copy(
                    conf(i).join("hosts").join(&host),
                    conf(1 - i).join("hosts").join(&host),
                )
                .map_err(|e| e.to_string())?;
            }
            for i in 0..2 {
                let pid = conf(i).join("tinc.pid");
                procs.spawn(
                    &ns(i),
                    &[
                        &tincd,
                        "-c",
                        &conf(i).to_string_lossy(),
                        "-D",
                        &format!("--pidfile={}", pid.display()),
                    ],
                    &[],
                    &log(format!("tinc{i}.log")),
                )?;
            }
            (hosts, "blowfish (tinc 1.0 default)".to_string())
        }
        Peer::Yggdrasil => {
            let ygg = program("yggdrasil").ok_or("yggdrasil missing")?;
            let mut addrs = [IpAddr::V4(Ipv4Addr::UNSPECIFIED); 2];
            // The listener (site 1) first: if site 0's first dial is refused,
            // Yggdrasil backs off for many seconds.
            for i in [1, 0] {
                let mut cfg: serde_json::Value =
                    serde_json::from_str(&run(Command::new(&ygg).args(["-genconf", "-json"]))?)
                        .map_err(|e| format!("yggdrasil -genconf: {e}"))?;
                cfg["Listen"] = serde_json::json!([format!("tcp://{}:12345", site_v4(i))]);
                cfg["Peers"] = if i == 0 {
                    serde_json::json!([format!("tcp://{}:12345", site_v4(1))])
                } else {
                    serde_json::json!([])
                };
                cfg["AdminListen"] = "none".into();
                cfg["MulticastInterfaces"] = serde_json::json!([]);
                cfg["IfName"] = format!("ygg{i}").into();
                let path = dir.join(format!("ygg{i}.conf"));
                write(&path, &cfg.to_string())?;
                let addr = run(Command::new(&ygg)
                    .arg("-useconffile")
                    .arg(&path)
                    .arg("-address"))?;
                addrs[i] = addr
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|e| format!("yggdrasil address: {e}"))?;
                procs.spawn(
                    &ns(i),
                    &[&ygg, "-useconffile", &path.to_string_lossy()],
                    // Its TCP underlay queues without bound under a flood: have Go collect harder.
                    &[("GOMEMLIMIT", "1GiB")],
                    &log(format!("ygg{i}.log")),
                )?;
                if i == 1 {
                    wait_for("yggdrasil listener", Duration::from_secs(5), || {
                        in_ns(&ns(1), &["ss", "-ltnH", "sport = :12345"])
                            .is_ok_and(|o| !o.trim().is_empty())
                    })?;
                }
            }
            (
                endpoints(addrs[1]),
                "between tunnel endpoints (routes only its own 200::/7 addresses)".to_string(),
            )
        }
        Peer::Nebula => {
            let cert = program("nebula-cert").ok_or("nebula-cert missing")?;
            let nebula = program("nebula").ok_or("nebula missing")?;
            // Its own directory: the overlay's already holds on6's ca.key.
            let dir = dir.join("nebula");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            run(Command::new(&cert)
                .current_dir(&dir)
                .args(["ca", "-name", "on6 bench"]))?;
            for i in 0..2 {
                let name = format!("neb{i}");
                run(Command::new(&cert).current_dir(&dir).args([
                    "sign",
                    "-name",
                    &name,
                    "-ip",
                    &format!("192.168.77.{}/24", i + 1),
                    "-out-crt",
                    &format!("{name}.crt"),
                    "-out-key",
                    &format!("{name}.key"),
                ]))?;
                let cfg = format!(
                    "pki:\n  ca: {d}/ca.crt\n  cert: {d}/{name}.crt\n  key: {d}/{name}.key\n\
                     static_host_map:\n  \"192.168.77.{other}\": [\"{ep}\"]\n\
                     lighthouse:\n  am_lighthouse: false\n  hosts: []\n\
                     listen:\n  host: {me}\n  port: 4242\n\
                     punchy:\n  punch: false\n\
                     tun:\n  dev: {name}\n\
                     logging:\n  level: warning\n\
                     firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n  \
                     inbound:\n    - port: any\n      proto: any\n      host: any\n",
                    d = dir.display(),
                    other = 2 - i,
                    ep = endpoint(i, 4242, relayed),
                    me = site_v4(i),
                );
                let path = dir.join(format!("{name}.yml"));
                write(&path, &cfg)?;
                procs.spawn(
                    &ns(i),
                    &[&nebula, "-config", &path.to_string_lossy()],
                    &[],
                    &log(format!("{name}.log")),
                )?;
            }
            (
                endpoints(IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2))),
                "IPv4 tunnel between endpoints: Nebula 1.6 has no IPv6 overlay".to_string(),
            )
        }
        Peer::Openvpn => {
            let ovpn = program("openvpn").ok_or("openvpn missing")?;
            let key = dir.join("ovpn.key");
            run(Command::new(&ovpn).arg("--genkey").arg("secret").arg(&key))?;
            for i in 0..2 {
                let ep = endpoint(i, 1194, relayed);
                let cfg = format!(
                    "dev ovpn{i}\ndev-type tun\nproto udp\nlocal {me}\nlport 1194\nremote {} {}\nfloat\n\
                     secret {key}\ncipher AES-256-CBC\nauth SHA256\n\
                     ifconfig-ipv6 fd77:4::{}/64 fd77:4::{}\nroute-ipv6 {}\nverb 1\n",
                    ep.ip(),
                    ep.port(),
                    i + 1,
                    2 - i,
                    prefix(1 - i),
                    me = site_v4(i),
                    key = key.display(),
                );
                let path = dir.join(format!("ovpn{i}.conf"));
                write(&path, &cfg)?;
                procs.spawn(
                    &ns(i),
                    &[&ovpn, "--config", &path.to_string_lossy()],
                    &[],
                    &log(format!("ovpn{i}.log")),
                )?;
            }
            (
                hosts,
                "static key, AES-256-CBC + HMAC-SHA256 (p2p)".to_string(),
            )
        }
        Peer::Quincy => {
            let id = program("quincy-identity").ok_or("quincy-identity missing")?;
            let keypair = || -> Result<(String, String), String> {
                let private = run(Command::new(&id).args(["noise", "genkey"]))?
                    .trim()
                    .to_string();
                let public = run_with_input(Command::new(&id).args(["noise", "pubkey"]), &private)?;
                Ok((private, public))
            };
            let (server, client) = (keypair()?, keypair()?);
            write(
                &dir.join("quincy-users.toml"),
                &format!("[users.site0]\nauthorized_keys = [\"{}\"]\n", client.1),
            )?;
            let server_cfg = format!(
                "name = \"bench\"\ninterface_name = \"quincy1\"\nbind_address = \"{}\"\nbind_port = 55555\n\
                 tunnel_network = \"fd77:5::1/64\"\nusers_file = \"{}\"\n\n[protocol]\nmode = \"noise\"\n\
                 private_key = \"{}\"\n\n[log]\nlevel = \"warn\"\n",
                site_v4(1),
                dir.join("quincy-users.toml").display(),
                server.0,
            );
            let client_cfg = format!(
                "connection_string = \"{}\"\n\n[protocol]\nmode = \"noise\"\nserver_public_key = \"{}\"\n\
                 private_key = \"{}\"\n\n[network]\ninterface_name = \"quincy0\"\n\n[log]\nlevel = \"warn\"\n",
                endpoint(0, 55555, relayed),
                server.1,
                client.0,
            );
            write(&dir.join("quincy-server.toml"), &server_cfg)?;
            write(&dir.join("quincy-client.toml"), &client_cfg)?;
            let srv = program("quincy-server").ok_or("quincy-server missing")?;
            let cli = program("quincy-client").ok_or("quincy-client missing")?;
            procs.spawn(
                &ns(1),
                &[
                    &srv,
                    "--config-path",
                    &dir.join("quincy-server.toml").to_string_lossy(),
                ],
                &[],
                &log("quincy-server.log".into()),
            )?;
            std::thread::sleep(Duration::from_millis(300));
            procs.spawn(
                &ns(0),
                &[
                    &cli,
                    "--config-path",
                    &dir.join("quincy-client.toml").to_string_lossy(),
                ],
                &[],
                &log("quincy-client.log".into()),
            )?;
            (
                endpoints("fd77:5::1".parse().map_err(|e| format!("{e}"))?),
                "client to server tunnel address; defaults (Noise, Cubic)".to_string(),
            )
        }
        Peer::QuinnBare => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let exe = exe.to_string_lossy();
            let (cert, key) = (dir.join("quinn-bare.der"), dir.join("quinn-bare.key"));
            quinn_bare::make_cert(&cert, &key)?;
            // The server first, listening before the client dials.
            for i in [1, 0] {
                let argv = quinn_bare::Args::to_argv(
                    i == 1,
                    SocketAddr::from(endpoint(0, quinn_bare::PORT, relayed)),
                    &format!("qb{i}"),
                    &prefix(1 - i),
                    &cert.to_string_lossy(),
                    &key.to_string_lossy(),
                );
                let mut all: Vec<&str> = vec![&exe, "--quinn-bare"];
                all.extend(argv.iter().map(String::as_str));
                procs.spawn(&ns(i), &all, &[], &log(format!("qb{i}.log")))?;
                if i == 1 {
                    let sport = format!("sport = :{}", quinn_bare::PORT);
                    wait_for("quinn-bare listener", Duration::from_secs(5), || {
                        in_ns(&ns(1), &["ss", "-lunH", &sport]).is_ok_and(|o| !o.trim().is_empty())
                    })?;
                }
            }
            (
                hosts,
                "reference, not a peer: quinn 0.11 datagrams TUN to TUN, its defaults (Cubic)"
                    .to_string(),
            )
        }
    };
    // The tunnel is up once a ping crosses it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        procs.check(&logs)?;
        if ping(&target, 1, Duration::from_millis(10)).is_some() {
            break;
        }
        if Instant::now() > deadline {
            return Err("no ping through the tunnel after 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((target, note))
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
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

/// What one iperf3 run measured.
struct Measured {
    mbit_s: f64,
    bytes: f64,
    udp: Option<(f64, f64)>,
}

/// One iperf3 run to the target: TCP with congestion control `cc` and
/// `streams` streams, or (with `udp_rate`) UDP at that offered rate.
fn iperf(
    t: &Target,
    cc: &str,
    streams: u32,
    secs: u32,
    udp_rate: Option<&str>,
) -> Result<Measured, String> {
    let mut server = Procs::default();
    let log = std::env::temp_dir().join(format!("on6-bench-iperf3-{}.log", std::process::id()));
    server.spawn(
        &t.server_ns,
        &["iperf3", "-s", "-1", "-p", "5201"],
        &[],
        &log,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let dst = t.dst.to_string();
    // iperf3's client can wait forever on a control connection a tunnel lost: bound it.
    let limit = (secs + 20).to_string();
    let secs = secs.to_string();
    let streams = streams.to_string();
    let mut args = vec![
        "timeout", "-k", "2", &limit, "iperf3", "-c", &dst, "-p", "5201", "-t", &secs, "-P",
        &streams, "-J",
    ];
    match udp_rate {
        // 1200-byte datagrams fit every tunnel's MTU without fragmenting.
        Some(rate) => args.extend(["-u", "-b", rate, "-l", "1200"]),
        None => args.extend(["-C", cc]),
    }
    let out = in_ns(&t.client_ns, &args);
    drop(server);
    let server_said = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        format!(
            "(iperf3 server: {})",
            text.trim().lines().last().unwrap_or("-")
        )
    };
    let out = out.map_err(|e| format!("{} {}", e.lines().last().unwrap_or(""), server_said()))?;
    let json: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let end = &json["end"];
    let (sum, udp) = if udp_rate.is_some() {
        let s = &end["sum"];
        let udp = s["lost_percent"].as_f64().zip(s["jitter_ms"].as_f64());
        let received = if end["sum_received"].is_object() {
            &end["sum_received"]
        } else {
            s
        };
        (received, udp)
    } else {
        (&end["sum_received"], None)
    };
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) => Ok(Measured {
            mbit_s: bps / 1e6,
            bytes,
            udp,
        }),
        _ => Err(format!(
            "{} {}",
            json["error"].as_str().unwrap_or("no result"),
            server_said()
        )),
    }
}

/// Ping RTT (p50, p99) in ms from `count` echo requests, or None if none came back.
fn ping(t: &Target, count: u32, interval: Duration) -> Option<(f64, f64)> {
    let out = in_ns(
        &t.client_ns,
        &[
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            &t.dst.to_string(),
        ],
    )
    .ok()?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    if rtts.is_empty() {
        return None;
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| {
        rtts.get(((rtts.len() - 1) as f64 * q).round() as usize)
            .copied()
    };
    at(0.5).zip(at(0.99))
}

struct Plan {
    conds: Vec<Cond>,
    ccs: &'static [&'static str],
    streams: &'static [u32],
    secs: u32,
    pings: u32,
    udp_rate: &'static str,
}

fn plan(quick: bool) -> Plan {
    if quick {
        Plan {
            conds: vec![
                Cond::iid(0.0, 0),
                Cond {
                    burst: Some(4.0),
                    rate_mbit: Some(100),
                    ..Cond::iid(1.0, 20)
                },
            ],
            ccs: &["bbr"],
            streams: &[1],
            secs: 2,
            pings: 20,
            udp_rate: "100M",
        }
    } else {
        let mut conds = Vec::new();
        for delay in [0, 20] {
            for loss in [0.0, 0.1, 1.0, 5.0] {
                conds.push(Cond::iid(loss, delay));
            }
        }
        for loss in [1.0, 5.0] {
            conds.push(Cond {
                burst: Some(4.0),
                ..Cond::iid(loss, 0)
            });
        }
        conds.push(Cond {
            reorder_pct: 1.0,
            ..Cond::iid(0.0, 20)
        });
        for loss in [0.0, 1.0] {
            conds.push(Cond {
                rate_mbit: Some(100),
                ..Cond::iid(loss, 20)
            });
        }
        Plan {
            conds,
            ccs: &["bbr", "cubic"],
            streams: &[1, 4],
            secs: 3,
            pings: 100,
            udp_rate: "200M",
        }
    }
}

/// Measures every condition on one bed.
fn measure(peer: Peer, bed: &Bed, conds: &[Cond], plan: &Plan, rows: &mut Vec<Row>) {
    let pids = bed.pids();
    for (k, cond) in conds.iter().enumerate() {
        if let Some(relay) = &bed.relay {
            relay.set(cond.relay_config(k as u64 + 1));
        }
        // Without the relay, bursty loss falls back to random loss at the same mean rate.
        let substitute = bed.relay.is_none() && cond.burst.is_some();
        let nft = if substitute {
            cond.loss_pct
        } else {
            cond.nft_loss()
        };
        if let Err(e) = set_loss(&bed.ov, nft).and_then(|()| set_rate(&bed.ov, cond.rate_mbit)) {
            rows.push(Row::unmeasured(peer.name(), Some(cond), e));
            continue;
        }
        let mut note = bed.note.clone();
        if substitute {
            let why = format!("random nft loss instead of bursts: {}", peer.relay_excuse());
            note = if note.is_empty() {
                why
            } else {
                format!("{note}; {why}")
            };
        }
        let rtt = ping(&bed.target, plan.pings, Duration::from_millis(10));
        let mut runs: Vec<(String, u32, Option<&str>)> = Vec::new();
        for cc in plan.ccs {
            for &n in plan.streams {
                runs.push((cc.to_string(), n, None));
            }
        }
        runs.push((format!("udp {}", plan.udp_rate), 1, Some(plan.udp_rate)));
        for (cc, n, udp) in runs {
            let before: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
            let result = iperf(&bed.target, &cc, n, plan.secs, udp);
            let after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
            let mut row = Row {
                congestion: cc.clone(),
                streams: n,
                rtt_p50_ms: rtt.map(|r| r.0),
                rtt_p99_ms: rtt.map(|r| r.1),
                note: note.clone(),
                ..Row::unmeasured(peer.name(), Some(cond), "")
            };
            match result {
                Ok(m) => {
                    row.mbit_s = Some(m.mbit_s);
                    row.udp_loss_pct = m.udp.map(|u| u.0);
                    row.udp_jitter_ms = m.udp.map(|u| u.1);
                    let cpu_s = after.saturating_sub(before) as f64 / 100.0;
                    row.cpu_s_per_gb =
                        (!pids.is_empty() && m.bytes > 0.0).then(|| cpu_s / (m.bytes / 1e9));
                }
                Err(e) => {
                    row.note = if note.is_empty() {
                        e
                    } else {
                        format!("{note}; {e}")
                    }
                }
            }
            row.peak_rss_mib = pids
                .iter()
                .map(|p| peak_rss_kib(*p))
                .max()
                .filter(|_| !pids.is_empty())
                .map(|k| k as f64 / 1024.0);
            eprintln!(
                "{:<18} {:<60} {cc:<10} x{n}: {:?} Mbit/s",
                peer.name(),
                cond.label(),
                row.mbit_s.map(f64::round)
            );
            rows.push(row);
        }
        // THROUGHPUT_STATUS=1: each on6 site's `on6 status` after the condition.
        if peer == Peer::On6 && std::env::var_os("THROUGHPUT_STATUS").is_some() {
            for site in &bed.ov.sites {
                match on6::status::fetch(&site.admin_socket)
                    .map_err(|e| e.to_string())
                    .and_then(|t| on6::status::render(&t).map_err(|e| e.to_string()))
                {
                    Ok(s) => eprintln!("{}:\n{s}", site.name),
                    Err(e) => eprintln!("{}: no status: {e}", site.name),
                }
            }
        }
    }
}

/// Runs every condition for one peer: direct ones on one bed, relayed ones on another.
fn bench_peer(peer: Peer, plan: &Plan, rows: &mut Vec<Row>) {
    let relayable = peer.relay_port().is_some();
    let (relayed, direct): (Vec<Cond>, Vec<Cond>) = plan
        .conds
        .iter()
        .partition(|c| c.needs_relay() && (relayable || c.delay_ms > 0 || c.reorder_pct > 0.0));
    for (conds, via_relay) in [(direct, false), (relayed, true)] {
        if conds.is_empty() {
            continue;
        }
        if via_relay && !relayable {
            for c in &conds {
                rows.push(Row::unmeasured(
                    peer.name(),
                    Some(c),
                    format!(
                        "not run: delay and reordering need the UDP relay; {}",
                        peer.relay_excuse()
                    ),
                ));
            }
            continue;
        }
        match Bed::new(peer, via_relay) {
            Ok(bed) => measure(peer, &bed, &conds, plan, rows),
            Err(e) => {
                eprintln!("{}: {e}", peer.name());
                for c in &conds {
                    rows.push(Row::unmeasured(
                        peer.name(),
                        Some(c),
                        format!("failed to start: {e}"),
                    ));
                }
            }
        }
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "| peer | loss % | +RTT ms | impairment | inner CC | streams | Mbit/s | UDP loss % | UDP jitter ms | RTT p50 ms | RTT p99 ms | CPU s/GB | peak RSS MiB | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.peer,
            r.loss_pct,
            r.delay_ms,
            r.impairment,
            r.congestion,
            r.streams,
            f(r.mbit_s, 0),
            f(r.udp_loss_pct, 2),
            f(r.udp_jitter_ms, 3),
            f(r.rtt_p50_ms, 3),
            f(r.rtt_p99_ms, 3),
            f(r.cpu_s_per_gb, 2),
            f(r.peak_rss_mib, 1),
            r.note.replace('|', "/")
        ));
    }
    md
}

/// Goodput against random loss (no added delay, inner BBR, one stream) for every peer.
fn chart(rows: &[Row], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    const FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "registering the chart font failed".to_string())?;
    let pick = |r: &&Row| {
        r.delay_ms == 0
            && r.congestion == "bbr"
            && r.streams == 1
            && r.mbit_s.is_some()
            && r.rate_mbit.is_none()
            && !r.impairment.contains("GE")
    };
    let mut losses: Vec<f64> = rows.iter().filter(pick).map(|r| r.loss_pct).collect();
    losses.sort_by(f64::total_cmp);
    losses.dedup();
    if losses.is_empty() {
        return Err("no measurements to chart".into());
    }
    let top = rows
        .iter()
        .filter(pick)
        .filter_map(|r| r.mbit_s)
        .fold(1.0, f64::max)
        * 1.1;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(
            "Goodput against random loss (iperf3 TCP, inner BBR, 1 stream)",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3f64..(losses.len() as f64 - 0.7), 0f64..top)
        .map_err(|e| err(&e))?;
    // Loss levels are evenly spaced categories: 0 has no place on a log axis.
    let label_losses = losses.clone();
    c.configure_mesh()
        .x_labels(losses.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            label_losses
                .get(i as usize)
                .map_or(String::new(), |l| format!("{l} %"))
        })
        .x_desc("loss per packet")
        .y_desc("Mbit/s")
        .draw()
        .map_err(|e| err(&e))?;
    for (k, peer) in PEERS.iter().enumerate() {
        let points: Vec<(f64, f64)> = losses
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                rows.iter()
                    .filter(pick)
                    .find(|r| r.peer == peer.name() && r.loss_pct == *l)
                    .and_then(|r| r.mbit_s)
                    .map(|m| (i as f64, m))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = Palette99::pick(k).to_rgba();
        c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(peer.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        c.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The bench runs itself as the reference tunnel in each site's namespace.
    if let Some(at) = args.iter().position(|a| a == "--quinn-bare") {
        if let Err(e) = quinn_bare::Args::parse(&args[at + 1..]).and_then(quinn_bare::run) {
            eprintln!("quinn-bare: {e}");
            std::process::exit(1);
        }
        return;
    }
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    if !netns::is_root() {
        eprintln!("SKIPPED throughput bench: needs root for network namespaces");
        return;
    }
    for (tool, pkg) in [
        ("iperf3", "iperf3"),
        ("nft", "nftables"),
        ("ethtool", "ethtool"),
        ("ping", "iputils-ping"),
    ] {
        assert!(
            ensure(tool, pkg),
            "{tool} is required and could not be installed"
        );
    }
    let mut setup_note = String::new();
    if quick {
        // CI: no cargo install here (minutes); peers missing are reported, not skipped.
        let _ = ensure("wireguard-go", "wireguard-go") && ensure("wg", "wireguard-tools");
    } else {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-peers.sh");
        match Command::new(&script).status() {
            Ok(s) if s.success() => {}
            other => setup_note = format!("scripts/bench-peers.sh failed ({other:?}); "),
        }
    }
    let mut plan = plan(quick);
    // THROUGHPUT_CONDS=relay keeps only conditions whose label, after
    // "loss=<pct>% ", contains the text ("loss=5% nft" picks one condition).
    if let Ok(only) = std::env::var("THROUGHPUT_CONDS") {
        plan.conds
            .retain(|c| format!("loss={}% {}", c.loss_pct, c.label()).contains(&only));
    }
    // THROUGHPUT_SECS=8 runs each iperf3 for that long: less noise, for A/B runs.
    if let Some(s) = std::env::var("THROUGHPUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        plan.secs = s;
    }
    // THROUGHPUT_PEERS=on6,boringtun runs only those peers.
    let only_peers = std::env::var("THROUGHPUT_PEERS").ok();
    let mut rows = Vec::new();
    let started = Instant::now();
    for peer in PEERS {
        if only_peers
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|p| p == peer.name()))
        {
            continue;
        }
        let missing: Vec<&str> = peer
            .programs()
            .iter()
            .copied()
            .filter(|p| !have(p))
            .collect();
        if !missing.is_empty() {
            rows.push(Row::unmeasured(
                peer.name(),
                None,
                format!(
                    "{setup_note}not installed ({}): run scripts/bench-peers.sh",
                    missing.join(", ")
                ),
            ));
            continue;
        }
        bench_peer(peer, &plan, &mut rows);
    }

    let md = markdown(&rows);
    println!(
        "\nThroughput through the underlay (single machine, {} mode, {:.0} s)\n\n{md}",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
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
    let png = dir.join(format!("{stem}.png"));
    match chart(&rows, &png) {
        Ok(()) => println!("chart: {}", png.display()),
        Err(e) => eprintln!("chart not drawn: {e}"),
    }
    let measured = rows.iter().filter(|r| r.mbit_s.is_some()).count();
    assert!(
        rows.iter()
            .any(|r| r.peer == "on6" && r.mbit_s.is_some_and(|m| m > 0.0)),
        "on6 carried no traffic"
    );
    assert!(measured >= 4, "too few measurements succeeded");
}
