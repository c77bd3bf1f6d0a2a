//! Resolver of the DHT slave: maps an IPv6 destination to the site owning the
//! longest prefix that covers it, by issuing DHT "get"s and caching answers.
//!
//! Sans-I/O in the style of quinn-proto: inputs are `resolve`/`prefetch`/
//! `handle_get`/`handle_timeout` (time passed in), outputs are `poll_get`
//! (gets for the DHT driver to issue), `poll_resolved` (finished resolutions
//! with the packets that waited for them) and `poll_timeout`.
//!
//! # Keys
//! A site owning `P` publishes its entry under `P.network()` (the *reference
//! key*, as in the paper). In [`Mode::Fast`] it also publishes under
//! `P.network() & mask(l*)`, `l*` the largest configured length `<= P.len`.
//!
//! * Reference lookup walks the truncations of `dst` from longest to shortest
//!   (clear the lowest set bit each step, down to `::`), one get at a time.
//!   Keys are visited in decreasing truncation length and every covering entry
//!   under a key is longer than any covering entry under a later key, so the
//!   first key with a covering entry gives the answer.
//! * Fast lookup asks `dst & mask(l)` for every configured `l` at once. Let key
//!   `i` be the longest key holding a covering entry: every covering entry that
//!   is longer is published under key `i` or a longer key (its aggregation key
//!   is longer, or its reference key equals key `i`). So once key `i` answered
//!   and every longer key answered empty, the best entry of key `i` is final.
//!   Prefixes shorter than the smallest configured length are only published
//!   under their reference key; when no fast key covers `dst` the lookup falls
//!   back to a sequential reference walk over the truncations shorter than the
//!   smallest length (the *tail*). Configure a length of 0 to make the tail
//!   empty (short prefixes then aggregate under `::`).

use ipnet::Ipv6Net;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// One site's claim on a prefix, as stored in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub prefix: Ipv6Net,
    pub endpoint: SocketAddr,
    pub owner: String,
    pub seq: u64,
}

/// How entries are keyed; must be the same across the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The paper's scheme: reference keys only, sequential walk (up to 129 gets).
    Reference,
    /// Reference keys plus aggregation keys at these prefix lengths; lookups ask
    /// all aggregation keys in parallel. Lengths above 128 are ignored.
    Fast { lengths: Vec<u8> },
}

#[derive(Debug, Clone)]
pub struct ResolverConfig {
    pub mode: Mode,
    /// How long a found entry is served from cache.
    pub hit_ttl: Duration,
    /// How long "nobody owns this" is served from cache (short: sites come up).
    pub miss_ttl: Duration,
    /// A get unanswered this long counts as an empty answer.
    pub get_timeout: Duration,
    /// Packets held per pending destination; more are dropped.
    pub queue_per_destination: usize,
    /// Destinations resolving at once; more are dropped.
    pub max_pending: usize,
    /// Cached destinations (hits and misses) at most.
    pub cache_capacity: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Fast {
                lengths: vec![32, 40, 48, 56, 64],
            },
            hit_ttl: Duration::from_secs(60),
            miss_ttl: Duration::from_secs(5),
            get_timeout: Duration::from_secs(2),
            queue_per_destination: 32,
            max_pending: 1024,
            cache_capacity: 65536,
        }
    }
}

/// Identifies one get handed out by [`Resolver::poll_get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GetId(pub u64);

/// What [`Resolver::resolve`] did with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<P> {
    /// Cached or just known: send the packet to this entry's endpoint.
    Hit(Entry, P),
    /// Cached miss: nobody owns dst; answer unreachable.
    Miss(P),
    /// Queued until the resolution of dst finishes (see poll_resolved).
    Queued,
    /// Queue for dst full, or too many destinations pending: dropped (and counted).
    Dropped(P),
}

/// A finished resolution, with the packets that waited for it (possibly none,
/// e.g. after [`Resolver::prefetch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<P> {
    Found {
        dst: Ipv6Addr,
        entry: Entry,
        packets: Vec<P>,
        gets: u32,
        latency: Duration,
    },
    NotFound {
        dst: Ipv6Addr,
        packets: Vec<P>,
        gets: u32,
        latency: Duration,
    },
}

/// Counters for status and metrics (serializable for the status page).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResolverStats {
    /// Resolutions that finished found.
    pub hits: u64,
    /// Resolutions that finished not found.
    pub misses: u64,
    /// Of those, misses with a timed-out get: not cached, since the answer
    /// may have been there (an overloaded or partitioned DHT).
    pub inconclusive_misses: u64,
    /// Packets answered from a cached hit.
    pub cached_hits: u64,
    /// Packets answered from a cached miss.
    pub cached_misses: u64,
    /// Gets queued for the DHT driver.
    pub gets_issued: u64,
    /// Gets that ran past `get_timeout`.
    pub get_timeouts: u64,
    /// Packets dropped (queue full or too many pending destinations).
    pub queue_drops: u64,
    /// Cached hits forgotten through `invalidate_*`.
    pub invalidations: u64,
    /// Destinations currently resolving.
    pub pending: usize,
    /// Destinations currently cached.
    pub cached: usize,
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

fn truncate(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(addr) & mask(len))
}

/// Valid aggregation lengths, ascending and deduplicated, so every caller
/// agrees whatever order the configuration lists them in.
fn normalize(lengths: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = lengths.iter().copied().filter(|&l| l <= 128).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Lookup keys of the reference scheme: `addr`, then `addr` with its lowest set
/// bit cleared, and so on, ending with `::` (`::` alone gives `[::]`).
pub fn reference_keys(addr: Ipv6Addr) -> Vec<Ipv6Addr> {
    let mut v = u128::from(addr);
    let mut keys = Vec::with_capacity(v.count_ones() as usize + 1);
    loop {
        keys.push(Ipv6Addr::from(v));
        if v == 0 {
            return keys;
        }
        v &= v - 1;
    }
}

/// `addr & mask(l)` for each already-normalized length, longest first, deduped.
fn fast_keys_normalized(addr: Ipv6Addr, lengths: &[u8]) -> Vec<Ipv6Addr> {
    let mut keys: Vec<Ipv6Addr> = lengths.iter().rev().map(|&l| truncate(addr, l)).collect();
    // Truncations are monotone in the length, so equal keys are adjacent.
    keys.dedup();
    keys
}

/// Lookup keys of the fast scheme: `addr & mask(l)` for each length, longest
/// first, deduped. Lengths above 128 are ignored.
pub fn fast_keys(addr: Ipv6Addr, lengths: &[u8]) -> Vec<Ipv6Addr> {
    fast_keys_normalized(addr, &normalize(lengths))
}

/// Keys of the fast mode's fallback walk: the truncations of `addr` shorter
/// than the smallest length (all of them when there is no length).
fn tail_keys(addr: Ipv6Addr, lengths: &[u8]) -> Vec<Ipv6Addr> {
    match lengths.first() {
        None => reference_keys(addr),
        // The first key equals the fast key of the smallest length: skip it.
        Some(&min) => reference_keys(truncate(addr, min))
            .into_iter()
            .skip(1)
            .collect(),
    }
}

/// Keys a site owning `prefix` publishes its entry under: the reference key
/// always, plus in fast mode the aggregation key (when distinct).
pub fn publish_keys(prefix: Ipv6Net, mode: &Mode) -> Vec<Ipv6Addr> {
    let reference = prefix.network();
    let mut keys = vec![reference];
    if let Mode::Fast { lengths } = mode {
        let lengths = normalize(lengths);
        if let Some(l) = lengths
            .iter()
            .rev()
            .copied()
            .find(|&l| l <= prefix.prefix_len())
        {
            let key = truncate(reference, l);
            if key != reference {
                keys.push(key);
            }
        }
    }
    keys
}

/// Longest entry containing `dst`, highest seq on a tie.
fn best_cover(entries: &[Entry], dst: Ipv6Addr) -> Option<&Entry> {
    entries
        .iter()
        .filter(|e| e.prefix.contains(&dst))
        .max_by_key(|e| (e.prefix.prefix_len(), e.seq))
}

/// A get handed to (or waiting for) the DHT driver.
#[derive(Debug)]
struct Outstanding {
    dst: Ipv6Addr,
    /// Index of the key within its resolution's phase.
    slot: usize,
    deadline: Option<Instant>,
}

/// All gets in flight, indexed three ways so every operation stays O(log n).
#[derive(Debug, Default)]
struct Gets {
    outstanding: HashMap<GetId, Outstanding>,
    /// Created but not yet handed out by `poll_get`, in creation order.
    unsent: BTreeMap<GetId, Ipv6Addr>,
    deadlines: BTreeSet<(Instant, GetId)>,
    next: u64,
}

impl Gets {
    fn issue(
        &mut self,
        dst: Ipv6Addr,
        slot: usize,
        key: Ipv6Addr,
        deadline: Option<Instant>,
    ) -> GetId {
        let id = GetId(self.next);
        self.next = self.next.wrapping_add(1);
        self.outstanding.insert(
            id,
            Outstanding {
                dst,
                slot,
                deadline,
            },
        );
        self.unsent.insert(id, key);
        if let Some(t) = deadline {
            self.deadlines.insert((t, id));
        }
        id
    }

    /// Forgets a get everywhere, so it is neither handed out nor timed out again.
    fn take(&mut self, id: GetId) -> Option<Outstanding> {
        let out = self.outstanding.remove(&id)?;
        self.unsent.remove(&id);
        if let Some(t) = out.deadline {
            self.deadlines.remove(&(t, id));
        }
        Some(out)
    }
}

#[derive(Debug)]
enum Phase {
    /// One get at a time over `keys`; `pos` is the key being asked.
    Walk { keys: Vec<Ipv6Addr>, pos: usize },
    /// All fast keys asked at once; `answers[i]` is `None` while key `i` is
    /// outstanding, else the best covering entry it returned.
    Fast {
        answers: Vec<Option<Option<Entry>>>,
        tail: Vec<Ipv6Addr>,
    },
}

#[derive(Debug)]
struct Pending<P> {
    started: Instant,
    packets: Vec<P>,
    gets: u32,
    /// Gets of this resolution still outstanding, cancelled when it finishes.
    ids: Vec<GetId>,
    phase: Phase,
    /// A get of this resolution timed out: a miss proves nothing.
    timed_out: bool,
}

impl<P> Pending<P> {
    fn ask(
        &mut self,
        gets: &mut Gets,
        dst: Ipv6Addr,
        slot: usize,
        key: Ipv6Addr,
        deadline: Option<Instant>,
    ) {
        self.ids.push(gets.issue(dst, slot, key, deadline));
        self.gets = self.gets.saturating_add(1);
    }
}

#[derive(Debug)]
struct CacheSlot {
    entry: Option<Entry>,
    /// `None`: the TTL overflowed `Instant`, i.e. never expires.
    expires: Option<Instant>,
    /// Insertion stamp, for oldest-first eviction.
    gen: u64,
}

impl CacheSlot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| now < t)
    }
}

/// Per-destination cache, bounded, with insertion-order and expiry indexes so
/// eviction never scans.
#[derive(Debug)]
struct Cache {
    slots: HashMap<Ipv6Addr, CacheSlot>,
    by_age: BTreeMap<u64, Ipv6Addr>,
    by_expiry: BTreeSet<(Instant, u64)>,
    next_gen: u64,
    capacity: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            by_age: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            next_gen: 0,
            capacity,
        }
    }

    fn lookup(&self, dst: Ipv6Addr, now: Instant) -> Option<&CacheSlot> {
        self.slots.get(&dst).filter(|s| s.live(now))
    }

    fn remove(&mut self, dst: Ipv6Addr) {
        if let Some(slot) = self.slots.remove(&dst) {
            self.by_age.remove(&slot.gen);
            if let Some(t) = slot.expires {
                self.by_expiry.remove(&(t, slot.gen));
            }
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some(&(t, gen)) = self.by_expiry.first() {
            if t > now {
                break;
            }
            self.by_expiry.remove(&(t, gen));
            if let Some(addr) = self.by_age.remove(&gen) {
                self.slots.remove(&addr);
            }
        }
    }

    fn insert(&mut self, dst: Ipv6Addr, entry: Option<Entry>, ttl: Duration, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.remove(dst);
        if self.slots.len() >= self.capacity {
            self.purge_expired(now);
        }
        while self.slots.len() >= self.capacity {
            match self.by_age.first_key_value() {
                Some((_, &oldest)) => self.remove(oldest),
                None => break,
            }
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1);
        let expires = now.checked_add(ttl);
        if let Some(t) = expires {
            self.by_expiry.insert((t, gen));
        }
        self.by_age.insert(gen, dst);
        self.slots.insert(
            dst,
            CacheSlot {
                entry,
                expires,
                gen,
            },
        );
    }

    /// Removes cached hits matching `f`; returns how many.
    fn remove_hits(&mut self, f: impl Fn(&Entry) -> bool) -> u64 {
        let doomed: Vec<Ipv6Addr> = self
            .slots
            .iter()
            .filter(|(_, s)| s.entry.as_ref().is_some_and(&f))
            .map(|(a, _)| *a)
            .collect();
        for a in &doomed {
            self.remove(*a);
        }
        doomed.len() as u64
    }
}

/// What an answer means for its resolution.
enum Step {
    Wait,
    Ask(usize, Ipv6Addr),
    Finish(Option<Entry>),
}

/// The destination-to-site resolver; see the module docs.
#[derive(Debug)]
pub struct Resolver<P> {
    cfg: ResolverConfig,
    /// Normalized lengths in fast mode, `None` in reference mode.
    lengths: Option<Vec<u8>>,
    cache: Cache,
    pending: HashMap<Ipv6Addr, Pending<P>>,
    gets: Gets,
    resolved: VecDeque<Resolved<P>>,
    stats: ResolverStats,
}

impl<P> Resolver<P> {
    pub fn new(cfg: ResolverConfig) -> Self {
        let lengths = match &cfg.mode {
            Mode::Reference => None,
            Mode::Fast { lengths } => Some(normalize(lengths)),
        };
        Self {
            cache: Cache::new(cfg.cache_capacity),
            lengths,
            cfg,
            pending: HashMap::new(),
            gets: Gets::default(),
            resolved: VecDeque::new(),
            stats: ResolverStats::default(),
        }
    }

    /// Routes a packet: from cache if possible, else queues it behind the
    /// (possibly new) resolution of `dst`.
    pub fn resolve(&mut self, dst: Ipv6Addr, packet: P, now: Instant) -> Resolution<P> {
        self.cache.purge_expired(now);
        if let Some(slot) = self.cache.lookup(dst, now) {
            return match &slot.entry {
                Some(e) => {
                    self.stats.cached_hits += 1;
                    Resolution::Hit(e.clone(), packet)
                }
                None => {
                    self.stats.cached_misses += 1;
                    Resolution::Miss(packet)
                }
            };
        }
        if !self.pending.contains_key(&dst) {
            if self.pending.len() >= self.cfg.max_pending {
                self.stats.queue_drops += 1;
                return Resolution::Dropped(packet);
            }
            self.start(dst, now);
        }
        match self.pending.get_mut(&dst) {
            Some(p) if p.packets.len() < self.cfg.queue_per_destination => {
                p.packets.push(packet);
                Resolution::Queued
            }
            _ => {
                self.stats.queue_drops += 1;
                Resolution::Dropped(packet)
            }
        }
    }

    /// Starts resolving without a packet (e.g. to pre-warm); no-op if cached or pending.
    pub fn prefetch(&mut self, dst: Ipv6Addr, now: Instant) {
        self.cache.purge_expired(now);
        if self.cache.lookup(dst, now).is_some()
            || self.pending.contains_key(&dst)
            || self.pending.len() >= self.cfg.max_pending
        {
            return;
        }
        self.start(dst, now);
    }

    fn start(&mut self, dst: Ipv6Addr, now: Instant) {
        let deadline = now.checked_add(self.cfg.get_timeout);
        let (phase, first): (Phase, Vec<Ipv6Addr>) = match &self.lengths {
            None => {
                let keys = reference_keys(dst);
                let first = keys.iter().take(1).copied().collect();
                (Phase::Walk { keys, pos: 0 }, first)
            }
            Some(lengths) => {
                let keys = fast_keys_normalized(dst, lengths);
                let tail = tail_keys(dst, lengths);
                if keys.is_empty() {
                    // No lengths configured: this is a plain reference walk.
                    let first = tail.iter().take(1).copied().collect();
                    (Phase::Walk { keys: tail, pos: 0 }, first)
                } else {
                    let answers = vec![None; keys.len()];
                    (Phase::Fast { answers, tail }, keys)
                }
            }
        };
        let mut p = Pending {
            started: now,
            packets: Vec::new(),
            gets: 0,
            ids: Vec::new(),
            phase,
            timed_out: false,
        };
        for (slot, key) in first.into_iter().enumerate() {
            p.ask(&mut self.gets, dst, slot, key, deadline);
        }
        self.stats.gets_issued += u64::from(p.gets);
        self.pending.insert(dst, p);
    }

    /// A get to issue for this key.
    pub fn poll_get(&mut self) -> Option<(GetId, Ipv6Addr)> {
        self.gets.unsent.pop_first()
    }

    /// Answer to a get (empty = nothing under that key). Unknown/late ids are ignored.
    pub fn handle_get(&mut self, id: GetId, entries: Vec<Entry>, now: Instant) {
        self.on_answer(id, &entries, now);
    }

    fn on_answer(&mut self, id: GetId, entries: &[Entry], now: Instant) {
        let Some(out) = self.gets.take(id) else {
            return;
        };
        let dst = out.dst;
        let Some(p) = self.pending.get_mut(&dst) else {
            return;
        };
        p.ids.retain(|&i| i != id);
        let best = best_cover(entries, dst).cloned();
        let step = match &mut p.phase {
            Phase::Walk { keys, pos } => {
                if out.slot != *pos {
                    Step::Wait
                } else if best.is_some() {
                    Step::Finish(best)
                } else {
                    *pos += 1;
                    match keys.get(*pos) {
                        Some(&k) => Step::Ask(*pos, k),
                        None => Step::Finish(None),
                    }
                }
            }
            Phase::Fast { answers, tail } => {
                if let Some(a) = answers.get_mut(out.slot) {
                    *a = Some(best);
                }
                match fast_verdict(answers) {
                    None => Step::Wait,
                    Some(Some(e)) => Step::Finish(Some(e)),
                    Some(None) => {
                        // Nothing at any aggregation length: walk the short tail.
                        let keys = std::mem::take(tail);
                        match keys.first().copied() {
                            None => Step::Finish(None),
                            Some(k) => {
                                p.phase = Phase::Walk { keys, pos: 0 };
                                Step::Ask(0, k)
                            }
                        }
                    }
                }
            }
        };
        match step {
            Step::Wait => {}
            Step::Ask(slot, key) => {
                let deadline = now.checked_add(self.cfg.get_timeout);
                p.ask(&mut self.gets, dst, slot, key, deadline);
                self.stats.gets_issued += 1;
            }
            Step::Finish(result) => self.finish(dst, result, now),
        }
    }

    fn finish(&mut self, dst: Ipv6Addr, result: Option<Entry>, now: Instant) {
        let Some(p) = self.pending.remove(&dst) else {
            return;
        };
        // Cancel the rest so they are neither handed out nor timed out.
        for id in p.ids {
            self.gets.take(id);
        }
        let latency = now.saturating_duration_since(p.started);
        let resolved = match result {
            Some(entry) => {
                self.stats.hits += 1;
                self.cache
                    .insert(dst, Some(entry.clone()), self.cfg.hit_ttl, now);
                Resolved::Found {
                    dst,
                    entry,
                    packets: p.packets,
                    gets: p.gets,
                    latency,
                }
            }
            None => {
                self.stats.misses += 1;
                if p.timed_out {
                    self.stats.inconclusive_misses += 1;
                } else {
                    self.cache.insert(dst, None, self.cfg.miss_ttl, now);
                }
                Resolved::NotFound {
                    dst,
                    packets: p.packets,
                    gets: p.gets,
                    latency,
                }
            }
        };
        self.resolved.push_back(resolved);
    }

    pub fn poll_resolved(&mut self) -> Option<Resolved<P>> {
        self.resolved.pop_front()
    }

    /// Earliest get deadline. Deadlines run from when the get was queued
    /// (`poll_get` carries no time), so drivers should poll promptly.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.gets.deadlines.first().map(|&(t, _)| t)
    }

    /// Gets past get_timeout count as empty answers (get_timeouts++).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.cache.purge_expired(now);
        while let Some(&(t, id)) = self.gets.deadlines.first() {
            if t > now {
                break;
            }
            // Remove first so the loop always progresses.
            self.gets.deadlines.remove(&(t, id));
            self.stats.get_timeouts += 1;
            if let Some(p) = self
                .gets
                .outstanding
                .get(&id)
                .and_then(|o| self.pending.get_mut(&o.dst))
            {
                p.timed_out = true;
            }
            self.on_answer(id, &[], now);
        }
    }

    /// The owner said "not mine" / the prefix moved: forget cached hits whose
    /// entry.prefix == prefix, so the next packet re-resolves at once.
    pub fn invalidate_prefix(&mut self, prefix: Ipv6Net) {
        let target = prefix.trunc();
        self.stats.invalidations += self.cache.remove_hits(|e| e.prefix.trunc() == target);
    }

    /// Forget cached hits pointing at this endpoint (its site is gone).
    pub fn invalidate_endpoint(&mut self, endpoint: SocketAddr) {
        self.stats.invalidations += self.cache.remove_hits(|e| e.endpoint == endpoint);
    }

    /// `Some(Some(e))` hit, `Some(None)` cached miss, `None` not cached / expired.
    pub fn cached(&self, dst: Ipv6Addr, now: Instant) -> Option<Option<&Entry>> {
        self.cache.lookup(dst, now).map(|s| s.entry.as_ref())
    }

    pub fn stats(&self) -> ResolverStats {
        ResolverStats {
            pending: self.pending.len(),
            cached: self.cache.slots.len(),
            ..self.stats.clone()
        }
    }
}

/// Fast-mode verdict over answers ordered longest key first: `None` to wait,
/// `Some(found)` once final (see the module docs for why).
fn fast_verdict(answers: &[Option<Option<Entry>>]) -> Option<Option<Entry>> {
    for a in answers {
        match a {
            None => return None,
            Some(Some(e)) => return Some(Some(e.clone())),
            Some(None) => {}
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    type Dht = HashMap<Ipv6Addr, Vec<Entry>>;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn entry(prefix: Ipv6Net, i: usize, seq: u64) -> Entry {
        Entry {
            prefix,
            endpoint: SocketAddr::new(
                std::net::IpAddr::V6(Ipv6Addr::LOCALHOST),
                1000 + (i % 60000) as u16,
            ),
            owner: format!("site{i}"),
            seq,
        }
    }

    fn publish(dht: &mut Dht, e: &Entry, mode: &Mode) {
        for k in publish_keys(e.prefix, mode) {
            dht.entry(k).or_default().push(e.clone());
        }
    }

    fn naive(all: &[Entry], dst: Ipv6Addr) -> Option<Entry> {
        let mut best: Option<&Entry> = None;
        for e in all.iter().filter(|e| e.prefix.contains(&dst)) {
            let better = match best {
                None => true,
                Some(b) => (e.prefix.prefix_len(), e.seq) > (b.prefix.prefix_len(), b.seq),
            };
            if better {
                best = Some(e);
            }
        }
        best.cloned()
    }

    fn cfg(mode: Mode) -> ResolverConfig {
        ResolverConfig {
            mode,
            ..ResolverConfig::default()
        }
    }

    fn fast() -> Mode {
        ResolverConfig::default().mode
    }

    /// Answers every get from the map until nothing is left; returns what finished.
    fn drive<P>(r: &mut Resolver<P>, dht: &Dht, now: Instant) -> Vec<Resolved<P>> {
        while let Some((id, key)) = r.poll_get() {
            r.handle_get(id, dht.get(&key).cloned().unwrap_or_default(), now);
        }
        std::iter::from_fn(|| r.poll_resolved()).collect()
    }

    fn found(res: &Resolved<u32>) -> Option<&Entry> {
        match res {
            Resolved::Found { entry, .. } => Some(entry),
            Resolved::NotFound { .. } => None,
        }
    }

    fn truncation_len(k: Ipv6Addr) -> u8 {
        let v = u128::from(k);
        if v == 0 {
            0
        } else {
            (128 - v.trailing_zeros()) as u8
        }
    }

    #[test]
    fn reference_keys_examples() {
        assert_eq!(reference_keys(addr("::")), vec![addr("::")]);
        assert_eq!(reference_keys(addr("::1")), vec![addr("::1"), addr("::")]);
        assert_eq!(
            reference_keys(addr("fd6e::3")),
            vec![
                addr("fd6e::3"),
                addr("fd6e::2"),
                addr("fd6e::"),
                addr("fd6c::"),
                addr("fd68::"),
                addr("fd60::"),
                addr("fd40::"),
                addr("fd00::"),
                addr("fc00::"),
                addr("f800::"),
                addr("f000::"),
                addr("e000::"),
                addr("c000::"),
                addr("8000::"),
                addr("::"),
            ]
        );
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let a = Ipv6Addr::from(rng.random::<u128>() >> rng.random_range(0..128));
            let keys = reference_keys(a);
            assert_eq!(keys.len(), u128::from(a).count_ones() as usize + 1);
            assert_eq!(keys[0], a);
            assert_eq!(*keys.last().unwrap(), Ipv6Addr::UNSPECIFIED);
            for w in keys.windows(2) {
                assert!(u128::from(w[0]) > u128::from(w[1]));
            }
            for k in keys {
                assert_eq!(
                    truncate(a, truncation_len(k)),
                    k,
                    "{k} not a truncation of {a}"
                );
            }
        }
    }

    #[test]
    fn fast_and_publish_keys() {
        let d = addr("fd6e:1:b:c:d::1");
        let want = vec![addr("fd6e:1:b:c::"), addr("fd6e:1:b::"), addr("fd6e:1::")];
        assert_eq!(fast_keys(d, &[32, 40, 48, 56, 64]), want);
        assert_eq!(fast_keys(d, &[200, 64, 32, 48, 56, 40, 40]), want);
        assert_eq!(fast_keys(d, &[]), Vec::<Ipv6Addr>::new());
        let f = fast();
        assert_eq!(
            publish_keys(net("fd6e:1:b:c::/62"), &f),
            vec![addr("fd6e:1:b:c::"), addr("fd6e:1:b::")]
        );
        assert_eq!(
            publish_keys(net("fd6e:1:b::/48"), &f),
            vec![addr("fd6e:1:b::")]
        );
        assert_eq!(publish_keys(net("fd6e::/20"), &f), vec![addr("fd6e::")]);
        assert_eq!(
            publish_keys(net("fd6e:1:b:c::/62"), &Mode::Reference),
            vec![addr("fd6e:1:b:c::")]
        );
        // Host bits in the prefix do not leak into keys.
        assert_eq!(
            publish_keys(net("fd6e:1:b:c::5/62"), &Mode::Reference),
            vec![addr("fd6e:1:b:c::")]
        );
        assert_eq!(tail_keys(d, &[32, 40]), reference_keys(addr("fd6e::")));
    }

    fn random_inside(rng: &mut StdRng, p: Ipv6Net) -> Ipv6Addr {
        let host = rng.random::<u128>() & !mask(p.prefix_len());
        Ipv6Addr::from(u128::from(p.network()) | host)
    }

    fn random_prefixes(rng: &mut StdRng, n: usize) -> Vec<Entry> {
        let bases: Vec<Ipv6Addr> = vec![
            Ipv6Addr::from(rng.random::<u128>()),
            Ipv6Addr::from(rng.random::<u128>()),
            addr("fd6e::"),
            addr("2001:db8:ffff:ffff::"),
        ];
        let mut nets: Vec<Ipv6Net> = Vec::new();
        while nets.len() < n {
            let roll = rng.random_range(0..10);
            let candidate = if roll < 3 || nets.is_empty() {
                let b = bases[rng.random_range(0..bases.len())];
                let len = rng.random_range(16..=128);
                let base = Ipv6Net::new(b, rng.random_range(16..=64)).unwrap();
                let a = random_inside(rng, base);
                Ipv6Net::new(a, len).unwrap().trunc()
            } else if roll < 5 {
                // Same network address, another length.
                let p = nets[rng.random_range(0..nets.len())];
                let len = rng.random_range(p.prefix_len().max(16)..=128);
                Ipv6Net::new(p.network(), len).unwrap()
            } else {
                // Nested inside an existing prefix.
                let p = nets[rng.random_range(0..nets.len())];
                let a = random_inside(rng, p);
                let len = rng.random_range(p.prefix_len()..=128);
                Ipv6Net::new(a, len).unwrap().trunc()
            };
            if !nets.contains(&candidate) {
                nets.push(candidate);
            }
        }
        let mut entries: Vec<Entry> = nets
            .iter()
            .enumerate()
            .map(|(i, p)| entry(*p, i, i as u64 + 10))
            .collect();
        // A few contested prefixes: the highest seq must win.
        for j in 0..10 {
            let p = nets[rng.random_range(0..nets.len())];
            entries.push(entry(
                p,
                n + j,
                if j % 2 == 0 {
                    1_000_000 + j as u64
                } else {
                    j as u64
                },
            ));
        }
        entries
    }

    struct Figures {
        resolutions: u64,
        gets: u64,
        max: u32,
        found: u64,
        found_gets: u64,
    }

    fn check_mode(mode: Mode, seed: u64) -> Figures {
        let mut rng = StdRng::seed_from_u64(seed);
        let all = random_prefixes(&mut rng, 400);
        let mut dht = Dht::new();
        for e in &all {
            publish(&mut dht, e, &mode);
        }
        let mut dsts = Vec::new();
        for _ in 0..4000 {
            let roll = rng.random_range(0..10);
            let d = if roll < 8 {
                let p = all[rng.random_range(0..all.len())].prefix;
                random_inside(&mut rng, p)
            } else if roll < 9 {
                random_inside(&mut rng, net("fd6e::/16"))
            } else {
                Ipv6Addr::from(rng.random::<u128>())
            };
            dsts.push(d);
            if rng.random_range(0..20) == 0 {
                dsts.push(d); // repeats: queue joins and cache hits
            }
        }
        let mut r: Resolver<u32> = Resolver::new(ResolverConfig {
            mode,
            max_pending: 100,
            ..ResolverConfig::default()
        });
        let now = Instant::now();
        let mut fig = Figures {
            resolutions: 0,
            gets: 0,
            max: 0,
            found: 0,
            found_gets: 0,
        };
        let mut queued = 0usize;
        let mut delivered = 0usize;
        for (batch_no, batch) in dsts.chunks(64).enumerate() {
            for (i, &d) in batch.iter().enumerate() {
                let pkt = (batch_no * 64 + i) as u32;
                match r.resolve(d, pkt, now) {
                    Resolution::Hit(e, p) => {
                        assert_eq!(Some(e), naive(&all, d));
                        assert_eq!(p, pkt);
                    }
                    Resolution::Miss(_) => assert_eq!(naive(&all, d), None),
                    Resolution::Queued => queued += 1,
                    Resolution::Dropped(_) => panic!("dropped"),
                }
            }
            let mut pool: Vec<(GetId, Ipv6Addr)> = Vec::new();
            loop {
                while let Some(g) = r.poll_get() {
                    pool.push(g);
                }
                if pool.is_empty() {
                    break;
                }
                let (id, key) = pool.swap_remove(rng.random_range(0..pool.len()));
                r.handle_get(id, dht.get(&key).cloned().unwrap_or_default(), now);
            }
            while let Some(res) = r.poll_resolved() {
                let (d, got, packets, gets) = match res {
                    Resolved::Found {
                        dst,
                        entry,
                        packets,
                        gets,
                        ..
                    } => (dst, Some(entry), packets, gets),
                    Resolved::NotFound {
                        dst, packets, gets, ..
                    } => (dst, None, packets, gets),
                };
                assert_eq!(got, naive(&all, d), "dst {d}");
                for p in &packets {
                    assert_eq!(dsts[*p as usize], d);
                }
                delivered += packets.len();
                fig.resolutions += 1;
                fig.gets += u64::from(gets);
                fig.max = fig.max.max(gets);
                if got.is_some() {
                    fig.found += 1;
                    fig.found_gets += u64::from(gets);
                }
            }
        }
        assert_eq!(queued, delivered);
        let s = r.stats();
        assert_eq!(s.pending, 0);
        assert_eq!(s.gets_issued, fig.gets);
        assert_eq!(s.hits + s.misses, fig.resolutions);
        assert_eq!(r.poll_timeout(), None);
        fig
    }

    #[test]
    fn random_prefixes_match_naive_longest_match() {
        let modes = [
            ("reference", Mode::Reference),
            ("fast default [32..64/8]", fast()),
            (
                "fast [0,16,32,48,64,96,128]",
                Mode::Fast {
                    lengths: vec![0, 16, 32, 48, 64, 96, 128],
                },
            ),
        ];
        let mut avg = Vec::new();
        for (seed, (name, mode)) in modes.into_iter().enumerate() {
            for round in 0..2 {
                let f = check_mode(mode.clone(), 100 + seed as u64 * 10 + round);
                let a = f.gets as f64 / f.resolutions as f64;
                let miss = f.resolutions - f.found;
                println!(
                    "{name}: {} resolutions, gets/resolution avg {a:.2} max {}; found avg {:.2}, not found avg {:.2}",
                    f.resolutions,
                    f.max,
                    f.found_gets as f64 / f.found.max(1) as f64,
                    (f.gets - f.found_gets) as f64 / miss.max(1) as f64,
                );
                if round == 0 {
                    avg.push(a);
                }
            }
        }
        assert!(
            avg[0] > 3.0 * avg[1],
            "reference should need many more gets: {avg:?}"
        );
    }

    #[test]
    fn same_network_48_and_64() {
        for mode in [Mode::Reference, fast()] {
            let mut dht = Dht::new();
            let e48 = entry(net("fd6e:0:b::/48"), 1, 1);
            let e64 = entry(net("fd6e:0:b::/64"), 2, 1);
            publish(&mut dht, &e48, &mode);
            publish(&mut dht, &e64, &mode);
            let mut r: Resolver<u32> = Resolver::new(cfg(mode.clone()));
            let now = Instant::now();
            for (d, want) in [
                ("fd6e:0:b::5", Some(&e64)),
                ("fd6e:0:b:0:ffff::1", Some(&e64)),
                ("fd6e:0:b:1::5", Some(&e48)),
                ("fd6e:0:b:ff00::", Some(&e48)),
                ("fd6e:0:c::1", None),
            ] {
                assert_eq!(r.resolve(addr(d), 7, now), Resolution::Queued);
                let out = drive(&mut r, &dht, now);
                assert_eq!(out.len(), 1);
                assert_eq!(found(&out[0]), want, "{mode:?} {d}");
            }
            // The cached /48 of one destination does not shadow the /64 of another.
            assert_eq!(r.resolve(addr("fd6e:0:b::6"), 1, now), Resolution::Queued);
            assert_eq!(found(&drive(&mut r, &dht, now)[0]), Some(&e64));
        }
    }

    #[test]
    fn cache_ttls_and_invalidation() {
        for mode in [Mode::Reference, fast()] {
            let mut dht = Dht::new();
            let e = entry(net("fd6e:0:b::/48"), 1, 1);
            publish(&mut dht, &e, &mode);
            let mut r: Resolver<u32> = Resolver::new(cfg(mode));
            let t0 = Instant::now();
            let d = addr("fd6e:0:b::1");
            let out_d = addr("fd6e:0:c::1");
            assert_eq!(r.resolve(d, 1, t0), Resolution::Queued);
            assert_eq!(r.resolve(out_d, 2, t0), Resolution::Queued);
            assert_eq!(drive(&mut r, &dht, t0).len(), 2);
            let s4 = t0 + Duration::from_millis(4999);
            assert_eq!(r.cached(out_d, s4), Some(None));
            assert_eq!(r.resolve(out_d, 4, s4), Resolution::Miss(4));
            // Miss expires after miss_ttl.
            let s5 = t0 + Duration::from_secs(5);
            assert_eq!(r.cached(out_d, s5), None);
            assert_eq!(r.resolve(out_d, 5, s5), Resolution::Queued);
            assert!(matches!(
                drive(&mut r, &dht, s5)[..],
                [Resolved::NotFound { .. }]
            ));
            let s59 = t0 + Duration::from_secs(59);
            assert_eq!(r.cached(d, s59), Some(Some(&e)));
            assert_eq!(r.resolve(d, 3, s59), Resolution::Hit(e.clone(), 3));
            // Hit expires after hit_ttl.
            let s60 = t0 + Duration::from_secs(60);
            assert_eq!(r.cached(d, s60), None);
            assert_eq!(r.resolve(d, 6, s60), Resolution::Queued);
            let out = drive(&mut r, &dht, s60);
            assert_eq!(found(&out[0]), Some(&e));
            assert_eq!(r.resolve(d, 7, s60), Resolution::Hit(e.clone(), 7));
            // Invalidations force a fresh resolution.
            r.invalidate_prefix(net("fd6e:0:b::/64")); // other prefix: no effect
            assert_eq!(r.cached(d, s60), Some(Some(&e)));
            r.invalidate_prefix(net("fd6e:0:b::/48"));
            assert_eq!(r.cached(d, s60), None);
            assert_eq!(r.resolve(d, 8, s60), Resolution::Queued);
            drive(&mut r, &dht, s60);
            assert_eq!(r.resolve(d, 9, s60), Resolution::Hit(e.clone(), 9));
            r.invalidate_endpoint(e.endpoint);
            assert_eq!(r.resolve(d, 10, s60), Resolution::Queued);
            drive(&mut r, &dht, s60);
            let s = r.stats();
            assert_eq!(s.invalidations, 2);
            assert_eq!((s.cached_hits, s.cached_misses), (3, 1));
            assert_eq!((s.hits, s.misses), (4, 2));
        }
    }

    #[test]
    fn cache_capacity_evicts_expired_then_oldest() {
        let mut dht = Dht::new();
        publish(&mut dht, &entry(net("fd6e::/16"), 1, 1), &Mode::Reference);
        let mut r: Resolver<u32> = Resolver::new(ResolverConfig {
            cache_capacity: 2,
            ..cfg(Mode::Reference)
        });
        let t0 = Instant::now();
        let (a, b, c, d) = (
            addr("fd00::1"),
            addr("fd6e::2"),
            addr("fd6e::3"),
            addr("fd6e::4"),
        );
        for x in [a, b] {
            r.prefetch(x, t0);
        }
        drive(&mut r, &dht, t0);
        assert_eq!(r.stats().cached, 2);
        let t6 = t0 + Duration::from_secs(6); // a (miss) expired, b live
        r.prefetch(c, t6);
        drive(&mut r, &dht, t6);
        assert!(r.cached(b, t6).is_some() && r.cached(c, t6).is_some());
        r.prefetch(d, t6);
        drive(&mut r, &dht, t6);
        assert_eq!(r.cached(b, t6), None); // oldest evicted
        assert!(r.cached(c, t6).is_some() && r.cached(d, t6).is_some());
        assert_eq!(r.stats().cached, 2);
        // Prefetch of a cached destination is a no-op.
        r.prefetch(d, t6);
        assert_eq!(r.poll_get(), None);
    }

    #[test]
    fn queue_overflow_and_max_pending() {
        for mode in [Mode::Reference, fast()] {
            let mut dht = Dht::new();
            let e = entry(net("fd6e::/16"), 1, 1);
            publish(&mut dht, &e, &mode);
            let mut r: Resolver<u32> = Resolver::new(ResolverConfig {
                queue_per_destination: 2,
                max_pending: 2,
                ..cfg(mode.clone())
            });
            let now = Instant::now();
            let (d1, d2, d3) = (addr("fd6e:1:2:3::1"), addr("fd6e::2"), addr("fd6e::3"));
            assert_eq!(r.resolve(d1, 1, now), Resolution::Queued);
            assert_eq!(r.resolve(d1, 2, now), Resolution::Queued);
            assert_eq!(r.resolve(d1, 3, now), Resolution::Dropped(3));
            let first_gets: Vec<_> = std::iter::from_fn(|| r.poll_get()).collect();
            let expect = match &mode {
                Mode::Reference => 1,
                Mode::Fast { lengths } => fast_keys(d1, lengths).len(),
            };
            assert_eq!(first_gets.len(), expect, "one set of gets per destination");
            assert_eq!(r.resolve(d2, 4, now), Resolution::Queued);
            assert_eq!(r.resolve(d3, 5, now), Resolution::Dropped(5));
            r.prefetch(d3, now);
            let s = r.stats();
            assert_eq!((s.queue_drops, s.pending), (2, 2));
            for (id, key) in first_gets {
                r.handle_get(id, dht.get(&key).cloned().unwrap_or_default(), now);
            }
            let mut out = drive(&mut r, &dht, now);
            out.sort_by_key(|x| match x {
                Resolved::Found { packets, .. } | Resolved::NotFound { packets, .. } => {
                    packets.clone()
                }
            });
            match &out[..] {
                [Resolved::Found {
                    dst: x,
                    packets: p1,
                    ..
                }, Resolved::Found {
                    dst: y,
                    packets: p2,
                    ..
                }] => {
                    assert_eq!(
                        (*x, p1.clone(), *y, p2.clone()),
                        (d1, vec![1, 2], d2, vec![4])
                    );
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(r.stats().pending, 0);
        }
    }

    #[test]
    fn reference_get_timeout_continues_walk() {
        let mut dht = Dht::new();
        let e = entry(net("fd6e:0:b::/48"), 1, 1);
        publish(&mut dht, &e, &Mode::Reference);
        let mut r: Resolver<u32> = Resolver::new(cfg(Mode::Reference));
        let t0 = Instant::now();
        let d = addr("fd6e:0:b::1");
        assert_eq!(r.resolve(d, 1, t0), Resolution::Queued);
        let (lost, key) = r.poll_get().unwrap();
        assert_eq!(key, d);
        assert_eq!(r.poll_get(), None); // sequential
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        r.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(r.poll_get(), None);
        let t2 = t0 + Duration::from_secs(2);
        r.handle_timeout(t2);
        assert_eq!(r.stats().get_timeouts, 1);
        let (id, key) = r.poll_get().unwrap();
        assert_eq!(key, addr("fd6e:0:b::"));
        let t25 = t2 + Duration::from_millis(500);
        r.handle_get(id, dht[&key].clone(), t25);
        match r.poll_resolved() {
            Some(Resolved::Found {
                entry,
                packets,
                gets,
                latency,
                ..
            }) => {
                assert_eq!(
                    (entry, packets, gets, latency),
                    (e.clone(), vec![1], 2, Duration::from_millis(2500))
                );
            }
            other => panic!("{other:?}"),
        }
        // The late answer of the timed-out get is ignored.
        let before = r.stats();
        r.handle_get(lost, vec![entry(net("fd6e:0:b::1/128"), 9, 9)], t25);
        r.handle_get(GetId(12345), vec![], t25);
        assert_eq!(r.poll_resolved(), None);
        assert_eq!(r.poll_get(), None);
        assert_eq!(r.stats(), before);
        assert_eq!(r.cached(d, t25), Some(Some(&e)));
    }

    #[test]
    fn a_miss_with_a_timed_out_get_is_not_cached() {
        let mut r: Resolver<u32> = Resolver::new(cfg(fast()));
        let t0 = Instant::now();
        let d = addr("fd6e:1:b:c:d::1");
        assert_eq!(r.resolve(d, 1, t0), Resolution::Queued);
        // The DHT answers nothing in time, tail walk included.
        let mut now = t0;
        let done = loop {
            if let Some(done) = r.poll_resolved() {
                break done;
            }
            let _: Vec<_> = std::iter::from_fn(|| r.poll_get()).collect();
            now = r.poll_timeout().expect("a get is outstanding");
            r.handle_timeout(now);
        };
        assert!(matches!(done, Resolved::NotFound { .. }));
        assert_eq!(r.stats().inconclusive_misses, 1);
        assert_eq!(r.cached(d, now), None, "an inconclusive miss was cached");
        // The next packet resolves afresh.
        assert_eq!(r.resolve(d, 2, now), Resolution::Queued);
        assert!(r.poll_get().is_some());
        // A miss every get answered is cached.
        let e = addr("fd6e:7:7::1");
        assert_eq!(r.resolve(e, 3, now), Resolution::Queued);
        let dht = Dht::new();
        let done = drive(&mut r, &dht, now);
        assert!(done
            .iter()
            .any(|x| matches!(x, Resolved::NotFound { dst, .. } if *dst == e)));
        assert_eq!(r.cached(e, now), Some(None));
    }

    #[test]
    fn fast_get_timeout_finishes() {
        let mode = fast();
        let mut dht = Dht::new();
        let e = entry(net("fd6e:1:b::/48"), 1, 1);
        publish(&mut dht, &e, &mode);
        let mut r: Resolver<u32> = Resolver::new(cfg(mode));
        let t0 = Instant::now();
        let d = addr("fd6e:1:b:c:d::1");
        assert_eq!(r.resolve(d, 1, t0), Resolution::Queued);
        let gets: Vec<_> = std::iter::from_fn(|| r.poll_get()).collect();
        assert_eq!(
            gets.iter().map(|g| g.1).collect::<Vec<_>>(),
            fast_keys(d, &[32, 40, 48, 56, 64])
        );
        // The /64 key never answers; the /48 entry is not final until it times out.
        for &(id, key) in &gets[1..] {
            r.handle_get(id, dht.get(&key).cloned().unwrap_or_default(), t0);
        }
        assert_eq!(r.poll_resolved(), None);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(r.poll_timeout(), Some(t2));
        r.handle_timeout(t2);
        match r.poll_resolved() {
            Some(Resolved::Found {
                entry,
                gets,
                latency,
                ..
            }) => {
                assert_eq!(
                    (entry, gets, latency),
                    (e.clone(), 3, Duration::from_secs(2))
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stats().get_timeouts, 1);
        assert_eq!(r.poll_timeout(), None);

        // A covering answer at the longest key is final at once; the other
        // gets are cancelled and never handed out.
        let e64 = entry(net("fd6e:1:b:d::/64"), 2, 1);
        let d2 = addr("fd6e:1:b:d::9");
        assert_eq!(r.resolve(d2, 2, t2), Resolution::Queued);
        let (id, key) = r.poll_get().unwrap();
        assert_eq!(key, addr("fd6e:1:b:d::"));
        r.handle_get(id, vec![e64.clone(), e.clone()], t2);
        assert!(
            matches!(r.poll_resolved(), Some(Resolved::Found { entry, gets: 3, .. }) if entry == e64)
        );
        assert_eq!(r.poll_get(), None);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn fast_falls_back_to_tail_for_short_prefixes() {
        let mode = fast();
        let mut dht = Dht::new();
        let e = entry(net("fd6e::/16"), 1, 1);
        publish(&mut dht, &e, &mode);
        let mut r: Resolver<u32> = Resolver::new(cfg(mode));
        let now = Instant::now();
        r.prefetch(addr("fd6e:1:2:3::4"), now);
        let out = drive(&mut r, &dht, now);
        // 3 fast keys (/64, /48, /32) then tail fd6e:0::/..: fd6e:: at once.
        assert!(
            matches!(&out[..], [Resolved::Found { entry, gets: 4, packets, .. }] if *entry == e && packets.is_empty())
        );
    }

    #[test]
    fn odd_configs_do_not_panic() {
        let configs = [
            ResolverConfig {
                mode: Mode::Fast { lengths: vec![] },
                hit_ttl: Duration::MAX,
                miss_ttl: Duration::MAX,
                get_timeout: Duration::MAX,
                queue_per_destination: 0,
                max_pending: 1,
                cache_capacity: 0,
            },
            ResolverConfig {
                mode: Mode::Fast {
                    lengths: vec![255, 129, 128, 0],
                },
                max_pending: 0,
                ..ResolverConfig::default()
            },
            ResolverConfig {
                mode: Mode::Fast {
                    lengths: vec![255, 128, 0],
                },
                ..ResolverConfig::default()
            },
        ];
        let mut dht = Dht::new();
        let e = entry(net("::/0"), 1, 1);
        publish(&mut dht, &e, &Mode::Fast { lengths: vec![0] });
        for c in configs {
            let mut r: Resolver<u32> = Resolver::new(c);
            let now = Instant::now();
            for a in ["::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
                let _ = r.resolve(addr(a), 1, now);
                r.prefetch(addr(a), now);
                r.handle_timeout(now);
                drive(&mut r, &dht, now);
                let _ = r.resolve(addr(a), 2, now);
            }
            r.handle_timeout(now + Duration::from_secs(1000));
            r.invalidate_prefix(net("::/0"));
            let _ = r.stats();
        }
    }
}
