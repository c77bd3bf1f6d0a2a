//! `on6 status`: a running site answers on a Unix socket with a JSON view of
//! itself (identity, uptime, slaves and prefixes, routes, peers, counters);
//! the CLI renders it for people or passes the JSON through for scripts.

use crate::master::driver::{MasterHandle, MasterSnapshot};
use crate::master::remote::RemoteStats;
use crate::pki::NodeIdentity;
use crate::slave::dht::{DhtShared, DhtStatus};
use crate::slave::gateway::GatewayStats;
use crate::slave::link::LossCounters;
use crate::slave::tunnel::{PeerStatus, TunnelShared};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

pub struct SiteView {
    pub name: String,
    pub identity: NodeIdentity,
    pub started: Instant,
    /// `None` in a slave's own process.
    pub master: Option<MasterHandle>,
    pub remote: Arc<RemoteStats>,
    pub gateways: Vec<(String, Arc<GatewayStats>)>,
    pub tunnels: Vec<(String, Arc<TunnelShared>)>,
    pub dhts: Vec<(String, Arc<DhtShared>)>,
}

#[derive(Serialize)]
struct SiteStatusOut<'a> {
    site: &'a str,
    identity: &'a NodeIdentity,
    uptime_seconds: f64,
    master: Option<MasterSnapshot>,
    remote: &'a RemoteStats,
    gateways: Vec<(&'a str, &'a GatewayStats)>,
    tunnels: Vec<(&'a str, Vec<PeerStatus>)>,
    dhts: Vec<(&'a str, DhtView<'a>)>,
}

#[derive(Serialize)]
struct DhtView<'a> {
    status: DhtStatus,
    tx_packets: u64,
    rx_packets: u64,
    spoofed: u64,
    malformed: u64,
    send_queue_full: u64,
    not_mine_sent: u64,
    not_mine_received: u64,
    unreachable: u64,
    #[serde(flatten)]
    loss: &'a LossCounters,
}

impl<'a> DhtView<'a> {
    fn of(d: &'a DhtShared) -> Self {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        DhtView {
            status: d.status.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            tx_packets: l(&d.tx_packets),
            rx_packets: l(&d.rx_packets),
            spoofed: l(&d.spoofed),
            malformed: l(&d.malformed),
            send_queue_full: l(&d.send_queue_full),
            not_mine_sent: l(&d.not_mine_sent),
            not_mine_received: l(&d.not_mine_received),
            unreachable: l(&d.unreachable),
            loss: &d.loss,
        }
    }
}

/// The status JSON as a client reads it back.
#[derive(Debug, Deserialize)]
pub struct SiteStatus {
    pub site: String,
    pub identity: serde_json::Value,
    pub uptime_seconds: f64,
    pub master: serde_json::Value,
    pub remote: serde_json::Value,
    pub gateways: Vec<(String, serde_json::Value)>,
    pub tunnels: Vec<(String, Vec<serde_json::Value>)>,
    #[serde(default)]
    pub dhts: Vec<(String, serde_json::Value)>,
}

impl SiteView {
    pub async fn to_json(&self) -> Option<String> {
        let master = self.master.as_ref().map(MasterHandle::snapshot);
        let out = SiteStatusOut {
            site: &self.name,
            identity: &self.identity,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            master,
            remote: &self.remote,
            gateways: self
                .gateways
                .iter()
                .map(|(n, s)| (n.as_str(), &**s))
                .collect(),
            tunnels: self
                .tunnels
                .iter()
                .map(|(n, t)| (n.as_str(), t.status()))
                .collect(),
            dhts: self
                .dhts
                .iter()
                .map(|(n, d)| (n.as_str(), DhtView::of(d)))
                .collect(),
        };
        serde_json::to_string_pretty(&out).ok()
    }
}

pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path)
}

pub async fn serve(listener: tokio::net::UnixListener, view: Arc<SiteView>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let view = view.clone();
        tokio::spawn(async move {
            if let Some(json) = view.to_json().await {
                let _ = stream.write_all(json.as_bytes()).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads a site's status over its admin socket (blocking; for the CLI and tests).
pub fn fetch(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn get<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// A readable rendering of the status JSON.
pub fn render(json: &str) -> Result<String, serde_json::Error> {
    let s: SiteStatus = serde_json::from_str(json)?;
    let mut o = String::new();
    let id = &s.identity;
    let _ = writeln!(
        o,
        "site {}  (certificate {} role {}, serial {})",
        s.site,
        id["name"].as_str().unwrap_or("?"),
        id["role"].as_str().unwrap_or("?"),
        id["serial"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "uptime {:.0} s   router address {}",
        s.uptime_seconds,
        s.master["router"].as_str().unwrap_or("?")
    );
    let _ = writeln!(o, "\nslaves:");
    let empty = vec![];
    for sl in s.master["slaves"].as_array().unwrap_or(&empty) {
        let prefixes: Vec<String> = sl["prefixes"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|p| p.as_str().map(String::from))
            .collect();
        let _ =
            writeln!(
            o,
            "  #{:<3} {:<10} {:<20} {:<7} mtu {:<5} in {} pkts / {} B, out {} pkts / {} B  [{}]",
            sl["id"],
            sl["kind"].as_str().unwrap_or("-"),
            sl["name"].as_str().unwrap_or("?"),
            if sl["session"]["remote"].as_bool() == Some(true) { "remote" } else { "local" },
            sl["mtu"],
            get(sl, &["stats", "rx_packets"]),
            get(sl, &["stats", "rx_bytes"]),
            get(sl, &["stats", "tx_packets"]),
            get(sl, &["stats", "tx_bytes"]),
            prefixes.join(", ")
        );
    }
    let _ = writeln!(o, "\nroutes:");
    for r in s.master["routes"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            o,
            "  {:<28} -> slave #{}",
            r[0].as_str().unwrap_or("?"),
            r[1]
        );
    }
    for (name, peers) in &s.tunnels {
        let _ = writeln!(o, "\npeers of {name}:");
        for p in peers {
            let rtt = p["rtt_ms"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{r:.2} ms"));
            let _ = writeln!(
                o,
                "  {:<16} {:<5} rtt {:<10} window {:<10} conns {} lost {:<6} tx {} pkts, rx {} pkts, spoofed {}, malformed {}, send queue full {}",
                p["name"].as_str().unwrap_or("?"),
                if p["connected"].as_bool() == Some(true) { "up" } else { "DOWN" },
                rtt,
                p["window_bytes"]
                    .as_u64()
                    .map_or("-".to_string(), |w| format!("{} KiB", w / 1024)),
                p["connections"],
                p["lost_packets"],
                get(p, &["stats", "tx_packets"]),
                get(p, &["stats", "rx_packets"]),
                get(p, &["stats", "spoofed"]),
                get(p, &["stats", "malformed"]),
                get(p, &["stats", "send_queue_full"]),
            );
            let _ = writeln!(
                o,
                "  {:<16} loss hiding: {} holes, {} recovered, {} lost, {} came twice or too late; {} resent for it, {} asked too late",
                "",
                get(p, &["stats", "arq_holes"]),
                get(p, &["stats", "arq_recovered"]),
                get(p, &["stats", "arq_lost"]),
                get(p, &["stats", "arq_duplicates"]),
                get(p, &["stats", "arq_resent"]),
                get(p, &["stats", "arq_expired"]),
            );
            let _ = writeln!(
                o,
                "  {:<16} in order: {} TCP packets held, {} holes passed over, playout started {} times",
                "",
                get(p, &["stats", "hold_held"]),
                get(p, &["stats", "hold_passed_over"]),
                get(p, &["stats", "hold_playouts"]),
            );
        }
    }
    for (name, d) in &s.dhts {
        let st = &d["status"];
        let _ = writeln!(
            o,
            "\nDHT {name}: {} peers, {} records held, serving {}",
            st["p2p"]["peers"], st["p2p"]["records_held"], st["served"]
        );
        let r = &st["resolver"];
        let _ = writeln!(
            o,
            "  lookups: {} found, {} not found ({} with a get timed out), {} cached hits, {} cached misses, {} gets, {} queue drops; tunnel tx {} rx {} pkts, not-mine sent {} received {}",
            r["hits"], r["misses"], r["inconclusive_misses"], r["cached_hits"], r["cached_misses"], r["gets_issued"], r["queue_drops"],
            d["tx_packets"], d["rx_packets"], d["not_mine_sent"], d["not_mine_received"]
        );
        let _ = writeln!(
            o,
            "  loss hiding: {} holes, {} recovered, {} lost, {} came twice or too late; {} resent, {} asked too late; {} TCP packets held in order, {} holes passed over, playout started {} times",
            d["arq_holes"], d["arq_recovered"], d["arq_lost"], d["arq_duplicates"], d["arq_resent"], d["arq_expired"], d["hold_held"], d["hold_passed_over"], d["hold_playouts"]
        );
    }
    let _ = writeln!(o, "\ncounters:");
    if let Some(drops) = s.master["stats"]["drops"].as_object() {
        for (k, v) in drops {
            let _ = writeln!(o, "  dropped {k:<18} {v}");
        }
    }
    let _ = writeln!(o, "  icmp sent          {}", s.master["stats"]["icmp_sent"]);
    for (k, v) in s.remote.as_object().into_iter().flatten() {
        let _ = writeln!(o, "  remote {k:<18} {v}");
    }
    for (name, g) in &s.gateways {
        let _ = writeln!(
            o,
            "  gateway {name}: tun in {} pkts in {} reads, tun out {} pkts in {} writes, link-local {}",
            g["tun_rx_packets"],
            g["tun_rx_batches"],
            g["tun_tx_packets"],
            g["tun_tx_batches"],
            g["link_local"]
        );
    }
    Ok(o)
}
