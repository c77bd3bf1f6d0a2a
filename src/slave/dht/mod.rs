//! DHT slave: self-organizing prefix-to-site mapping on libp2p Kademlia, as
//! the paper's DHT slave. It announces the address space it resolves to its
//! master, publishes signed entries for the prefixes its site serves, finds
//! the owners of other destinations ([`resolve`]: the paper's bit-clearing
//! walk, or a few parallel gets over the fleet's aggregation lengths) and
//! tunnels packets straight to the owning site's DHT slave in QUIC
//! datagrams, with the tunnel's loss hiding ([`super::link`]). A site that
//! no longer serves a destination answers "not mine"; the sender forgets its
//! cache entry and resolves again at once.

pub mod keys;
pub mod p2p;
pub mod record;
pub mod resolve;
pub mod schedule;

use super::link::{Incoming, LinkReceiver, LinkSender, LossCounters};
use super::{MasterPort, SlaveError, Uplink};
use crate::control::{ControlMessage, SlaveKind};
use crate::master::driver::{Downlink, MAX_BATCH};
use crate::packet::{self, IcmpError, Ipv6Packet, PacketArena};
use crate::pki::{Credentials, Role};
use crate::transport::{self, close, TransportOptions};
use bytes::{Bytes, BytesMut};
use ipnet::Ipv6Net;
use p2p::{P2p, P2pEvent};
use record::SignedEntry;
use resolve::{Entry, GetId, Resolution, Resolved, Resolver, ResolverConfig};
use schedule::PublishSchedule;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// First byte of a signalling datagram between DHT slaves ("not mine":
/// 16-byte destination follows). Every other datagram is loss hiding's
/// (`transport::arq`), whose kinds are 0 and 1.
const SIGNAL_NOT_MINE: u8 = 0x80;
const DIAL_QUEUE: usize = 64;

#[derive(Debug, Clone)]
pub struct DhtConfig {
    pub name: String,
    /// The Kademlia network to join (None: the fleet's default one).
    pub network: Option<String>,
    /// QUIC listener for packets from other sites' DHT slaves.
    pub listen: SocketAddr,
    /// The endpoint published in our entries (defaults to `listen`).
    pub advertise: SocketAddr,
    pub p2p_listen: SocketAddr,
    pub bootstrap: Vec<SocketAddr>,
    /// The address space this slave resolves (announced to the master).
    pub space: Vec<Ipv6Net>,
    /// Prefixes published for this site besides those of its gateways.
    pub serve: Vec<Ipv6Net>,
    pub resolver: ResolverConfig,
    pub record_ttl: Duration,
    pub republish: Duration,
    pub idle_close: Duration,
    /// Hand TCP on in order behind a hole (`transport::hold`).
    pub in_order: bool,
    pub transport: TransportOptions,
}

/// Histogram buckets for the metrics module (upper bounds).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
pub const GETS_BUCKETS: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 16.0, 32.0, 64.0, 129.0];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, bound) in self.buckets.iter_mut().zip(bounds) {
            if v <= *bound {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DhtStatus {
    pub resolver: resolve::ResolverStats,
    pub p2p: p2p::P2pStats,
    pub latency_seconds: Histogram,
    pub gets_per_resolution: Histogram,
    pub served: Vec<Ipv6Net>,
    pub connections: usize,
}

/// Counters the datagram readers bump, and the snapshot status and metrics read.
#[derive(Debug, Default)]
pub struct DhtShared {
    pub status: Mutex<DhtStatus>,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub spoofed: AtomicU64,
    pub malformed: AtomicU64,
    /// Datagrams dropped because the connection's send buffer was full.
    pub send_queue_full: AtomicU64,
    pub not_mine_sent: AtomicU64,
    pub not_mine_received: AtomicU64,
    pub unreachable: AtomicU64,
    pub refused_peers: AtomicU64,
    /// Loss hiding over every connection to other sites.
    pub loss: LossCounters,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

enum ConnEvent {
    Up(SocketAddr, quinn::Connection),
    DialFailed(SocketAddr),
    Closed(SocketAddr, usize),
    NotMine(Ipv6Addr),
    /// The peer at this address, over the connection with this id, asks again for these.
    Nack(SocketAddr, usize, Vec<(u32, u16)>),
}

enum Conn {
    Dialing(VecDeque<Bytes>),
    Up {
        conn: quinn::Connection,
        link: LinkSender,
        last_used: Instant,
    },
}

/// Served prefixes, read by datagram readers on every packet (written rarely).
type Served = Arc<RwLock<Vec<Ipv6Net>>>;

/// What every connection's reader needs.
#[derive(Clone)]
struct Ctx {
    up: Uplink,
    served: Served,
    shared: Arc<DhtShared>,
    events: mpsc::Sender<ConnEvent>,
    in_order: bool,
}

pub async fn run(
    cfg: DhtConfig,
    creds: Credentials,
    mut port: MasterPort,
    shared: Arc<DhtShared>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SlaveError> {
    let key_pem = creds
        .key_pem
        .clone()
        .ok_or_else(|| SlaveError::Config("the DHT slave needs the site's key in PEM".into()))?;
    let ecdsa = keys::keypair_from_pem(&key_pem).ok_or_else(|| {
        SlaveError::Config("the site key is not an ECDSA P-256 PKCS#8 key".into())
    })?;
    let my_cert = creds.chain[0].to_vec();
    if record::cert_public_key(&my_cert).map(|k| k.to_bytes()) != Some(ecdsa.public().to_bytes()) {
        return Err(SlaveError::Config(
            "the site key does not match its certificate".into(),
        ));
    }
    let verifier = crate::pki::client_verifier(
        &creds.ca,
        creds.revoked.clone(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .map_err(|e| SlaveError::Config(e.to_string()))?;
    let check: p2p::CertCheck = Arc::new(move |der: &[u8]| {
        let cert = rustls::pki_types::CertificateDer::from(der.to_vec());
        verifier
            .verify_client_cert(&cert, &[], rustls::pki_types::UnixTime::now())
            .map_err(|e| e.to_string())?;
        crate::pki::NodeIdentity::from_der(der).map_err(|e| e.to_string())
    });
    let listen_ma: libp2p::Multiaddr =
        format!("/ip4/{}/tcp/{}", cfg.p2p_listen.ip(), cfg.p2p_listen.port())
            .parse()
            .map_err(|e| SlaveError::Config(format!("p2p_listen: {e}")))?;
    let signer = ecdsa.clone();
    let protocol = match &cfg.network {
        Some(n) => format!("/on6/kad/{n}/1.0.0"),
        None => p2p::KAD_PROTOCOL.to_string(),
    };
    let mut dht = P2p::new(
        keys::libp2p_keypair(ecdsa),
        my_cert.clone(),
        check,
        listen_ma,
        cfg.record_ttl,
        &protocol,
    )
    .map_err(SlaveError::Config)?;
    let bootstrap: Vec<libp2p::Multiaddr> = cfg
        .bootstrap
        .iter()
        .filter_map(|b| format!("/ip4/{}/tcp/{}", b.ip(), b.port()).parse().ok())
        .collect();
    let mut last_bootstrap = Instant::now();
    for b in &bootstrap {
        dht.dial(b.clone());
    }

    let server = transport::server_config(&creds, &cfg.transport)?;
    let client = transport::client_config(&creds, &cfg.transport)?;
    let endpoint = transport::endpoint(cfg.listen, Some(server), client)?;

    let hello = ControlMessage::Hello {
        kind: SlaveKind::Dht,
        name: cfg.name.clone(),
        prefixes: cfg.space.clone(),
        mtu: cfg.transport.mtu,
    };
    let (_, router) = port.hello(hello).await?;
    tracing::info!(listen = %cfg.listen, p2p = %cfg.p2p_listen, space = ?cfg.space, "DHT slave up");

    let served: Served = Arc::new(RwLock::new(cfg.serve.clone()));
    let mut from_master: Vec<Ipv6Net> = Vec::new();
    // When each prefix became ours: its entries' sequence number, stable across republishing.
    let mut epochs: HashMap<Ipv6Net, u64> = HashMap::new();
    let (ev_tx, mut events) = mpsc::channel::<ConnEvent>(256);
    let mut tasks = tokio::task::JoinSet::new();
    let ctx = Ctx {
        up: port.up.clone(),
        served: served.clone(),
        shared: shared.clone(),
        events: ev_tx.clone(),
        in_order: cfg.in_order,
    };
    tasks.spawn(accept(endpoint.clone(), ctx.clone()));

    let mut resolver: Resolver<Bytes> = Resolver::new(cfg.resolver.clone());
    let mut queries: HashMap<libp2p::kad::QueryId, GetId> = HashMap::new();
    let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
    let mut schedule = PublishSchedule::new(cfg.republish, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut scratch = Vec::new();
    let mut arena = PacketArena::default();

    tokio::pin!(shutdown);
    let result = loop {
        let now = Instant::now();
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            msg = port.recv() => match msg {
                Some(Downlink::Packets(packets)) => {
                    for p in packets {
                        let Ok(dst) = Ipv6Packet::new_checked(&p[..]).map(|v| v.dst()) else { continue };
                        match resolver.resolve(dst, p, now) {
                            Resolution::Hit(entry, p) => send(&mut conns, &endpoint, &entry, p, &ctx, &mut arena),
                            Resolution::Miss(p) => unreachable(&port.up, router, &p, &mut scratch, &shared),
                            Resolution::Queued | Resolution::Dropped(_) => {}
                        }
                    }
                }
                Some(Downlink::Control(ControlMessage::Served { prefixes })) => {
                    from_master = prefixes;
                    schedule.changed(now);
                }
                Some(Downlink::Control(m)) => tracing::debug!(?m, "control message"),
                Some(Downlink::Close { reason }) => break Err(SlaveError::MasterError(reason)),
                None => break Err(SlaveError::MasterGone),
            },
            ev = dht.next() => match ev {
                P2pEvent::GetDone { query, entries } => {
                    if let Some(id) = queries.remove(&query) {
                        resolver.handle_get(id, entries.iter().filter_map(to_entry).collect(), now);
                    }
                }
                P2pEvent::PutFailed => schedule.put_failed(now),
                // A newcomer may be among the closest nodes to our keys.
                P2pEvent::PeerAdmitted(_) => schedule.newcomer(now),
            },
            Some(ev) = events.recv() => match ev {
                ConnEvent::Up(addr, conn) => {
                    let up = Conn::Up { conn, link: LinkSender::default(), last_used: now };
                    if let Some(Conn::Dialing(queued)) = conns.insert(addr, up) {
                        if let Some(Conn::Up { conn, link, .. }) = conns.get_mut(&addr) {
                            for p in queued {
                                send_on(conn, link, &p, &shared, &mut arena, now);
                            }
                        }
                    }
                }
                ConnEvent::Nack(addr, id, ranges) => {
                    if let Some(Conn::Up { conn, link, .. }) = conns.get_mut(&addr) {
                        if conn.stable_id() == id {
                            link.on_nack(conn, &ranges, now, &shared.loss);
                        }
                    }
                }
                ConnEvent::DialFailed(addr) => {
                    if let Some(Conn::Dialing(q)) = conns.remove(&addr) {
                        bump(&shared.unreachable, q.len() as u64);
                        for p in q {
                            unreachable(&port.up, router, &p, &mut scratch, &shared);
                        }
                    }
                    resolver.invalidate_endpoint(addr);
                }
                ConnEvent::Closed(addr, id) => {
                    if matches!(conns.get(&addr), Some(Conn::Up { conn, .. }) if conn.stable_id() == id) {
                        conns.remove(&addr);
                        resolver.invalidate_endpoint(addr);
                    }
                }
                ConnEvent::NotMine(dst) => {
                    bump(&shared.not_mine_received, 1);
                    if let Some(Some(e)) = resolver.cached(dst, now) {
                        let prefix = e.prefix;
                        resolver.invalidate_prefix(prefix);
                    }
                    resolver.prefetch(dst, now);
                }
            },
            _ = tick.tick() => {
                resolver.handle_timeout(now);
                // Bootstrap peers may start after us: keep knocking until we are connected to them.
                if now.duration_since(last_bootstrap) >= Duration::from_secs(1) {
                    last_bootstrap = now;
                    let missing: Vec<_> = bootstrap.iter().filter(|b| !dht.connected_to(b)).cloned().collect();
                    for b in missing {
                        dht.dial(b);
                    }
                }
                let current = {
                    // What this overlay publishes and accepts: the site's prefixes inside its space.
                    let mut all = cfg.serve.clone();
                    all.extend(from_master.iter().copied());
                    all.retain(|p| cfg.space.iter().any(|s| s.contains(p)));
                    all.sort();
                    all.dedup();
                    all
                };
                let changed = *served.read().unwrap_or_else(|e| e.into_inner()) != current;
                if changed {
                    *served.write().unwrap_or_else(|e| e.into_inner()) = current.clone();
                    schedule.changed(now);
                }
                if schedule.due(now) && dht.peers() > 0 {
                    publish(&mut dht, &cfg, &current, &mut epochs, &my_cert, &signer);
                    schedule.published(now);
                }
                conns.retain(|_, c| match c {
                    Conn::Up { conn, last_used, .. } if now.duration_since(*last_used) > cfg.idle_close => {
                        conn.close(close::SHUTDOWN.into(), b"idle");
                        false
                    }
                    _ => true,
                });
                let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                st.resolver = resolver.stats();
                st.p2p = dht.stats();
                st.served = current;
                st.connections = conns.len();
            }
        }
        while let Some((id, key)) = resolver.poll_get() {
            queries.insert(dht.get(p2p::key_for(key)), id);
        }
        while let Some(done) = resolver.poll_resolved() {
            match done {
                Resolved::Found {
                    entry,
                    packets,
                    gets,
                    latency,
                    ..
                } => {
                    observe(&shared, gets, latency);
                    for p in packets {
                        send(&mut conns, &endpoint, &entry, p, &ctx, &mut arena);
                    }
                }
                Resolved::NotFound {
                    packets,
                    gets,
                    latency,
                    ..
                } => {
                    observe(&shared, gets, latency);
                    for p in packets {
                        unreachable(&port.up, router, &p, &mut scratch, &shared);
                    }
                }
            }
        }
    };
    endpoint.close(close::SHUTDOWN.into(), b"shutdown");
    tasks.abort_all();
    result
}

fn observe(shared: &DhtShared, gets: u32, latency: Duration) {
    let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
    st.latency_seconds
        .observe(&LATENCY_BUCKETS, latency.as_secs_f64());
    st.gets_per_resolution.observe(&GETS_BUCKETS, gets as f64);
}

fn to_entry(e: &SignedEntry) -> Option<Entry> {
    let owner = crate::pki::NodeIdentity::from_der(&e.cert).ok()?.name;
    Some(Entry {
        prefix: e.prefix,
        endpoint: *e.endpoints.first()?,
        owner,
        seq: e.seq,
    })
}

fn publish(
    dht: &mut P2p,
    cfg: &DhtConfig,
    served: &[Ipv6Net],
    epochs: &mut HashMap<Ipv6Net, u64>,
    cert: &[u8],
    signer: &libp2p::identity::ecdsa::Keypair,
) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    epochs.retain(|p, _| served.contains(p));
    let expires = p2p::now_unix() + cfg.record_ttl.as_secs();
    for prefix in served {
        let seq = *epochs.entry(*prefix).or_insert(now_ms);
        let entry = SignedEntry::sign(
            *prefix,
            vec![cfg.advertise],
            seq,
            expires,
            cert.to_vec(),
            |m| signer.sign(m),
        );
        for key in resolve::publish_keys(*prefix, &cfg.resolver.mode) {
            dht.publish(p2p::key_for(key), vec![entry.clone()]);
        }
    }
    tracing::debug!(prefixes = ?served, "published DHT entries");
}

/// Answers the sender with Destination Unreachable (address unreachable) from the router.
fn unreachable(up: &Uplink, router: Ipv6Addr, p: &[u8], scratch: &mut Vec<u8>, shared: &DhtShared) {
    bump(&shared.unreachable, 1);
    let Ok(pkt) = Ipv6Packet::new_checked(p) else {
        return;
    };
    scratch.clear();
    if packet::build_error(
        IcmpError::DestinationUnreachable {
            code: packet::ADDRESS_UNREACHABLE,
        },
        router,
        &pkt,
        scratch,
    ) {
        let _ = up.packet(BytesMut::from(&scratch[..]));
    }
}

fn send(
    conns: &mut HashMap<SocketAddr, Conn>,
    endpoint: &quinn::Endpoint,
    entry: &Entry,
    p: Bytes,
    ctx: &Ctx,
    arena: &mut PacketArena,
) {
    match conns.get_mut(&entry.endpoint) {
        Some(Conn::Up {
            conn,
            link,
            last_used,
        }) => {
            *last_used = Instant::now();
            send_on(conn, link, &p, &ctx.shared, arena, *last_used);
        }
        Some(Conn::Dialing(q)) => {
            if q.len() < DIAL_QUEUE {
                q.push_back(p);
            }
        }
        None => {
            conns.insert(entry.endpoint, Conn::Dialing(VecDeque::from([p])));
            let (endpoint, entry, ctx) = (endpoint.clone(), entry.clone(), ctx.clone());
            tokio::spawn(async move { dial(endpoint, entry, ctx).await });
        }
    }
}

/// One packet to a connected site, numbered for loss hiding.
fn send_on(
    conn: &quinn::Connection,
    link: &mut LinkSender,
    p: &[u8],
    shared: &DhtShared,
    arena: &mut PacketArena,
    now: Instant,
) {
    match link.send(conn, arena, p, now) {
        Ok(true) => {
            bump(&shared.tx_packets, 1);
            bump(&shared.tx_bytes, p.len() as u64);
        }
        Ok(false) => bump(&shared.send_queue_full, 1),
        Err(e) => {
            tracing::debug!(to = %conn.remote_address(), error = %e, "datagram not sent")
        }
    }
}

async fn dial(endpoint: quinn::Endpoint, entry: Entry, ctx: Ctx) {
    let events = ctx.events.clone();
    let attempt = async {
        let conn = endpoint
            .connect(entry.endpoint, &entry.owner)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let id = transport::peer_identity(&conn).map_err(|e| e.to_string())?;
        if id.role != Role::Master || id.name != entry.owner || !id.covers(&entry.prefix) {
            conn.close(close::NOT_AUTHORIZED.into(), b"not the owner of the entry");
            return Err(format!("{} is not the owner of {}", id.name, entry.prefix));
        }
        Ok::<_, String>((conn, id))
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok((conn, id))) => {
            let _ = events
                .send(ConnEvent::Up(entry.endpoint, conn.clone()))
                .await;
            receive(conn.clone(), id, &ctx).await;
            let _ = events
                .send(ConnEvent::Closed(entry.endpoint, conn.stable_id()))
                .await;
        }
        Ok(Err(e)) => {
            tracing::warn!(to = %entry.endpoint, owner = %entry.owner, error = %e, "DHT tunnel dial failed");
            let _ = events.send(ConnEvent::DialFailed(entry.endpoint)).await;
        }
        Err(_) => {
            let _ = events.send(ConnEvent::DialFailed(entry.endpoint)).await;
        }
    }
}

async fn accept(endpoint: quinn::Endpoint, ctx: Ctx) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok(id) = transport::peer_identity(&conn) else {
                return;
            };
            if id.role != Role::Master {
                bump(&ctx.shared.refused_peers, 1);
                conn.close(
                    close::NOT_AUTHORIZED.into(),
                    b"a site certificate is required",
                );
                return;
            }
            let addr = conn.remote_address();
            let _ = ctx.events.send(ConnEvent::Up(addr, conn.clone())).await;
            receive(conn.clone(), id, &ctx).await;
            let _ = ctx
                .events
                .send(ConnEvent::Closed(addr, conn.stable_id()))
                .await;
        });
    }
}

/// Datagrams from another site: IPv6 from inside its certificate for a
/// destination we serve goes up; one for a destination we don't serve gets
/// "not mine"; anything else is dropped and counted. Holes in the numbering
/// are asked for again; NACKs for what we sent go to the sender in `run`.
async fn receive(conn: quinn::Connection, id: crate::pki::NodeIdentity, ctx: &Ctx) {
    let (up, served, shared) = (&ctx.up, &ctx.served, &ctx.shared);
    let mut link = LinkReceiver::new(ctx.in_order);
    while let Some(datagrams) = link.next_batch(&conn, MAX_BATCH).await {
        let (now, rtt) = (Instant::now(), LinkReceiver::rtt(&conn));
        let served = served.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut batch = Vec::with_capacity(datagrams.len());
        for d in datagrams {
            if d.first() == Some(&SIGNAL_NOT_MINE) {
                if let Some(dst) = d.get(1..17).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                    let _ = ctx.events.try_send(ConnEvent::NotMine(Ipv6Addr::from(dst)));
                }
                continue;
            }
            let (seq, packet) = match link.classify(&d) {
                Ok(Incoming::Data { seq, packet }) => (seq, packet),
                Ok(Incoming::Duplicate) => continue,
                Ok(Incoming::Nack(ranges)) => {
                    // A full queue loses a request, as the wire may: the peer asks again.
                    let nack = ConnEvent::Nack(conn.remote_address(), conn.stable_id(), ranges);
                    let _ = ctx.events.try_send(nack);
                    continue;
                }
                Err(e) => {
                    bump(&shared.malformed, 1);
                    tracing::debug!(from = %id.name, error = %e, "malformed datagram");
                    continue;
                }
            };
            let checked = match Ipv6Packet::new_checked(packet) {
                Ok(p) => p,
                Err(e) => {
                    bump(&shared.malformed, 1);
                    tracing::debug!(from = %id.name, error = %e, "malformed datagram");
                    link.skip(seq, now, rtt, &mut batch);
                    continue;
                }
            };
            let (src, dst) = (checked.src(), checked.dst());
            if !id.covers_addr(&src) {
                bump(&shared.spoofed, 1);
                link.skip(seq, now, rtt, &mut batch);
                continue;
            }
            if !served.iter().any(|p| p.contains(&dst)) {
                bump(&shared.not_mine_sent, 1);
                let mut signal = vec![SIGNAL_NOT_MINE];
                signal.extend_from_slice(&dst.octets());
                let _ = transport::send_datagram(&conn, Bytes::from(signal));
                link.skip(seq, now, rtt, &mut batch);
                continue;
            }
            bump(&shared.rx_packets, 1);
            bump(&shared.rx_bytes, packet.len() as u64);
            link.push(seq, checked, now, rtt, &mut batch);
        }
        link.flush(&conn, now, rtt, &mut batch, &shared.loss);
        if !batch.is_empty() && up.packets(batch).is_err() {
            return;
        }
    }
}
