//! Longest-prefix-match table over IPv6 prefixes.
//!
//! One hash map per prefix length plus a bitmap of the lengths in use: a lookup
//! probes only populated lengths, longest first, so its cost is bounded by the
//! number of distinct lengths (a handful in practice), not by table size.
//! Keys come only from authenticated announcements and configuration, never
//! from packets, so the fast unkeyed Fx hash is safe here (it runs several
//! times per forwarded packet).

use ipnet::Ipv6Net;
use rustc_hash::FxHashMap as HashMap;
use std::net::Ipv6Addr;

#[derive(Debug, Clone)]
pub struct RoutingTable<V> {
    by_len: Vec<HashMap<u128, V>>,
    /// Bit `l` of word `l / 64` is set when a prefix of length `l` is present.
    lengths: [u64; 3],
    len: usize,
}

impl<V> Default for RoutingTable<V> {
    fn default() -> Self {
        Self::new()
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl<V> RoutingTable<V> {
    pub fn new() -> Self {
        RoutingTable {
            by_len: (0..=128).map(|_| HashMap::default()).collect(),
            lengths: [0; 3],
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces the route for `net` (host bits ignored).
    pub fn insert(&mut self, net: Ipv6Net, value: V) -> Option<V> {
        let l = net.prefix_len();
        let key = u128::from(net.network()) & mask(l);
        let old = self.by_len[l as usize].insert(key, value);
        if old.is_none() {
            self.len += 1;
            self.lengths[l as usize / 64] |= 1 << (l % 64);
        }
        old
    }

    pub fn remove(&mut self, net: &Ipv6Net) -> Option<V> {
        let l = net.prefix_len();
        let key = u128::from(net.network()) & mask(l);
        let map = &mut self.by_len[l as usize];
        let old = map.remove(&key);
        if old.is_some() {
            self.len -= 1;
            if map.is_empty() {
                self.lengths[l as usize / 64] &= !(1 << (l % 64));
            }
        }
        old
    }

    pub fn get(&self, net: &Ipv6Net) -> Option<&V> {
        let l = net.prefix_len();
        self.by_len[l as usize].get(&(u128::from(net.network()) & mask(l)))
    }

    /// The longest prefix containing `addr`, and its value.
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<(Ipv6Net, &V)> {
        let a = u128::from(addr);
        for word in (0..3).rev() {
            let mut bits = self.lengths[word];
            while bits != 0 {
                let top = 63 - bits.leading_zeros() as usize;
                bits &= !(1 << top);
                let l = (word * 64 + top) as u8;
                let key = a & mask(l);
                if let Some(v) = self.by_len[l as usize].get(&key) {
                    let net = Ipv6Net::new(Ipv6Addr::from(key), l).ok()?;
                    return Some((net, v));
                }
            }
        }
        None
    }

    /// Removes every route whose value matches; returns the removed prefixes.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&V) -> bool) -> Vec<Ipv6Net> {
        let mut removed = Vec::new();
        for l in 0..=128u8 {
            self.by_len[l as usize].retain(|k, v| {
                let drop = pred(v);
                if drop {
                    if let Ok(net) = Ipv6Net::new(Ipv6Addr::from(*k), l) {
                        removed.push(net);
                    }
                }
                !drop
            });
            if self.by_len[l as usize].is_empty() {
                self.lengths[l as usize / 64] &= !(1 << (l % 64));
            }
        }
        self.len -= removed.len();
        removed
    }

    /// Every route, longest prefixes first.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv6Net, &V)> {
        self.by_len.iter().enumerate().rev().flat_map(|(l, map)| {
            map.iter().filter_map(move |(k, v)| {
                Ipv6Net::new(Ipv6Addr::from(*k), l as u8)
                    .ok()
                    .map(|n| (n, v))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The obviously correct reference: scan everything.
    fn naive(routes: &[(Ipv6Net, u32)], addr: Ipv6Addr) -> Option<(Ipv6Net, u32)> {
        routes
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .copied()
    }

    #[test]
    fn matches_naive_on_random_prefixes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        // Addresses cluster under a few bases so that prefixes actually nest.
        let bases: Vec<u128> = (0..4).map(|_| rng.random()).collect();
        let mut table = RoutingTable::new();
        let mut reference: Vec<(Ipv6Net, u32)> = Vec::new();
        for i in 0..3000u32 {
            let base = bases[rng.random_range(0..bases.len())];
            let noise: u128 = rng.random::<u128>() >> rng.random_range(16..128);
            let len = rng.random_range(0..=128u8);
            let net = Ipv6Net::new(Ipv6Addr::from(base ^ noise), len)
                .unwrap()
                .trunc();
            if rng.random_bool(0.2) {
                let victim = reference
                    .get(rng.random_range(0..reference.len().max(1)))
                    .map(|(n, _)| *n);
                if let Some(v) = victim {
                    assert!(table.remove(&v).is_some());
                    reference.retain(|(n, _)| *n != v);
                }
            }
            table.insert(net, i);
            reference.retain(|(n, _)| *n != net);
            reference.push((net, i));
            assert_eq!(table.len(), reference.len());
        }
        for _ in 0..20_000 {
            let base = bases[rng.random_range(0..bases.len())];
            let addr = Ipv6Addr::from(base ^ (rng.random::<u128>() >> rng.random_range(0..128)));
            let got = table.lookup(addr).map(|(n, v)| (n, *v));
            assert_eq!(got, naive(&reference, addr), "lookup {addr}");
        }
    }

    #[test]
    fn default_route_and_remove_where() {
        let mut t = RoutingTable::new();
        t.insert("::/0".parse().unwrap(), "mgmt");
        t.insert("fd6e:0:a::/48".parse().unwrap(), "gw");
        t.insert("fd6e:0:b::/48".parse().unwrap(), "tun");
        t.insert("fd6e:0:c::/48".parse().unwrap(), "tun");
        assert_eq!(t.lookup("fd6e:0:a::5".parse().unwrap()).unwrap().1, &"gw");
        assert_eq!(t.lookup("2001:db8::1".parse().unwrap()).unwrap().1, &"mgmt");
        let mut gone = t.remove_where(|v| *v == "tun");
        gone.sort();
        assert_eq!(
            gone,
            vec![
                "fd6e:0:b::/48".parse::<Ipv6Net>().unwrap(),
                "fd6e:0:c::/48".parse().unwrap()
            ]
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup("fd6e:0:b::1".parse().unwrap()).unwrap().1, &"mgmt");
        t.remove(&"::/0".parse().unwrap());
        assert!(t.lookup("fd6e:0:b::1".parse().unwrap()).is_none());
        assert_eq!(t.iter().count(), 1);
    }
}
