//! Prometheus exposition. Core types only keep stats; this module alone knows
//! Prometheus: each scrape turns a consistent snapshot into samples in a fresh
//! registry. Labels are bounded: slave and peer names from config or
//! certificates, kinds, directions and drop reasons, never addresses.

use crate::master::driver::MasterSnapshot;
use crate::master::DropReason;
use crate::status::SiteView;
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn counter(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Renders the site's metrics in the Prometheus text format.
pub async fn render(view: &SiteView, start_time: f64) -> Option<String> {
    let snap = match &view.master {
        Some(m) => Some(m.snapshot().await.ok()?),
        None => None,
    };
    let reg = Registry::new();
    build(&reg, view, snap.as_ref(), start_time).ok()?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut out).ok()?;
    String::from_utf8(out).ok()
}

fn build(
    reg: &Registry,
    view: &SiteView,
    snap: Option<&MasterSnapshot>,
    start_time: f64,
) -> prometheus::Result<()> {
    let info = gauge(
        reg,
        "on6_build_info",
        "Build information; always 1.",
        &["version", "site"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), &view.name])
        .set(1);
    let start = Gauge::with_opts(Opts::new(
        "on6_process_start_time_seconds",
        "Start time of the process since the Unix epoch.",
    ))?;
    start.set(start_time);
    reg.register(Box::new(start))?;

    if let Some(snap) = snap {
        master_metrics(reg, view, snap)?;
    }
    let handshakes = counter(
        reg,
        "on6_quic_handshakes_total",
        "QUIC handshakes by listener and result.",
        &["listener", "result"],
    )?;
    handshakes
        .with_label_values(&["master", "ok"])
        .inc_by(view.remote.handshakes_ok.load(Ordering::Relaxed));
    handshakes
        .with_label_values(&["master", "failed"])
        .inc_by(view.remote.handshakes_failed.load(Ordering::Relaxed));
    let refused = counter(
        reg,
        "on6_refused_peers_total",
        "Authenticated peers refused (wrong role, name or prefixes).",
        &["listener"],
    )?;
    refused
        .with_label_values(&["master"])
        .inc_by(view.remote.refused_peers.load(Ordering::Relaxed));

    let up = gauge(
        reg,
        "on6_peer_up",
        "Whether a tunnel connection to the peer site is up.",
        &["peer"],
    )?;
    let rtt = GaugeVec::new(
        Opts::new(
            "on6_peer_rtt_seconds",
            "Smoothed QUIC RTT to the peer site.",
        ),
        &["peer"],
    )?;
    reg.register(Box::new(rtt.clone()))?;
    let lost = counter(
        reg,
        "on6_peer_lost_packets_total",
        "QUIC packets declared lost on the current connection to the peer.",
        &["peer"],
    )?;
    let ppk = counter(
        reg,
        "on6_peer_packets_total",
        "IPv6 packets through the tunnel, by peer site and direction.",
        &["peer", "direction"],
    )?;
    let pby = counter(
        reg,
        "on6_peer_bytes_total",
        "IPv6 bytes through the tunnel, by peer site and direction.",
        &["peer", "direction"],
    )?;
    let pdrop = counter(
        reg,
        "on6_peer_dropped_total",
        "Datagrams from a peer site dropped, by reason.",
        &["peer", "reason"],
    )?;
    let connects = counter(
        reg,
        "on6_peer_connections_total",
        "Tunnel connections established to the peer site.",
        &["peer"],
    )?;
    for (_, t) in &view.tunnels {
        handshakes
            .with_label_values(&["tunnel", "failed"])
            .inc_by(t.handshakes_failed.load(Ordering::Relaxed));
        refused
            .with_label_values(&["tunnel"])
            .inc_by(t.refused_peers.load(Ordering::Relaxed));
        for p in t.status() {
            let n = p.name.as_str();
            up.with_label_values(&[n]).set(p.connected as i64);
            if let Some(ms) = p.rtt_ms {
                rtt.with_label_values(&[n]).set(ms / 1000.0);
            }
            lost.with_label_values(&[n]).inc_by(p.lost_packets);
            let s = &p.stats;
            ppk.with_label_values(&[n, "in"])
                .inc_by(s.rx_packets.load(Ordering::Relaxed));
            ppk.with_label_values(&[n, "out"])
                .inc_by(s.tx_packets.load(Ordering::Relaxed));
            pby.with_label_values(&[n, "in"])
                .inc_by(s.rx_bytes.load(Ordering::Relaxed));
            pby.with_label_values(&[n, "out"])
                .inc_by(s.tx_bytes.load(Ordering::Relaxed));
            pdrop
                .with_label_values(&[n, "spoofed_source"])
                .inc_by(s.spoofed.load(Ordering::Relaxed));
            pdrop
                .with_label_values(&[n, "malformed"])
                .inc_by(s.malformed.load(Ordering::Relaxed));
            connects
                .with_label_values(&[n])
                .inc_by(s.connects.load(Ordering::Relaxed));
            handshakes
                .with_label_values(&["tunnel", "ok"])
                .inc_by(s.connects.load(Ordering::Relaxed));
        }
    }

    let tun_p = counter(
        reg,
        "on6_tun_packets_total",
        "Packets through the gateway TUN device; in = from the site.",
        &["gateway", "direction"],
    )?;
    let tun_b = counter(
        reg,
        "on6_tun_bytes_total",
        "Bytes through the gateway TUN device; in = from the site.",
        &["gateway", "direction"],
    )?;
    let tun_l = counter(
        reg,
        "on6_tun_link_local_total",
        "Link-scoped packets from the TUN kept in the site.",
        &["gateway"],
    )?;
    for (name, g) in &view.gateways {
        tun_p
            .with_label_values(&[name, "in"])
            .inc_by(g.tun_rx_packets.load(Ordering::Relaxed));
        tun_p
            .with_label_values(&[name, "out"])
            .inc_by(g.tun_tx_packets.load(Ordering::Relaxed));
        tun_b
            .with_label_values(&[name, "in"])
            .inc_by(g.tun_rx_bytes.load(Ordering::Relaxed));
        tun_b
            .with_label_values(&[name, "out"])
            .inc_by(g.tun_tx_bytes.load(Ordering::Relaxed));
        tun_l
            .with_label_values(&[name])
            .inc_by(g.link_local.load(Ordering::Relaxed));
    }
    Ok(())
}

fn master_metrics(
    reg: &Registry,
    view: &SiteView,
    snap: &MasterSnapshot,
) -> prometheus::Result<()> {
    let packets = counter(
        reg,
        "on6_slave_packets_total",
        "Packets between the master and each slave; in = from the slave.",
        &["slave", "kind", "direction"],
    )?;
    let bytes = counter(
        reg,
        "on6_slave_bytes_total",
        "Bytes between the master and each slave; in = from the slave.",
        &["slave", "kind", "direction"],
    )?;
    let sessions = gauge(
        reg,
        "on6_slave_sessions",
        "Slave sessions up, by kind and attachment.",
        &["kind", "attach"],
    )?;
    let routes = gauge(
        reg,
        "on6_routes",
        "Routes installed in the master, by slave kind.",
        &["kind"],
    )?;
    for s in &snap.slaves {
        let kind = s.kind.map_or("unannounced", |k| k.as_str());
        let attach = if s.session.remote {
            "remote"
        } else {
            "in_process"
        };
        sessions.with_label_values(&[kind, attach]).inc();
        routes
            .with_label_values(&[kind])
            .add(s.prefixes.len() as i64);
        packets
            .with_label_values(&[&s.name, kind, "in"])
            .inc_by(s.stats.rx_packets);
        packets
            .with_label_values(&[&s.name, kind, "out"])
            .inc_by(s.stats.tx_packets);
        bytes
            .with_label_values(&[&s.name, kind, "in"])
            .inc_by(s.stats.rx_bytes);
        bytes
            .with_label_values(&[&s.name, kind, "out"])
            .inc_by(s.stats.tx_bytes);
    }
    let drops = counter(
        reg,
        "on6_drops_total",
        "Packets dropped or refused by the master, by reason.",
        &["reason"],
    )?;
    for r in DropReason::ALL {
        drops
            .with_label_values(&[r.as_str()])
            .inc_by(snap.stats.drops.get(r.as_str()).copied().unwrap_or(0));
    }
    drops
        .with_label_values(&["inbox_full"])
        .inc_by(snap.inbox_full);
    let icmp = counter(
        reg,
        "on6_icmp_sent_total",
        "ICMPv6 messages the master originated.",
        &[],
    )?;
    icmp.with_label_values(&[] as &[&str])
        .inc_by(snap.stats.icmp_sent);
    let control = counter(
        reg,
        "on6_control_errors_total",
        "Malformed or out-of-order control messages from slaves.",
        &[],
    )?;
    control
        .with_label_values(&[] as &[&str])
        .inc_by(snap.stats.control_errors + view.remote.control_errors.load(Ordering::Relaxed));

    Ok(())
}

/// Serves `GET /metrics` on a plain HTTP/1.1 listener; anything else is 404.
pub async fn serve(listener: tokio::net::TcpListener, view: Arc<SiteView>) {
    let start_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    while let Ok((mut stream, _)) = listener.accept().await {
        let view = view.clone();
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            // Read the request head (bounded); the body, if any, is ignored.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let line = head.split(|b| *b == b'\r').next().unwrap_or(&[]);
            let response = if line.starts_with(b"GET /metrics ") || line == b"GET /metrics" {
                match render(&view, start_time).await {
                    Some(body) => format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
                    None => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                }
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
