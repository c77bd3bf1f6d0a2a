//! Static tunnel slave (the 6bone's configured tunnels, on6's manual
//! fallback): prefixes mapped by config to other sites, reached over mutually
//! authenticated QUIC datagrams. Connections are reused, re-dialed after
//! failure, and a peer's prefixes are announced to the master only while a
//! connection to it is up, so the master answers Destination Unreachable for
//! a site that is down.

use super::link::{Incoming, LinkReceiver, LinkSender, LossCounters};
use super::{MasterPort, SlaveError};
use crate::control::{ControlMessage, SlaveKind};
use crate::master::driver::{Downlink, PacketSink, MAX_BATCH};
use crate::master::RoutingTable;
use crate::packet::{Ipv6Packet, PacketArena};
use crate::pki::{Credentials, NodeIdentity, Role};
use crate::transport::{self, close, TransportOptions};
use bytes::Bytes;
use ipnet::Ipv6Net;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const REDIAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer site's certificate name.
    pub name: String,
    /// Where to dial it; `None` for a peer that only dials us (behind NAT).
    pub endpoint: Option<SocketAddr>,
    pub prefixes: Vec<Ipv6Net>,
}

#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Hand TCP on in order behind a hole (`transport::hold`).
    pub in_order: bool,
    pub peers: Vec<PeerConfig>,
    pub transport: TransportOptions,
}

#[derive(Debug, Default, Serialize)]
pub struct PeerStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub spoofed: AtomicU64,
    pub malformed: AtomicU64,
    /// Datagrams to the peer dropped because the connection's send buffer was full.
    pub send_queue_full: AtomicU64,
    #[serde(flatten)]
    pub loss: LossCounters,
    pub connects: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    pub lost_packets: u64,
    /// The congestion window of the live connection: what may be in flight.
    pub window_bytes: Option<u64>,
    /// Live connections to the peer (both sides may dial; one carries traffic).
    pub connections: usize,
    #[serde(serialize_with = "inner")]
    pub stats: Arc<PeerStats>,
}

fn inner<S: serde::Serializer>(s: &Arc<PeerStats>, ser: S) -> Result<S::Ok, S::Error> {
    s.as_ref().serialize(ser)
}

/// What status and metrics read about the tunnel.
#[derive(Debug, Default)]
pub struct TunnelShared {
    peers: Mutex<Vec<PeerSlot>>,
    pub handshakes_failed: AtomicU64,
    pub refused_peers: AtomicU64,
    pub no_connection: AtomicU64,
}

impl TunnelShared {
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .map(|(name, conns, stats)| {
                let live = conns.first();
                let path = live.map(|c| c.stats().path);
                PeerStatus {
                    name: name.clone(),
                    connected: live.is_some(),
                    rtt_ms: live.map(|c| c.rtt().as_secs_f64() * 1000.0),
                    lost_packets: path.map_or(0, |p| p.lost_packets),
                    window_bytes: path.map(|p| p.cwnd),
                    connections: conns.len(),
                    stats: stats.clone(),
                }
            })
            .collect()
    }
}

/// A peer's name, its live connections and its counters.
type PeerSlot = (String, Vec<quinn::Connection>, Arc<PeerStats>);

enum PeerEvent {
    Up(usize, quinn::Connection),
    Down(usize, usize),
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The sending side of every peer: which peer a destination belongs to, its
/// live connections, and what loss hiding keeps of what was sent.
struct Egress {
    routes: RoutingTable<usize>,
    conns: Vec<Vec<quinn::Connection>>,
    senders: Vec<LinkSender>,
    stats: Vec<Arc<PeerStats>>,
    peers: Arc<Vec<PeerConfig>>,
    arena: PacketArena,
    shared: Arc<TunnelShared>,
}

impl Egress {
    fn send(&mut self, packets: Vec<Bytes>, now: Instant) {
        for p in packets {
            let Ok(dst) = Ipv6Packet::new_checked(&p[..]).map(|v| v.dst()) else {
                continue;
            };
            let Some((_, &i)) = self.routes.lookup(dst) else {
                continue;
            };
            let Some(conn) = self.conns[i].first() else {
                bump(&self.shared.no_connection, 1);
                continue;
            };
            let len = p.len() as u64;
            match self.senders[i].send(conn, &mut self.arena, &p, now) {
                Ok(true) => {
                    bump(&self.stats[i].tx_packets, 1);
                    bump(&self.stats[i].tx_bytes, len);
                }
                Ok(false) => bump(&self.stats[i].send_queue_full, 1),
                Err(e) => {
                    tracing::debug!(peer = %self.peers[i].name, error = %e, "datagram not sent")
                }
            }
        }
    }

    /// Resends what peer `i` asked for again.
    fn on_nack(&mut self, i: usize, ranges: &[(u32, u16)], now: Instant) {
        let Some(conn) = self.conns[i].first() else {
            return;
        };
        self.senders[i].on_nack(conn, ranges, now, &self.stats[i].loss);
    }
}

/// Packets from the master, sent in the caller's call.
struct TunnelSink(Mutex<Egress>);

impl TunnelSink {
    fn egress(&self) -> std::sync::MutexGuard<'_, Egress> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PacketSink for TunnelSink {
    fn deliver(&self, packets: Vec<Bytes>) {
        self.egress().send(packets, Instant::now());
    }
}

/// Checks a connected peer: a site certificate with the configured name
/// that covers every prefix we would send it.
fn authorize(peer: &PeerConfig, id: &NodeIdentity) -> Result<(), String> {
    if id.role != Role::Master {
        return Err(format!(
            "{} holds a {} certificate, not a site certificate",
            id.name, id.role
        ));
    }
    if id.name != peer.name {
        return Err(format!("expected {}, got {}", peer.name, id.name));
    }
    if let Some(p) = peer.prefixes.iter().find(|p| !id.covers(p)) {
        return Err(format!("{}'s certificate does not cover {p}", id.name));
    }
    Ok(())
}

pub async fn run(
    cfg: TunnelConfig,
    creds: Credentials,
    mut port: MasterPort,
    shared: Arc<TunnelShared>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SlaveError> {
    let server = transport::server_config(&creds, &cfg.transport)?;
    let client = transport::client_config(&creds, &cfg.transport)?;
    let endpoint = transport::endpoint(cfg.listen, Some(server), client)?;
    let peers = Arc::new(cfg.peers.clone());
    let mut routes = RoutingTable::new();
    for (i, p) in peers.iter().enumerate() {
        for net in &p.prefixes {
            routes.insert(*net, i);
        }
    }
    let stats: Vec<Arc<PeerStats>> = peers.iter().map(|_| Arc::default()).collect();
    *shared.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers
        .iter()
        .zip(&stats)
        .map(|(p, s)| (p.name.clone(), Vec::new(), s.clone()))
        .collect();

    let hello = ControlMessage::Hello {
        kind: SlaveKind::Tunnel,
        name: cfg.name.clone(),
        prefixes: vec![],
        mtu: cfg.transport.mtu,
    };
    port.hello(hello).await?;
    tracing::info!(listen = %cfg.listen, peers = peers.len(), "tunnel up");

    let (events_tx, mut events) = mpsc::channel(64);
    // NACKs from the receive tasks to the senders kept here, one per peer.
    let (nack_tx, mut nacks) = mpsc::channel::<(usize, Vec<(u32, u16)>)>(1024);
    let sink = Arc::new(TunnelSink(Mutex::new(Egress {
        routes,
        conns: vec![Vec::new(); peers.len()],
        senders: peers.iter().map(|_| LinkSender::default()).collect(),
        stats: stats.clone(),
        peers: peers.clone(),
        arena: PacketArena::default(),
        shared: shared.clone(),
    })));
    port.deliver_directly(sink.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, p) in peers.iter().enumerate() {
        if let Some(addr) = p.endpoint {
            tasks.spawn(dial(
                endpoint.clone(),
                i,
                addr,
                peers.clone(),
                events_tx.clone(),
                shared.clone(),
            ));
        }
    }
    tasks.spawn(accept(
        endpoint.clone(),
        peers.clone(),
        events_tx.clone(),
        shared.clone(),
    ));

    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            Some(ev) = events.recv() => {
                // The lock is not held across the control messages: the
                // master may be delivering to this very sink.
                let announce = match ev {
                    PeerEvent::Up(i, conn) => {
                        bump(&stats[i].connects, 1);
                        let (up, st, ps) = (port.up.clone(), stats[i].clone(), peers.clone());
                        let (tx, nack_tx) = (events_tx.clone(), nack_tx.clone());
                        let (id, c, in_order) = (conn.stable_id(), conn.clone(), cfg.in_order);
                        tasks.spawn(async move {
                            receive(c, (i, &ps[i]), up, st, nack_tx, in_order).await;
                            let _ = tx.send(PeerEvent::Down(i, id)).await;
                        });
                        let mut egress = sink.egress();
                        let first = egress.conns[i].is_empty();
                        egress.conns[i].push(conn);
                        first.then(|| ControlMessage::Announce { prefixes: peers[i].prefixes.clone() })
                    }
                    PeerEvent::Down(i, id) => {
                        let mut egress = sink.egress();
                        egress.conns[i].retain(|c| c.stable_id() != id);
                        egress.conns[i].is_empty().then(|| {
                            tracing::warn!(peer = %peers[i].name, "peer unreachable: withdrawing its prefixes");
                            ControlMessage::Withdraw { prefixes: peers[i].prefixes.clone() }
                        })
                    }
                };
                {
                    let egress = sink.egress();
                    let mut table = shared.peers.lock().unwrap_or_else(|e| e.into_inner());
                    for (slot, live) in table.iter_mut().zip(&egress.conns) {
                        slot.1 = live.clone();
                    }
                }
                if let Some(msg) = announce {
                    port.up.control(msg).await?;
                }
            }
            Some((i, ranges)) = nacks.recv() => sink.egress().on_nack(i, &ranges, Instant::now()),
            msg = port.recv() => match msg {
                // Only a tunnel attached over QUIC gets packets here.
                Some(Downlink::Packets(packets)) => sink.deliver(packets),
                Some(Downlink::Control(m)) => tracing::debug!(?m, "control message"),
                Some(Downlink::Close { reason }) => break Err(SlaveError::MasterError(reason)),
                None => break Err(SlaveError::MasterGone),
            }
        }
    };
    endpoint.close(close::SHUTDOWN.into(), b"shutdown");
    tasks.abort_all();
    result
}

/// Datagrams from peer `i`: well-formed IPv6 from inside the peer's
/// certificate, or dropped and counted. Holes in the numbering are asked for
/// again; NACKs for what we sent go to the sender in `run`.
async fn receive(
    conn: quinn::Connection,
    (i, peer): (usize, &PeerConfig),
    up: super::Uplink,
    stats: Arc<PeerStats>,
    nacks: mpsc::Sender<(usize, Vec<(u32, u16)>)>,
    in_order: bool,
) {
    let identity = match transport::peer_identity(&conn) {
        Ok(id) => id,
        Err(_) => return,
    };
    let mut link = LinkReceiver::new(in_order);
    while let Some(datagrams) = link.next_batch(&conn, MAX_BATCH).await {
        let (now, rtt) = (Instant::now(), LinkReceiver::rtt(&conn));
        let mut batch = Vec::with_capacity(datagrams.len());
        for d in datagrams {
            let (seq, packet) = match link.classify(&d) {
                Ok(Incoming::Data { seq, packet }) => (seq, packet),
                Ok(Incoming::Duplicate) => continue,
                Ok(Incoming::Nack(ranges)) => {
                    // A full queue loses a request, as the wire may: the peer asks again.
                    let _ = nacks.try_send((i, ranges));
                    continue;
                }
                Err(e) => {
                    bump(&stats.malformed, 1);
                    tracing::debug!(peer = %peer.name, error = %e, "malformed datagram");
                    continue;
                }
            };
            let checked = match Ipv6Packet::new_checked(packet) {
                Ok(p) => p,
                Err(e) => {
                    bump(&stats.malformed, 1);
                    tracing::debug!(peer = %peer.name, error = %e, "malformed datagram");
                    link.skip(seq, now, rtt, &mut batch);
                    continue;
                }
            };
            let src = checked.src();
            if !identity.covers_addr(&src) {
                bump(&stats.spoofed, 1);
                tracing::debug!(peer = %peer.name, %src, "source outside the peer's certificate");
                link.skip(seq, now, rtt, &mut batch);
                continue;
            }
            bump(&stats.rx_packets, 1);
            bump(&stats.rx_bytes, packet.len() as u64);
            link.push(seq, checked, now, rtt, &mut batch);
        }
        link.flush(&conn, now, rtt, &mut batch, &stats.loss);
        if !batch.is_empty() && up.packets(batch).is_err() {
            return;
        }
    }
}

async fn dial(
    endpoint: quinn::Endpoint,
    i: usize,
    addr: SocketAddr,
    peers: Arc<Vec<PeerConfig>>,
    events: mpsc::Sender<PeerEvent>,
    shared: Arc<TunnelShared>,
) {
    let peer = &peers[i];
    loop {
        match endpoint.connect(addr, &peer.name) {
            Ok(connecting) => match connecting.await {
                Ok(conn) => match transport::peer_identity(&conn)
                    .map_err(|e| e.to_string())
                    .and_then(|id| authorize(peer, &id))
                {
                    Ok(()) => {
                        tracing::info!(peer = %peer.name, %addr, "tunnel connected");
                        if events.send(PeerEvent::Up(i, conn.clone())).await.is_err() {
                            return;
                        }
                        let why = conn.closed().await;
                        tracing::warn!(peer = %peer.name, reason = %why, "tunnel connection lost");
                    }
                    Err(why) => {
                        bump(&shared.refused_peers, 1);
                        tracing::error!(peer = %peer.name, reason = %why, "refusing tunnel peer");
                        conn.close(close::NOT_AUTHORIZED.into(), why.as_bytes());
                    }
                },
                Err(e) => {
                    bump(&shared.handshakes_failed, 1);
                    tracing::debug!(peer = %peer.name, %addr, error = %e, "tunnel dial failed");
                }
            },
            Err(e) => tracing::error!(peer = %peer.name, error = %e, "cannot dial"),
        }
        tokio::time::sleep(REDIAL).await;
    }
}

async fn accept(
    endpoint: quinn::Endpoint,
    peers: Arc<Vec<PeerConfig>>,
    events: mpsc::Sender<PeerEvent>,
    shared: Arc<TunnelShared>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                bump(&shared.handshakes_failed, 1);
                tracing::debug!(error = %e, "tunnel handshake failed");
                continue;
            }
        };
        let verdict = transport::peer_identity(&conn)
            .map_err(|e| e.to_string())
            .and_then(|id| {
                let i = peers
                    .iter()
                    .position(|p| p.name == id.name)
                    .ok_or(format!("{} is not a configured peer", id.name))?;
                authorize(&peers[i], &id).map(|()| i)
            });
        match verdict {
            Ok(i) => {
                tracing::info!(peer = %peers[i].name, remote = %conn.remote_address(), "tunnel accepted");
                if events.send(PeerEvent::Up(i, conn)).await.is_err() {
                    return;
                }
            }
            Err(why) => {
                bump(&shared.refused_peers, 1);
                tracing::warn!(reason = %why, "refusing tunnel peer");
                conn.close(close::NOT_AUTHORIZED.into(), why.as_bytes());
            }
        }
    }
}
