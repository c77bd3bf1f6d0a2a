//! Prometheus exposition. Core types only keep stats; this module alone knows
//! Prometheus: each scrape turns a consistent snapshot into samples in a fresh
//! registry. Labels are bounded: slave and peer names from config or
//! certificates, kinds, directions and drop reasons, never addresses.

use crate::master::driver::{MasterHandle, MasterSnapshot};
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
    let snap = view.master.as_ref().map(MasterHandle::snapshot);
    let reg = Registry::new();
    build(&reg, view, snap.as_ref(), start_time).ok()?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut out).ok()?;
    let mut text = String::from_utf8(out).ok()?;
    dht_histograms(view, &mut text);
    Some(text)
}

/// The DHT keeps its own bucket counts; they are written out in the text format directly.
fn dht_histograms(view: &SiteView, out: &mut String) {
    use crate::slave::dht::{GETS_BUCKETS, LATENCY_BUCKETS};
    use std::fmt::Write;
    let families = [
        (
            "on6_dht_resolution_seconds",
            "Time from a destination's first packet to its resolution.",
            &LATENCY_BUCKETS[..],
            true,
        ),
        (
            "on6_dht_gets_per_resolution",
            "DHT gets one resolution needed.",
            &GETS_BUCKETS[..],
            false,
        ),
    ];
    for (name, help, bounds, latency) in families {
        if view.dhts.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (dht, shared) in &view.dhts {
            let st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            let h = if latency {
                &st.latency_seconds
            } else {
                &st.gets_per_resolution
            };
            for (i, bound) in bounds.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{dht=\"{dht}\",le=\"{bound}\"}} {}",
                    h.buckets.get(i).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{dht=\"{dht}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{dht=\"{dht}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{dht=\"{dht}\"}} {}", h.count);
        }
    }
}

fn dht_metrics(reg: &Registry, view: &SiteView) -> prometheus::Result<()> {
    let lookups = counter(reg, "on6_dht_lookups_total", "Destination lookups by outcome: resolutions found / not found, and packets answered from the cache.", &["dht", "outcome"])?;
    let gets = counter(reg, "on6_dht_gets_total", "DHT gets issued.", &["dht"])?;
    let timeouts = counter(
        reg,
        "on6_dht_get_timeouts_total",
        "DHT gets that got no answer in time.",
        &["dht"],
    )?;
    let drops = counter(
        reg,
        "on6_dht_queue_drops_total",
        "Packets dropped because their destination's resolution queue was full.",
        &["dht"],
    )?;
    let records = gauge(
        reg,
        "on6_dht_records_held",
        "DHT records in the local store.",
        &["dht"],
    )?;
    let peers = gauge(
        reg,
        "on6_dht_peers",
        "Fleet members admitted to the DHT routing table.",
        &["dht"],
    )?;
    let served = gauge(
        reg,
        "on6_dht_served_prefixes",
        "Prefixes this site publishes.",
        &["dht"],
    )?;
    let rejected = counter(
        reg,
        "on6_dht_entries_rejected_total",
        "DHT entries refused on store or get, by reason.",
        &["dht", "reason"],
    )?;
    let refused = counter(
        reg,
        "on6_dht_refused_peers_total",
        "DHT or tunnel peers refused (not a fleet site).",
        &["dht"],
    )?;
    let not_mine = counter(
        reg,
        "on6_dht_not_mine_total",
        "\"Not mine\" answers for moved prefixes, sent and received.",
        &["dht", "direction"],
    )?;
    let packets = counter(
        reg,
        "on6_dht_packets_total",
        "IPv6 packets tunnelled to and from other sites' DHT slaves.",
        &["dht", "direction"],
    )?;
    let bytes = counter(
        reg,
        "on6_dht_bytes_total",
        "IPv6 bytes tunnelled to and from other sites' DHT slaves.",
        &["dht", "direction"],
    )?;
    let inconclusive = counter(
        reg,
        "on6_dht_inconclusive_misses_total",
        "Resolutions not found with a get that timed out (counted in misses too; not cached).",
        &["dht"],
    )?;
    let unreachable = counter(
        reg,
        "on6_dht_unreachable_total",
        "Packets answered Destination Unreachable (no owner, or its site unreachable).",
        &["dht"],
    )?;
    let dropped = counter(
        reg,
        "on6_dht_dropped_total",
        "Datagrams to or from other sites dropped, by reason.",
        &["dht", "reason"],
    )?;
    let loss = counter(
        reg,
        "on6_dht_loss_hiding_total",
        "Loss hiding over connections to other sites' DHT slaves, by event (as on6_peer_loss_hiding_total).",
        &["dht", "event"],
    )?;
    let conns = gauge(
        reg,
        "on6_dht_connections",
        "QUIC connections to other sites' DHT slaves.",
        &["dht"],
    )?;
    for (name, d) in &view.dhts {
        let n = name.as_str();
        let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let st = d.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        lookups
            .with_label_values(&[n, "hit"])
            .inc_by(st.resolver.hits);
        lookups
            .with_label_values(&[n, "miss"])
            .inc_by(st.resolver.misses);
        inconclusive
            .with_label_values(&[n])
            .inc_by(st.resolver.inconclusive_misses);
        lookups
            .with_label_values(&[n, "cached_hit"])
            .inc_by(st.resolver.cached_hits);
        lookups
            .with_label_values(&[n, "cached_miss"])
            .inc_by(st.resolver.cached_misses);
        gets.with_label_values(&[n]).inc_by(st.resolver.gets_issued);
        timeouts
            .with_label_values(&[n])
            .inc_by(st.resolver.get_timeouts);
        drops
            .with_label_values(&[n])
            .inc_by(st.resolver.queue_drops);
        records
            .with_label_values(&[n])
            .set(st.p2p.records_held as i64);
        peers.with_label_values(&[n]).set(st.p2p.peers as i64);
        served.with_label_values(&[n]).set(st.served.len() as i64);
        for reason in [
            "malformed",
            "expired",
            "certificate",
            "not_covered",
            "bad_signature",
        ] {
            rejected
                .with_label_values(&[n, reason])
                .inc_by(st.p2p.entries_rejected.get(reason).copied().unwrap_or(0));
        }
        refused
            .with_label_values(&[n])
            .inc_by(st.p2p.refused_peers + l(&d.refused_peers));
        not_mine
            .with_label_values(&[n, "sent"])
            .inc_by(l(&d.not_mine_sent));
        not_mine
            .with_label_values(&[n, "received"])
            .inc_by(l(&d.not_mine_received));
        packets
            .with_label_values(&[n, "out"])
            .inc_by(l(&d.tx_packets));
        packets
            .with_label_values(&[n, "in"])
            .inc_by(l(&d.rx_packets));
        bytes.with_label_values(&[n, "out"]).inc_by(l(&d.tx_bytes));
        bytes.with_label_values(&[n, "in"]).inc_by(l(&d.rx_bytes));
        unreachable
            .with_label_values(&[n])
            .inc_by(l(&d.unreachable));
        dropped
            .with_label_values(&[n, "spoofed_source"])
            .inc_by(l(&d.spoofed));
        dropped
            .with_label_values(&[n, "malformed"])
            .inc_by(l(&d.malformed));
        dropped
            .with_label_values(&[n, "send_queue_full"])
            .inc_by(l(&d.send_queue_full));
        for (event, c) in d.loss.events() {
            loss.with_label_values(&[n, event]).inc_by(l(c));
        }
        conns.with_label_values(&[n]).set(st.connections as i64);
    }
    Ok(())
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
    if !view.dhts.is_empty() {
        dht_metrics(reg, view)?;
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
    let window = gauge(
        reg,
        "on6_peer_congestion_window_bytes",
        "Congestion window of the live tunnel connection to the peer site.",
        &["peer"],
    )?;
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
        "Datagrams to or from a peer site dropped, by reason.",
        &["peer", "reason"],
    )?;
    let arq = counter(
        reg,
        "on6_peer_loss_hiding_total",
        "Loss hiding per peer: holes in its numbering, recovered, lost (seen by inner flows), duplicates (a packet that came after its hole was filled or given up), resent on its request, requests for packets no longer kept; TCP packets held in order behind a hole, holes passed over when the hold ran out, and times the hold started delaying every TCP packet (playout).",
        &["peer", "event"],
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
            if let Some(w) = p.window_bytes {
                window.with_label_values(&[n]).set(w as i64);
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
            pdrop
                .with_label_values(&[n, "send_queue_full"])
                .inc_by(s.send_queue_full.load(Ordering::Relaxed));
            for (event, c) in s.loss.events() {
                arq.with_label_values(&[n, event])
                    .inc_by(c.load(Ordering::Relaxed));
            }
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
    let tun_batches = counter(
        reg,
        "on6_tun_batches_total",
        "TUN reads (in) and batched writes (out): packets per batch is what offload buys.",
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
        tun_batches
            .with_label_values(&[name, "in"])
            .inc_by(g.tun_rx_batches.load(Ordering::Relaxed));
        tun_batches
            .with_label_values(&[name, "out"])
            .inc_by(g.tun_tx_batches.load(Ordering::Relaxed));
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
