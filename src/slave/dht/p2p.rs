//! The DHT itself: a libp2p Kademlia node (TCP + noise + yamux) that admits
//! only fleet members. A peer enters the routing table after it proves a
//! fleet certificate whose public key is its libp2p identity (so the noise
//! handshake already proved it holds the key). Records are validated entry
//! by entry on store and on get, and merged rather than replaced, so several
//! sites can share one key.

use super::record::{self, SignedEntry};
use crate::pki::NodeIdentity;
use futures::StreamExt;
use libp2p::kad::{
    self, store::RecordStore, GetClosestPeersError, GetRecordOk, PeerInfo, QueryId, QueryResult,
    Quorum, Record, RecordKey,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const KAD_PROTOCOL: &str = "/on6/kad/1.0.0";
const MEMBER_PROTOCOL: &str = "/on6/member/1.0.0";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberProof {
    /// The fleet certificate (DER) whose key is the sender's libp2p identity.
    pub cert: Vec<u8>,
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub member: request_response::json::Behaviour<MemberProof, MemberProof>,
}

/// Checks a certificate (chain, validity, revocation) and returns its identity.
pub type CertCheck = Arc<dyn Fn(&[u8]) -> Result<NodeIdentity, String> + Send + Sync>;

#[derive(Debug, Default, Clone, Serialize)]
pub struct P2pStats {
    pub peers: usize,
    pub refused_peers: u64,
    pub records_held: usize,
    pub entries_rejected: HashMap<&'static str, u64>,
    pub puts_ok: u64,
    pub puts_failed: u64,
    pub gets: u64,
}

/// What the DHT reports back to the slave.
pub enum P2pEvent {
    /// A get finished: the valid entries found under the key.
    GetDone {
        query: QueryId,
        entries: Vec<SignedEntry>,
    },
    /// An admitted fleet member entered the routing table among the K closest we
    /// know to a key we publish: it should get our entries (a good moment to
    /// publish). Not at admission: a peer that dialed us has no address in the
    /// table until its Identify arrives, and a publication before that misses it
    /// until the next round (a site then lacked another's entry for over 30 s).
    PeerAdmitted(PeerId),
    /// A put reached no other node, or only those a timed-out lookup had found
    /// (timeouts, a table still filling): publish again soon.
    PutFailed,
}

pub struct P2p {
    pub swarm: Swarm<Behaviour>,
    my_cert: Vec<u8>,
    check: CertCheck,
    verified: HashMap<PeerId, NodeIdentity>,
    asked: HashSet<PeerId>,
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Entries gathered per get, and how many copies with valid entries arrived.
    gets: HashMap<QueryId, (Vec<SignedEntry>, u32)>,
    record_ttl: Duration,
    stats: P2pStats,
    /// Live outgoing connections per dialed address (bootstrap peers are re-dialed until connected).
    dialed: HashMap<Multiaddr, usize>,
    /// Records waiting for the lookup of their closest nodes, by lookup.
    lookups: HashMap<QueryId, Record>,
    /// Puts sent after a lookup that timed out: they count as failed whatever they reach.
    partial_puts: HashSet<QueryId>,
    /// The keys we have published under.
    published: HashSet<RecordKey>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn key_for(addr: Ipv6Addr) -> RecordKey {
    let mut k = b"on6/".to_vec();
    k.extend_from_slice(&addr.octets());
    RecordKey::new(&k)
}

impl P2p {
    pub fn new(
        keypair: libp2p::identity::Keypair,
        my_cert: Vec<u8>,
        check: CertCheck,
        listen: Multiaddr,
        record_ttl: Duration,
        protocol: &str,
    ) -> Result<Self, String> {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| e.to_string())?
            .with_behaviour(|key| {
                let peer = key.public().to_peer_id();
                let mut cfg = kad::Config::new(
                    StreamProtocol::try_from_owned(protocol.to_string())
                        .unwrap_or(StreamProtocol::new(KAD_PROTOCOL)),
                );
                // Only certificate holders enter the table; we judge every record ourselves.
                cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
                cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
                cfg.set_record_ttl(Some(record_ttl));
                // The slave republishes its own entries; libp2p's 22 h cadence is far too slow.
                cfg.set_publication_interval(None);
                // Nor does kad replicate: each holder re-putting every record it holds to all K
                // closest multiplied the puts K-fold (its lookups timed out by the thousand at
                // 200 nodes) and reached newcomers no sooner than the slave's republishing,
                // which the configuration keeps within half a record's lifetime.
                cfg.set_replication_interval(None);
                cfg.set_query_timeout(Duration::from_secs(5));
                // kad also looks us up each time a peer enters a table of fewer than K
                // peers (throttled, one at a time): enough for everyone to learn of
                // everyone. A lookup per admission flooded fleets of 50 and more.
                cfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(30)));
                let mut kad =
                    kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
                kad.set_mode(Some(kad::Mode::Server));
                Behaviour {
                    kad,
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/on6/id/1.0.0".into(),
                        key.public(),
                    )),
                    member: request_response::json::Behaviour::new(
                        [(StreamProtocol::new(MEMBER_PROTOCOL), ProtocolSupport::Full)],
                        request_response::Config::default(),
                    ),
                }
            })
            .map_err(|e| e.to_string())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        swarm.listen_on(listen).map_err(|e| e.to_string())?;
        Ok(P2p {
            swarm,
            my_cert,
            check,
            verified: HashMap::new(),
            asked: HashSet::new(),
            addrs: HashMap::new(),
            gets: HashMap::new(),
            record_ttl,
            stats: P2pStats::default(),
            dialed: HashMap::new(),
            lookups: HashMap::new(),
            partial_puts: HashSet::new(),
            published: HashSet::new(),
        })
    }

    pub fn dial(&mut self, addr: Multiaddr) {
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial DHT bootstrap peer");
        }
    }

    /// Whether we hold an outgoing connection to `addr` (as dialed, without /p2p).
    pub fn connected_to(&self, addr: &Multiaddr) -> bool {
        self.dialed
            .keys()
            .any(|a| a == addr || a.to_string().starts_with(&format!("{addr}/p2p/")))
    }

    fn forget_dialed(&mut self, addr: &Multiaddr) {
        if let Some(n) = self.dialed.get_mut(addr) {
            *n -= 1;
            if *n == 0 {
                self.dialed.remove(addr);
            }
        }
    }

    /// Whether this node's own store holds a record under `key`.
    pub fn stored(&mut self, key: &RecordKey) -> bool {
        self.swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .get(key)
            .is_some()
    }

    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    pub fn peers(&self) -> usize {
        self.verified.len()
    }

    pub fn stats(&mut self) -> P2pStats {
        let mut s = self.stats.clone();
        s.peers = self.verified.len();
        s.records_held = self.swarm.behaviour_mut().kad.store_mut().records().count();
        s
    }

    fn reject(&mut self, e: &record::RecordError) {
        *self.stats.entries_rejected.entry(e.reason()).or_default() += 1;
    }

    /// Keeps the entries that verify; counts the others by reason.
    fn valid(&mut self, entries: Vec<SignedEntry>) -> Vec<SignedEntry> {
        let now = now_unix();
        let mut out = Vec::new();
        for e in entries {
            let check = self.check.clone();
            match e.verify(now, |c| check(c)) {
                Ok(_) => out.push(e),
                Err(err) => {
                    tracing::debug!(prefix = %e.prefix, error = %err, "DHT entry rejected");
                    self.reject(&err);
                }
            }
        }
        out
    }

    fn decode_valid(&mut self, value: &[u8]) -> Vec<SignedEntry> {
        match record::decode_value(value) {
            Ok(entries) => self.valid(entries),
            Err(e) => {
                self.reject(&e);
                Vec::new()
            }
        }
    }

    /// Merges entries into the local store under `key`.
    fn store_merged(&mut self, key: RecordKey, entries: Vec<SignedEntry>) -> Vec<SignedEntry> {
        let now = now_unix();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let mut merged = store
            .get(&key)
            .and_then(|r| record::decode_value(&r.value).ok())
            .unwrap_or_default();
        record::merge(&mut merged, entries, now);
        let latest = merged.iter().map(|e| e.expires).max().unwrap_or(now);
        let ttl = Duration::from_secs(latest.saturating_sub(now)).min(self.record_ttl);
        let record = Record {
            key,
            value: record::encode_value(&merged),
            publisher: None,
            expires: Some(Instant::now() + ttl),
        };
        if let Err(e) = store.put(record) {
            tracing::warn!(error = %e, "local DHT store full");
        }
        merged
    }

    /// Publishes our entries under `key`, merged with what is already known there.
    ///
    /// Not `put_record`: when its lookup of the closest nodes times out (one slow or
    /// unreachable node among them is enough, as kad waits 10 s for a peer and the
    /// query times out after 5 s) it stores the record nowhere. We look up, then store
    /// at the nodes that answered, even after a timeout, and still report that case
    /// as failed so the slave publishes again.
    pub fn publish(&mut self, key: RecordKey, entries: Vec<SignedEntry>) {
        let merged = self.store_merged(key.clone(), entries);
        self.published.insert(key.clone());
        let record = Record {
            key: key.clone(),
            value: record::encode_value(&merged),
            publisher: None,
            expires: Some(Instant::now() + self.record_ttl),
        };
        let lookup = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(key.to_vec());
        self.lookups.insert(lookup, record);
    }

    /// Sends the record of `lookup` to the nodes it found.
    fn store_at(
        &mut self,
        lookup: QueryId,
        peers: Vec<PeerInfo>,
        timed_out: bool,
    ) -> Option<P2pEvent> {
        let record = self.lookups.remove(&lookup)?;
        if peers.is_empty() {
            self.stats.puts_failed += 1;
            tracing::debug!(timed_out, "DHT put found no node to store at");
            return Some(P2pEvent::PutFailed);
        }
        let put = self.swarm.behaviour_mut().kad.put_record_to(
            record,
            peers.into_iter().map(|p| p.peer_id),
            Quorum::One,
        );
        if timed_out {
            self.partial_puts.insert(put);
        }
        None
    }

    /// Whether `peer` is among the K closest we know to a key we publish. Only then
    /// does a newcomer call for publishing again: in a fleet of hundreds, admissions
    /// go on for minutes, and republishing at each flooded the DHT with puts.
    fn close_to_ours(&mut self, peer: PeerId) -> bool {
        let newcomer = kad::KBucketKey::from(peer);
        let kad = &mut self.swarm.behaviour_mut().kad;
        self.published.iter().any(|key| {
            let target = kad::KBucketKey::new(key.clone());
            let kth = kad
                .get_closest_local_peers(&target)
                .filter(|p| *p != newcomer)
                .nth(kad::K_VALUE.get() - 1);
            kth.is_none_or(|kth| newcomer.distance(&target) < kth.distance(&target))
        })
    }

    pub fn get(&mut self, key: RecordKey) -> QueryId {
        self.stats.gets += 1;
        let id = self.swarm.behaviour_mut().kad.get_record(key);
        self.gets.insert(id, (Vec::new(), 0));
        id
    }

    /// Checks a peer's membership proof; an admitted peer enters the routing
    /// table with the addresses known for it.
    fn admit(&mut self, peer: PeerId, cert: &[u8]) {
        let verdict = (self.check)(cert).and_then(|id| {
            if id.role != crate::pki::Role::Master {
                return Err(format!("{} is not a site certificate", id.name));
            }
            let key = record::cert_public_key(cert).ok_or("certificate key is not P-256")?;
            let owner = libp2p::identity::PublicKey::from(key).to_peer_id();
            if owner != peer {
                return Err(format!(
                    "{} presented a certificate that is not its own",
                    peer
                ));
            }
            Ok(id)
        });
        match verdict {
            Ok(id) => {
                if self.verified.insert(peer, id.clone()).is_none() {
                    tracing::info!(%peer, node = %id.name, "DHT peer admitted");
                    for a in self.addrs.get(&peer).cloned().unwrap_or_default() {
                        self.swarm.behaviour_mut().kad.add_address(&peer, a);
                    }
                }
            }
            Err(why) => {
                self.stats.refused_peers += 1;
                tracing::warn!(%peer, reason = %why, "DHT peer refused");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    fn learn_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let known = self.addrs.entry(peer).or_default();
        if !known.contains(&addr) {
            known.push(addr.clone());
            if self.verified.contains_key(&peer) {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
    }

    /// Drives the swarm to its next event that matters to the slave.
    pub async fn next(&mut self) -> P2pEvent {
        loop {
            let event = self.swarm.select_next_some().await;
            if let Some(out) = self.handle(event) {
                return out;
            }
        }
    }

    fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<P2pEvent> {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if endpoint.is_dialer() {
                    self.learn_addr(peer_id, endpoint.get_remote_address().clone());
                    *self
                        .dialed
                        .entry(endpoint.get_remote_address().clone())
                        .or_default() += 1;
                }
                if !self.verified.contains_key(&peer_id) && self.asked.insert(peer_id) {
                    let proof = MemberProof {
                        cert: self.my_cert.clone(),
                    };
                    self.swarm
                        .behaviour_mut()
                        .member
                        .send_request(&peer_id, proof);
                }
            }
            SwarmEvent::ConnectionClosed {
                endpoint,
                num_established,
                ..
            } if endpoint.is_dialer() && num_established > 0 => {
                self.forget_dialed(endpoint.get_remote_address());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                endpoint,
                ..
            } => {
                self.forget_dialed(endpoint.get_remote_address());
                self.asked.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Member(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.admit(peer, &request.cert);
                    if self.verified.contains_key(&peer) {
                        let _ = self.swarm.behaviour_mut().member.send_response(
                            channel,
                            MemberProof {
                                cert: self.my_cert.clone(),
                            },
                        );
                    }
                }
                request_response::Message::Response { response, .. } => {
                    self.admit(peer, &response.cert);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for a in info.listen_addrs {
                    self.learn_addr(peer_id, a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => return self.handle_kad(ev),
            _ => {}
        }
        None
    }

    fn handle_kad(&mut self, ev: kad::Event) -> Option<P2pEvent> {
        match ev {
            // Peers learned from other nodes: meet them, check their certificate, then add them.
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address }
                if !self.verified.contains_key(&peer) && peer != *self.swarm.local_peer_id() =>
            {
                self.learn_addr(peer, address.clone());
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(vec![address])
                    .build();
                let _ = self.swarm.dial(opts);
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        record: Some(record),
                        ..
                    },
            } => {
                // Entries are self-certifying (certificate and signature inside), so a put
                // is judged entry by entry, even when it beats the sender's membership proof.
                let entries = self.decode_valid(&record.value);
                if !entries.is_empty() {
                    self.store_merged(record.key, entries);
                }
            }
            kad::Event::RoutingUpdated {
                peer,
                addresses,
                is_new_peer,
                ..
            } => {
                tracing::debug!(%peer, addresses = ?addresses.iter().collect::<Vec<_>>(), "DHT routing table updated");
                // Only admitted peers enter the table (inserts are manual).
                if is_new_peer && self.close_to_ours(peer) {
                    return Some(P2pEvent::PeerAdmitted(peer));
                }
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(found))) => {
                    let entries = self.decode_valid(&found.record.value);
                    let useful = !entries.is_empty();
                    let mut enough = false;
                    if let Some(acc) = self.gets.get_mut(&id) {
                        record::merge(&mut acc.0, entries, now_unix());
                        acc.1 += useful as u32;
                        enough = acc.1 >= 2;
                    }
                    // Storing nodes merge every entry under a key; the union of two of
                    // their copies is complete in practice: answer then and stop the query.
                    if enough || step.last {
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                            q.finish();
                        }
                        return self.finish(id);
                    }
                }
                QueryResult::GetRecord(_) => return self.finish(id),
                QueryResult::Bootstrap(r) => {
                    tracing::debug!(result = ?r.map(|ok| ok.num_remaining), "DHT bootstrap step")
                }
                QueryResult::GetClosestPeers(Ok(ok)) => return self.store_at(id, ok.peers, false),
                QueryResult::GetClosestPeers(Err(GetClosestPeersError::Timeout {
                    peers, ..
                })) => return self.store_at(id, peers, true),
                QueryResult::PutRecord(r) => {
                    let partial = self.partial_puts.remove(&id);
                    if r.is_ok() && !partial {
                        self.stats.puts_ok += 1;
                    } else {
                        self.stats.puts_failed += 1;
                        tracing::debug!(partial, result = ?r.err(), "DHT put incomplete");
                        return Some(P2pEvent::PutFailed);
                    }
                }
                _ => {}
            },
            _ => {}
        }
        None
    }

    fn finish(&mut self, id: QueryId) -> Option<P2pEvent> {
        let (entries, _) = self.gets.remove(&id)?;
        Some(P2pEvent::GetDone { query: id, entries })
    }
}
