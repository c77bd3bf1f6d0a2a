//! `on6 demo`: a fresh CA, N sites in network namespaces, real traffic
//! between every pair of sites (ICMPv6 echo, a TCP transfer checked by
//! SHA-256), and a summary. Everything is removed on exit or Ctrl-C.

pub mod overlay;

use crate::netns::{self, PingOpts, PingOutcome};
use overlay::{Overlay, OverlayOptions};
use std::net::SocketAddrV6;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Number of sites.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=20))]
    pub sites: u8,
    /// Stay up after the traffic, print every host namespace, wait for Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Bytes per TCP transfer.
    #[arg(long, default_value_t = 20_000_000)]
    pub bytes: u64,
    /// Echo requests per pair.
    #[arg(long, default_value_t = 5)]
    pub pings: u32,
    /// Run one site's gateway as a remote slave behind a NAT (1-based site number).
    #[arg(long)]
    pub remote_gateway: Option<usize>,
    /// Expose every site's /metrics to this machine's root namespace and print
    /// a Prometheus scrape config for them (use with --keep).
    #[arg(long)]
    pub metrics: bool,
    /// Let sites find each other through DHT slaves (libp2p Kademlia) instead of static tunnels.
    #[arg(long)]
    pub dht: bool,
    /// With --dht: resolve with the paper's bit-clearing walk instead of the fast mode.
    #[arg(long, requires = "dht")]
    pub reference: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub struct PairResult {
    pub from: String,
    pub to: String,
    pub pings_sent: u32,
    pub pings_received: u32,
    pub rtt_avg_ms: Option<f64>,
    pub tcp: Result<(f64, bool, bool), String>,
}

/// Pings and a checksummed TCP transfer from site `a`'s host to site `b`'s host.
pub fn measure_pair(ov: &Overlay, a: usize, b: usize, pings: u32, bytes: u64) -> PairResult {
    let (sa, sb) = (&ov.sites[a], &ov.sites[b]);
    let dst = sb.host_addr;
    let stats = netns::in_netns(sa.host_ns.name(), move || {
        netns::ping_many(dst, pings, Duration::from_millis(100), PingOpts::default())
    });
    let (received, avg) = match &stats {
        Ok(s) => (s.received, s.avg().map(|d| d.as_secs_f64() * 1000.0)),
        Err(_) => (0, None),
    };
    let tcp = (|| -> Result<(f64, bool, bool), String> {
        let sink = netns::spawn_sink(
            sb.host_ns.name(),
            SocketAddrV6::new(dst, 5001, 0, 0),
            Duration::from_secs(60),
        )
        .map_err(|e| e.to_string())?;
        let target = sink.local_addr();
        let sent = netns::in_netns(sa.host_ns.name(), move || {
            netns::tcp_send(target, bytes, 7, Duration::from_secs(60))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let got = sink.join().map_err(|e| e.to_string())?;
        let intact = got.bytes == bytes && got.sha256 == sent.sha256;
        let own_source = got.peer.ip() == std::net::IpAddr::V6(sa.host_addr);
        Ok((
            netns::mbit_per_s(got.bytes, got.elapsed),
            intact,
            own_source,
        ))
    })();
    PairResult {
        from: sa.name.clone(),
        to: sb.name.clone(),
        pings_sent: pings,
        pings_received: received,
        rtt_avg_ms: avg,
        tcp,
    }
}

/// TCP between two sites' namespaces over the bare underlay: the native ceiling.
pub fn native_baseline(ov: &Overlay, a: usize, b: usize, bytes: u64) -> Result<f64, String> {
    let dst = overlay::underlay_v6(b);
    let sink = netns::spawn_sink(
        ov.sites[b].site_ns.name(),
        SocketAddrV6::new(dst, 5002, 0, 0),
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())?;
    let target = sink.local_addr();
    netns::in_netns(ov.sites[a].site_ns.name(), move || {
        netns::tcp_send(target, bytes, 9, Duration::from_secs(60))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let got = sink.join().map_err(|e| e.to_string())?;
    Ok(netns::mbit_per_s(got.bytes, got.elapsed))
}

pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    if !netns::is_root() {
        anyhow::bail!("on6 demo builds network namespaces and TUN devices: run it as root");
    }
    catch_signals();
    let bin = std::env::current_exe()?;
    let mut opts = OverlayOptions::new(args.sites as usize, bin);
    if let Some(r) = args.remote_gateway {
        if r == 0 || r > args.sites as usize {
            anyhow::bail!(
                "--remote-gateway {r}: sites are numbered 1 to {}",
                args.sites
            );
        }
        opts.remote_gateways.push(r - 1);
    }
    opts.log = "warn".into();
    opts.expose_metrics = args.metrics;
    if args.dht {
        opts.routing = overlay::Routing::Dht {
            reference: args.reference,
        };
    }
    println!(
        "building {} sites in network namespaces (fresh CA, one host behind each gateway)...",
        args.sites
    );
    let started = std::time::Instant::now();
    let mut ov = Overlay::build(&opts)?;
    println!(
        "overlay up in {:.1} s; working directory {}\n",
        started.elapsed().as_secs_f64(),
        ov.dir.display()
    );
    for s in &ov.sites {
        println!(
            "  {:<8} prefix {:<16} host {:<22} underlay {}:{}{}",
            s.name,
            s.prefix.to_string(),
            s.host_addr.to_string(),
            s.underlay,
            overlay::TUNNEL_PORT,
            if s.gateway_ns.is_some() {
                "  (gateway: remote slave behind NAT)"
            } else {
                ""
            }
        );
    }
    println!();

    if args.metrics {
        let scrape = overlay::scrape_config(&ov.sites, "5s");
        let path = ov.dir.join("prometheus.yml");
        std::fs::write(&path, &scrape)?;
        println!("every site's metrics are reachable from this namespace; Prometheus scrape config ({}):\n\n{scrape}", path.display());
        println!(
            "  prometheus --config.file={}   # then load grafana/ dashboards\n",
            path.display()
        );
    }

    let mut results = Vec::new();
    let n = ov.sites.len();
    'pairs: for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            if interrupted() {
                break 'pairs;
            }
            // TCP both ways would double the run time; ping every ordered pair, transfer once per pair.
            let bytes = if a < b { args.bytes } else { 0 };
            let r = measure_pair(&ov, a, b, args.pings, bytes.max(1));
            results.push((r, a < b));
        }
    }
    println!(
        "{:<8} -> {:<8} {:>9} {:>10} {:>12} {:>9} {:>12}",
        "from", "to", "echo", "rtt avg", "TCP Mbit/s", "intact", "own source"
    );
    let mut failures = 0;
    for (r, with_tcp) in &results {
        let echo = format!("{}/{}", r.pings_received, r.pings_sent);
        let rtt = r.rtt_avg_ms.map_or("-".into(), |v| format!("{v:.2} ms"));
        let (tput, intact, src) = match (&r.tcp, with_tcp) {
            (Ok((mbps, intact, own)), true) => (
                format!("{mbps:.0}"),
                if *intact { "yes" } else { "NO" },
                if *own { "yes" } else { "NO" },
            ),
            (Ok((_, intact, own)), false) => (
                "-".into(),
                if *intact { "yes" } else { "NO" },
                if *own { "yes" } else { "NO" },
            ),
            (Err(_), _) => ("FAILED".into(), "NO", "-"),
        };
        if r.pings_received == 0 || !matches!(&r.tcp, Ok((_, true, true))) {
            failures += 1;
        }
        println!(
            "{:<8} -> {:<8} {:>9} {:>10} {:>12} {:>9} {:>12}",
            r.from, r.to, echo, rtt, tput, intact, src
        );
        if let Err(e) = &r.tcp {
            println!("           TCP error: {e}");
        }
    }
    let pairs = results.len();
    if !interrupted() {
        match native_baseline(&ov, 0, 1, args.bytes.max(1)) {
            Ok(mbps) => println!(
                "\nnative underlay, same machine, no tunnel ({} -> {}): {mbps:.0} Mbit/s",
                ov.sites[0].name, ov.sites[1].name
            ),
            Err(e) => println!("\nnative underlay baseline failed: {e}"),
        }
    }
    println!(
        "\n{} of {pairs} site pairs reachable with intact TCP data",
        pairs - failures
    );
    let router = ov.sites[0].router;
    if let Ok(Ok(PingOutcome::Reply { rtt, .. })) =
        netns::in_netns(ov.sites[0].host_ns.name(), move || {
            netns::ping6(router, PingOpts::default())
        })
    {
        println!(
            "site-1's master answers ICMPv6 echo at {router} in {:.2} ms",
            rtt.as_secs_f64() * 1000.0
        );
    }

    if args.keep && !interrupted() {
        ov.keep_dir();
        println!("\nthe overlay stays up until Ctrl-C. Run your own programs between sites, for example:");
        for s in &ov.sites {
            println!(
                "  ip netns exec {:<22} # {} host {}",
                s.host_ns.name(),
                s.name,
                s.host_addr
            );
        }
        if let (Some(a), Some(b)) = (ov.sites.first(), ov.sites.get(1)) {
            println!(
                "\n  ip netns exec {} ping -6 {}",
                a.host_ns.name(),
                b.host_addr
            );
            println!(
                "  ip netns exec {} on6 status --socket {}",
                a.site_ns.name(),
                a.admin_socket.display()
            );
        }
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\nCtrl-C: removing every namespace and process");
    }
    drop(ov);
    println!("cleaned up");
    if failures > 0 {
        anyhow::bail!("{failures} of {pairs} pairs failed");
    }
    Ok(())
}
