//! Resolution cost of the DHT slave's two modes on real libp2p Kademlia
//! nodes (TCP on loopback): the paper's reference walk (clear the lowest set
//! bit, one get at a time) against the fast mode (parallel gets over the
//! fleet's aggregation lengths). The reference is the baseline, measured in
//! the same run on the same network and the same destinations.
//!
//! The nodes run in child processes of this binary ("node hosts", at most 50
//! nodes each), driven over their stdin and stdout: one process holding 200
//! swarms runs out of file descriptors (a near-full mesh needs about 40 000
//! sockets, the limit here is 20 000) and its listeners fail. Lookups start only
//! once every node's routing table holds its K closest nodes and every put was
//! acknowledged.
//!
//! `cargo bench --bench dht_resolution` runs 50 and 200 nodes and writes
//! `target/bench/dht_resolution.json`; under `cargo test` it runs a small
//! smoke version so CI knows the bench works.

use futures::StreamExt;
use ipnet::Ipv6Net;
use libp2p::kad::KBucketKey;
use libp2p::PeerId;
use on6::pki::{self, NodeIdentity, Role};
use on6::slave::dht::record::SignedEntry;
use on6::slave::dht::resolve::{self, Entry, Mode, Resolved, Resolver, ResolverConfig};
use on6::slave::dht::schedule::PublishSchedule;
use on6::slave::dht::{keys, p2p};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// Nodes per host process: 50 nodes meshed with 200 hold about 10 000 sockets.
const NODES_PER_HOST: usize = 50;
/// Kademlia's K (libp2p's default replication factor and bucket size).
const K: usize = 20;
/// How often a node publishes its entries again, as the DHT slave does by default
/// (records live 600 s here: lookups of a long run must not outlive them).
const REPUBLISH: Duration = Duration::from_secs(60);
/// Set in a node host's environment.
const HOST_ENV: &str = "DHT_BENCH_HOST";

/// What the bench asks a node host, one JSON line each.
#[derive(Serialize, Deserialize)]
enum Req {
    /// The first line: the whole fleet (certificate and key PEM per node) and the nodes to run.
    Init {
        fleet: Vec<(String, String)>,
        lo: usize,
        hi: usize,
        base_port: u16,
    },
    /// Every node of the host publishes its entries (again 5 s after a failed put, and
    /// every `REPUBLISH`).
    Publish,
    Get {
        id: u64,
        node: usize,
        key: Ipv6Addr,
    },
    /// How many of the host's nodes store a record under `key`.
    Stored {
        id: u64,
        key: Ipv6Addr,
    },
    Status {
        id: u64,
    },
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Ready,
    Entries {
        id: u64,
        entries: Vec<(Ipv6Net, SocketAddr, String, u64)>,
    },
    Stored {
        id: u64,
        holders: usize,
    },
    Status {
        id: u64,
        nodes: Vec<NodeStatus>,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct NodeStatus {
    admitted: usize,
    /// How many of the node's K closest nodes (by XOR distance) its routing table
    /// holds, or cannot hold because their bucket is full (Kademlia keeps the
    /// K longest-known nodes per bucket).
    neighbours: usize,
    /// Every put of the node's last publication was acknowledged.
    stored: bool,
}

fn site_prefixes(i: usize, n: usize) -> Vec<Ipv6Net> {
    let mut v =
        vec![Ipv6Net::new(Ipv6Addr::new(0xfd6e, 0, i as u16 + 1, 0, 0, 0, 0, 0), 48).unwrap()];
    // Every fifth site also owns a /56 inside the next site's /48 (and one a /64 on
    // the same network address): lookups must pick the longest covering prefix.
    if i.is_multiple_of(5) && i + 1 < n {
        v.push(
            Ipv6Net::new(
                Ipv6Addr::new(0xfd6e, 0, i as u16 + 2, 0xab00, 0, 0, 0, 0),
                56,
            )
            .unwrap(),
        );
        v.push(Ipv6Net::new(Ipv6Addr::new(0xfd6e, 0, i as u16 + 2, 0, 0, 0, 0, 0), 64).unwrap());
    }
    v
}

fn fleet(n: usize) -> Vec<(String, String)> {
    let ca = pki::init_ca("bench fleet", 1).unwrap();
    let now = time::OffsetDateTime::now_utc();
    (0..n)
        .map(|i| {
            let (pair, _) = pki::issue(
                &ca.cert_pem,
                &ca.key_pem,
                &pki::IssueRequest {
                    name: &format!("site-{}", i + 1),
                    role: Role::Master,
                    prefixes: &site_prefixes(i, n),
                    not_before: now - time::Duration::hours(1),
                    not_after: now + time::Duration::hours(2),
                },
            )
            .unwrap();
            (pair.cert_pem, pair.key_pem)
        })
        .collect()
}

fn peer_id(key_pem: &str) -> PeerId {
    keys::libp2p_keypair(keys::keypair_from_pem(key_pem).unwrap())
        .public()
        .to_peer_id()
}

enum Cmd {
    Get(Ipv6Addr, oneshot::Sender<Vec<SignedEntry>>),
    Stored(Ipv6Addr, oneshot::Sender<bool>),
}

/// A node as its host sees it.
struct Node {
    cmds: mpsc::Sender<Cmd>,
    publish: Arc<AtomicBool>,
    admitted: Arc<AtomicUsize>,
    neighbours: Arc<AtomicUsize>,
    stored: Arc<AtomicBool>,
}

fn spawn_node(fleet: &[(String, String)], ids: &[PeerId], i: usize, base_port: u16) -> Node {
    let n = fleet.len();
    let (cert_pem, key_pem) = &fleet[i];
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    let key = keys::keypair_from_pem(key_pem).unwrap();
    // Membership and records are checked against the identity the certificate carries.
    let check: p2p::CertCheck =
        Arc::new(|c: &[u8]| NodeIdentity::from_der(c).map_err(|e| e.to_string()));
    let listen = format!("/ip4/127.0.0.1/tcp/{}", base_port + i as u16)
        .parse()
        .unwrap();
    let mut node = p2p::P2p::new(
        keys::libp2p_keypair(key.clone()),
        cert.clone(),
        check,
        listen,
        Duration::from_secs(600),
        p2p::KAD_PROTOCOL,
    )
    .unwrap();
    // One bootstrap peer each, as an operator would configure.
    let boot = if i == 0 { 1 } else { i - 1 };
    node.dial(
        format!("/ip4/127.0.0.1/tcp/{}", base_port + boot as u16)
            .parse()
            .unwrap(),
    );
    let mine: Vec<(Ipv6Addr, SignedEntry)> = site_prefixes(i, n)
        .into_iter()
        .flat_map(|p| {
            let e = SignedEntry::sign(
                p,
                vec![SocketAddr::from(([127, 0, 0, 1], 4435))],
                1,
                p2p::now_unix() + 3600,
                cert.clone(),
                |m| key.sign(m),
            );
            // Publish where both modes look: the reference key and the fast aggregation key.
            let mut keys = resolve::publish_keys(p, &Mode::Reference);
            keys.extend(resolve::publish_keys(p, &fast_mode()));
            keys.sort();
            keys.dedup();
            keys.into_iter().map(move |k| (k, e.clone()))
        })
        .collect();
    let me = KBucketKey::from(node.local_peer_id());
    let mut others: Vec<KBucketKey<PeerId>> = ids
        .iter()
        .map(|p| KBucketKey::from(*p))
        .filter(|k| *k != me)
        .collect();
    others.sort_by_key(|k| k.distance(&me));
    let closest: Vec<PeerId> = others.iter().take(K).map(|k| *k.preimage()).collect();

    let (tx, mut rx) = mpsc::channel::<Cmd>(1024);
    let status = Node {
        cmds: tx,
        publish: Arc::new(AtomicBool::new(false)),
        admitted: Arc::new(AtomicUsize::new(0)),
        neighbours: Arc::new(AtomicUsize::new(0)),
        stored: Arc::new(AtomicBool::new(false)),
    };
    let (publish, admitted, neighbours, stored) = (
        status.publish.clone(),
        status.admitted.clone(),
        status.neighbours.clone(),
        status.stored.clone(),
    );
    tokio::spawn(async move {
        let mut pending: HashMap<libp2p::kad::QueryId, oneshot::Sender<Vec<SignedEntry>>> =
            HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // A publication in flight: how many puts will have ended when it is over, and
        // how many had failed before it.
        let mut round: Option<(u64, u64)> = None;
        // Published only when the bench says so, then as the DHT slave does.
        let mut schedule: Option<PublishSchedule> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Stored(key, reply)) => {
                        let _ = reply.send(node.stored(&p2p::key_for(key)));
                    }
                    Some(Cmd::Get(key, reply)) => {
                        pending.insert(node.get(p2p::key_for(key)), reply);
                    }
                    None => return,
                },
                ev = node.next() => {
                    if let p2p::P2pEvent::GetDone { query, entries } = ev {
                        if let Some(r) = pending.remove(&query) {
                            let _ = r.send(entries);
                        }
                    }
                }
                _ = tick.tick() => {
                    admitted.store(node.peers(), Ordering::Relaxed);
                    let kad = &mut node.swarm.behaviour_mut().kad;
                    let table: HashSet<PeerId> = kad
                        .kbuckets()
                        .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                        .collect();
                    let held = closest
                        .iter()
                        .filter(|p| table.contains(p) || kad.kbucket(**p).is_some_and(|b| b.num_entries() >= K))
                        .count();
                    neighbours.store(held, Ordering::Relaxed);
                    let s = node.stats();
                    let now = Instant::now();
                    if let (Some((ends_at, failed_before)), Some(sched)) = (round, schedule.as_mut()) {
                        if s.puts_ok + s.puts_failed >= ends_at {
                            round = None;
                            if s.puts_failed > failed_before {
                                sched.put_failed(now);
                            } else {
                                stored.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    if publish.swap(false, Ordering::Relaxed) {
                        schedule = Some(PublishSchedule::new(REPUBLISH, now));
                    }
                    if let Some(sched) = schedule.as_mut().filter(|s| round.is_none() && s.due(now)) {
                        sched.published(now);
                        round = Some((s.puts_ok + s.puts_failed + mine.len() as u64, s.puts_failed));
                        for (key, e) in &mine {
                            node.publish(p2p::key_for(*key), vec![e.clone()]);
                        }
                    }
                }
            }
        }
    });
    status
}

/// A node host: runs the nodes it is told to, answers requests until its stdin closes.
fn host_main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let Ok(Some(first)) = lines.next_line().await else {
            return;
        };
        let Req::Init {
            fleet,
            lo,
            hi,
            base_port,
        } = serde_json::from_str(&first).unwrap()
        else {
            panic!("a node host must first be told its nodes");
        };
        let ids: Vec<PeerId> = fleet.iter().map(|(_, k)| peer_id(k)).collect();
        let mut nodes = Vec::new();
        for i in lo..hi {
            nodes.push(spawn_node(&fleet, &ids, i, base_port));
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let nodes = Arc::new(nodes);
        let (out, mut replies) = mpsc::unbounded_channel::<Reply>();
        tokio::spawn(async move {
            let mut stdout = tokio::io::stdout();
            while let Some(r) = replies.recv().await {
                let mut line = serde_json::to_vec(&r).unwrap();
                line.push(b'\n');
                if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                    return;
                }
            }
        });
        out.send(Reply::Ready).unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let (nodes, out) = (nodes.clone(), out.clone());
            match serde_json::from_str(&line).unwrap() {
                Req::Init { .. } => panic!("a node host is told its nodes once"),
                Req::Publish => {
                    for x in nodes.iter() {
                        x.publish.store(true, Ordering::Relaxed);
                    }
                }
                Req::Status { id } => {
                    let nodes = nodes
                        .iter()
                        .map(|x| NodeStatus {
                            admitted: x.admitted.load(Ordering::Relaxed),
                            neighbours: x.neighbours.load(Ordering::Relaxed),
                            stored: x.stored.load(Ordering::Relaxed),
                        })
                        .collect();
                    let _ = out.send(Reply::Status { id, nodes });
                }
                Req::Get { id, node, key } => {
                    tokio::spawn(async move {
                        let (tx, rx) = oneshot::channel();
                        nodes[node - lo].cmds.send(Cmd::Get(key, tx)).await.unwrap();
                        let entries = rx
                            .await
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|e| {
                                Some((
                                    e.prefix,
                                    *e.endpoints.first()?,
                                    NodeIdentity::from_der(&e.cert).ok()?.name,
                                    e.seq,
                                ))
                            })
                            .collect();
                        let _ = out.send(Reply::Entries { id, entries });
                    });
                }
                Req::Stored { id, key } => {
                    tokio::spawn(async move {
                        let mut holders = 0;
                        for x in nodes.iter() {
                            let (tx, rx) = oneshot::channel();
                            x.cmds.send(Cmd::Stored(key, tx)).await.unwrap();
                            holders += rx.await.unwrap_or(false) as usize;
                        }
                        let _ = out.send(Reply::Stored { id, holders });
                    });
                }
            }
        }
    });
    // The bench closed our stdin: it is done with us.
    runtime.shutdown_background();
}

/// A node host process, from the bench's side.
struct Host {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    next_id: AtomicU64,
    _child: tokio::process::Child,
}

impl Host {
    async fn start(fleet: &[(String, String)], lo: usize, hi: usize, base_port: u16) -> Host {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .env(HOST_ENV, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let host = Host {
            stdin: tokio::sync::Mutex::new(stdin),
            waiting: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            _child: child,
        };
        host.send(&Req::Init {
            fleet: fleet.to_vec(),
            lo,
            hi,
            base_port,
        })
        .await;
        // Its nodes listen once it is ready: the next host's first node dials our last.
        let ready = lines.next_line().await.unwrap().unwrap();
        assert!(matches!(
            serde_json::from_str(&ready).unwrap(),
            Reply::Ready
        ));
        let waiting = host.waiting.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: Reply = serde_json::from_str(&line).unwrap();
                let id = match &reply {
                    Reply::Ready => continue,
                    Reply::Entries { id, .. }
                    | Reply::Stored { id, .. }
                    | Reply::Status { id, .. } => *id,
                };
                if let Some(tx) = waiting.lock().unwrap().remove(&id) {
                    let _ = tx.send(reply);
                }
            }
        });
        host
    }

    async fn send(&self, req: &Req) {
        let mut line = serde_json::to_vec(req).unwrap();
        line.push(b'\n');
        self.stdin.lock().await.write_all(&line).await.unwrap();
    }

    async fn call(&self, req: impl FnOnce(u64) -> Req) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        self.send(&req(id)).await;
        rx.await.unwrap()
    }

    async fn status(&self) -> Vec<NodeStatus> {
        match self.call(|id| Req::Status { id }).await {
            Reply::Status { nodes, .. } => nodes,
            _ => unreachable!("a status request gets a status"),
        }
    }
}

/// The bench's handle on a whole fleet.
struct Fleet {
    hosts: Vec<Host>,
}

impl Fleet {
    fn host(&self, node: usize) -> &Host {
        &self.hosts[node / NODES_PER_HOST]
    }

    async fn status(&self) -> Vec<NodeStatus> {
        let mut all = Vec::new();
        for h in &self.hosts {
            all.extend(h.status().await);
        }
        all
    }

    async fn get(&self, node: usize, key: Ipv6Addr) -> Vec<Entry> {
        match self.host(node).call(|id| Req::Get { id, node, key }).await {
            Reply::Entries { entries, .. } => entries
                .into_iter()
                .map(|(prefix, endpoint, owner, seq)| Entry {
                    prefix,
                    endpoint,
                    owner,
                    seq,
                })
                .collect(),
            _ => unreachable!("a get is answered with entries"),
        }
    }

    async fn holders(&self, key: Ipv6Addr) -> usize {
        let mut sum = 0;
        for h in &self.hosts {
            if let Reply::Stored { holders, .. } = h.call(|id| Req::Stored { id, key }).await {
                sum += holders;
            }
        }
        sum
    }
}

fn fast_mode() -> Mode {
    Mode::Fast {
        lengths: vec![0, 32, 40, 48, 56, 64],
    }
}

fn naive(all: &[(Ipv6Net, String)], dst: Ipv6Addr) -> Option<Ipv6Net> {
    all.iter()
        .filter(|(p, _)| p.contains(&dst))
        .map(|(p, _)| *p)
        .max_by_key(|p| p.prefix_len())
}

/// Resolves `dst` from `node` with a fresh resolver in `mode`: returns (found prefix, gets, latency).
async fn resolve_once(
    fleet: &Arc<Fleet>,
    node: usize,
    mode: Mode,
    dst: Ipv6Addr,
) -> (Option<Ipv6Net>, u32, Duration) {
    let mut r: Resolver<()> = Resolver::new(ResolverConfig {
        mode,
        get_timeout: Duration::from_secs(5),
        ..ResolverConfig::default()
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<(resolve::GetId, Vec<Entry>)>();
    r.prefetch(dst, Instant::now());
    loop {
        while let Some((id, key)) = r.poll_get() {
            let (fleet, tx) = (fleet.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send((id, fleet.get(node, key).await));
            });
        }
        if let Some(done) = r.poll_resolved() {
            return match done {
                Resolved::Found {
                    entry,
                    gets,
                    latency,
                    ..
                } => (Some(entry.prefix), gets, latency),
                Resolved::NotFound { gets, latency, .. } => (None, gets, latency),
            };
        }
        match tokio::time::timeout(Duration::from_secs(6), rx.recv()).await {
            Ok(Some((id, entries))) => r.handle_get(id, entries, Instant::now()),
            _ => r.handle_timeout(Instant::now() + Duration::from_secs(10)),
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(serde::Serialize)]
struct Row {
    nodes: usize,
    mode: &'static str,
    resolutions: usize,
    in_flight: usize,
    gets_mean: f64,
    gets_p50: f64,
    gets_p99: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    wrong: usize,
}

async fn run(n: usize, resolutions: usize, base_port: u16) -> Vec<Row> {
    let t_start = Instant::now();
    let certs = fleet(n);
    let mut hosts = Vec::new();
    for lo in (0..n).step_by(NODES_PER_HOST) {
        hosts.push(Host::start(&certs, lo, (lo + NODES_PER_HOST).min(n), base_port).await);
    }
    let fleet = Arc::new(Fleet { hosts });
    eprintln!(
        "{n} nodes started in {:.1} s ({} host processes)",
        t_start.elapsed().as_secs_f64(),
        fleet.hosts.len()
    );
    // Puts and gets find the same K closest nodes once every node's routing table
    // holds its own K closest: wait for that before publishing.
    let want = (n - 1).min(K);
    let t0 = Instant::now();
    loop {
        let status = fleet.status().await;
        let short = status.iter().filter(|s| s.neighbours < want).count();
        if short == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            eprintln!(
                "{n} nodes: {short} routing tables still miss close nodes after 180 s, going on"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let admitted: usize = fleet.status().await.iter().map(|s| s.admitted).sum();
    eprintln!(
        "{n} nodes: waited {:.1} s for routing tables ({:.1} members admitted per node)",
        t0.elapsed().as_secs_f64(),
        admitted as f64 / n as f64
    );
    for h in &fleet.hosts {
        h.send(&Req::Publish).await;
    }
    let t1 = Instant::now();
    let unstored = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let unstored = fleet.status().await.iter().filter(|s| !s.stored).count();
        if unstored == 0 || t1.elapsed() > Duration::from_secs(120) {
            break unstored;
        }
    };
    eprintln!(
        "{n} nodes: publications acknowledged in {:.1} s ({unstored} nodes still failing)",
        t1.elapsed().as_secs_f64()
    );
    // DHT_BENCH_SETTLE_S: time for the copies beyond the first acknowledgement to land.
    let settle = std::env::var("DHT_BENCH_SETTLE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let all: Vec<(Ipv6Net, String)> = (0..n)
        .flat_map(|i| {
            site_prefixes(i, n)
                .into_iter()
                .map(move |p| (p, format!("site-{}", i + 1)))
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dsts: Vec<(usize, Ipv6Addr)> = (0..resolutions)
        .map(|_| {
            let from = rng.random_range(0..n);
            let dst = if rng.random_bool(0.9) {
                let (p, _) = &all[rng.random_range(0..all.len())];
                let host: u128 = rng.random::<u128>() >> p.prefix_len();
                Ipv6Addr::from(u128::from(p.network()) | host)
            } else {
                Ipv6Addr::new(
                    0xfd6e,
                    0x7777,
                    rng.random(),
                    rng.random(),
                    0,
                    0,
                    0,
                    rng.random(),
                )
            };
            (from, dst)
        })
        .collect();
    let parallel = std::env::var("DHT_BENCH_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8usize)
        .max(1);
    let mut rows = Vec::new();
    for (label, mode) in [
        ("reference (paper)", Mode::Reference),
        ("fast", fast_mode()),
    ] {
        let mut gets = Vec::new();
        let mut lat = Vec::new();
        let mut wrong = 0;
        // Several resolutions in flight at once, as in a fleet with traffic to many
        // destinations; one at a time, the reference mode at 200 nodes takes most of an hour.
        let mut done = futures::stream::iter(dsts.iter().map(|(from, dst)| {
            let (fleet, mode) = (fleet.clone(), mode.clone());
            async move { (*dst, resolve_once(&fleet, *from, mode, *dst).await) }
        }))
        .buffer_unordered(parallel);
        while let Some((dst, (found, g, l))) = done.next().await {
            let dst = &dst;
            let want = naive(&all, *dst);
            if found != want {
                if wrong < 3 {
                    let holders = match want {
                        Some(p) => fleet.holders(p.network()).await,
                        None => 0,
                    };
                    eprintln!("  {label}: {dst} resolved to {found:?}, longest covering prefix is {want:?}, stored on {holders} nodes");
                }
                wrong += 1;
            }
            gets.push(g as f64);
            lat.push(l.as_secs_f64() * 1000.0);
        }
        eprintln!("{n} nodes, {label}: {} resolutions done", dsts.len());
        gets.sort_by(f64::total_cmp);
        lat.sort_by(f64::total_cmp);
        rows.push(Row {
            nodes: n,
            mode: label,
            resolutions: dsts.len(),
            in_flight: parallel,
            gets_mean: gets.iter().sum::<f64>() / gets.len().max(1) as f64,
            gets_p50: pct(&gets, 0.5),
            gets_p99: pct(&gets, 0.99),
            latency_ms_p50: pct(&lat, 0.5),
            latency_ms_p99: pct(&lat, 0.99),
            wrong,
        });
    }
    rows
}

fn main() {
    // RUST_LOG=on6=debug shows what the nodes do (hosts write to the bench's stderr).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    if std::env::var_os(HOST_ENV).is_some() {
        return host_main();
    }
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // DHT_BENCH_PLAN=NODESxRESOLUTIONS runs one custom size.
    let custom = std::env::var("DHT_BENCH_PLAN").ok().and_then(|p| {
        let (a, b) = p.split_once('x')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    let plan: Vec<(usize, usize)> = match custom {
        Some(c) => vec![c],
        None if full => vec![(50, 200), (200, 100)],
        None => vec![(8, 40)],
    };
    let mut rows = Vec::new();
    for (i, (n, r)) in plan.iter().enumerate() {
        // Below the ephemeral range (32768+): outgoing connections must never take a node's port.
        let base = 10000 + (std::process::id() % 40) as u16 * 500 + i as u16 * 210;
        rows.extend(runtime.block_on(run(*n, *r, base)));
    }
    println!("\nDHT resolution cost (libp2p Kademlia, nodes in host processes on loopback)\n");
    println!("| nodes | mode | resolutions | in flight | gets mean | gets p50 | gets p99 | latency p50 (ms) | latency p99 (ms) | wrong |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
            r.nodes,
            r.mode,
            r.resolutions,
            r.in_flight,
            r.gets_mean,
            r.gets_p50,
            r.gets_p99,
            r.latency_ms_p50,
            r.latency_ms_p99,
            r.wrong
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(if full {
        "dht_resolution.json"
    } else {
        "dht_resolution_smoke.json"
    });
    std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
    let wrong: usize = rows.iter().map(|r| r.wrong).sum();
    if full {
        if wrong > 0 {
            println!(
                "{wrong} resolutions did not find the longest covering prefix (see the table)"
            );
        }
    } else {
        assert_eq!(
            wrong, 0,
            "resolutions that disagree with the longest covering prefix"
        );
    }
}
