//! The master: a router over a longest-prefix-match table whose next hops are
//! slaves. [`Master`] is a plain state machine (no I/O, no clock): sessions,
//! control messages and packets go in, verdicts come out. [`driver`] is the
//! tokio task that moves bytes between it and the slaves; [`remote`] carries
//! sessions of slaves in other processes over QUIC.

pub mod driver;
pub mod remote;
pub mod table;

use crate::control::{ControlMessage, SlaveKind};
use crate::packet::{self, IcmpError, Ipv6Packet};
use ipnet::Ipv6Net;
use serde::Serialize;
use std::collections::HashMap;
use std::net::Ipv6Addr;
pub use table::RoutingTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SlaveId(pub u32);

/// Why the master dropped a packet or refused something; labels are stable metric values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    Malformed,
    NoRoute,
    HopLimit,
    TooBig,
    SpoofedSource,
    NotRoutable,
    Unannounced,
    QueueFull,
    RefusedAnnounce,
    ToRouter,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::Malformed,
        DropReason::NoRoute,
        DropReason::HopLimit,
        DropReason::TooBig,
        DropReason::SpoofedSource,
        DropReason::NotRoutable,
        DropReason::Unannounced,
        DropReason::QueueFull,
        DropReason::RefusedAnnounce,
        DropReason::ToRouter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoRoute => "no_route",
            DropReason::HopLimit => "hop_limit",
            DropReason::TooBig => "too_big",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotRoutable => "not_routable",
            DropReason::Unannounced => "unannounced",
            DropReason::QueueFull => "queue_full",
            DropReason::RefusedAnnounce => "refused_announce",
            DropReason::ToRouter => "to_router",
        }
    }
}

/// Who is on the other end of a session and what it may announce.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The certificate name for remote slaves, the config name for in-process ones.
    pub peer: String,
    /// Prefixes the slave may announce (from its certificate or the site config).
    pub allowed: Vec<Ipv6Net>,
    /// Largest packet the link to the slave carries (QUIC datagram size), if limited.
    pub link_mtu: Option<u16>,
    pub remote: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SlaveStats {
    /// From the slave into the master.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// From the master to the slave (forwarded packets and ICMPv6 answers).
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlaveView {
    pub id: SlaveId,
    pub kind: Option<SlaveKind>,
    pub name: String,
    pub session: SessionInfo,
    pub prefixes: Vec<Ipv6Net>,
    pub mtu: u16,
    pub stats: SlaveStats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MasterStats {
    pub drops: HashMap<&'static str, u64>,
    pub icmp_sent: u64,
    pub control_errors: u64,
    pub sessions_opened: u64,
    pub sessions_closed: u64,
}

/// What to do with one packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (hop-limit-decremented) packet to this slave.
    Forward(SlaveId),
    /// Drop it and send this ICMPv6 packet to the slave instead.
    Reply {
        to: SlaveId,
        packet: Vec<u8>,
        dropped: Option<DropReason>,
    },
    Drop(DropReason),
}

/// What answering a control message produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ControlOutcome {
    pub replies: Vec<ControlMessage>,
    /// The session must end (after the replies are sent).
    pub close: bool,
}

struct Slave {
    session: SessionInfo,
    kind: Option<SlaveKind>,
    name: String,
    prefixes: Vec<Ipv6Net>,
    mtu: u16,
    stats: SlaveStats,
}

pub struct Master {
    router: Ipv6Addr,
    table: RoutingTable<SlaveId>,
    /// Looked up twice per packet; keyed by our own ids, so Fx hashing is safe.
    slaves: rustc_hash::FxHashMap<SlaveId, Slave>,
    next_id: u32,
    stats: MasterStats,
}

fn is_icmp_error(buf: &[u8]) -> bool {
    buf.get(6) == Some(&packet::ICMPV6) && buf.get(40).is_some_and(|t| *t < 128)
}

fn is_link_scoped(a: &Ipv6Addr) -> bool {
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (a.segments()[0] & 0xffc0) == 0xfe80
}

impl Master {
    /// `router` is the address the master answers from (ICMPv6 errors, echo replies).
    pub fn new(router: Ipv6Addr) -> Self {
        Master {
            router,
            table: RoutingTable::new(),
            slaves: rustc_hash::FxHashMap::default(),
            next_id: 1,
            stats: MasterStats::default(),
        }
    }

    pub fn router(&self) -> Ipv6Addr {
        self.router
    }

    pub fn attach(&mut self, session: SessionInfo) -> SlaveId {
        let id = SlaveId(self.next_id);
        self.next_id += 1;
        tracing::info!(slave = id.0, peer = %session.peer, remote = session.remote, "slave session opened");
        self.stats.sessions_opened += 1;
        let name = session.peer.clone();
        self.slaves.insert(
            id,
            Slave {
                session,
                kind: None,
                name,
                prefixes: Vec::new(),
                mtu: packet::MIN_MTU,
                stats: SlaveStats::default(),
            },
        );
        id
    }

    /// Ends a session; its routes go at once. Returns the prefixes withdrawn.
    pub fn detach(&mut self, id: SlaveId) -> Vec<Ipv6Net> {
        let removed = self.table.remove_where(|v| *v == id);
        if let Some(s) = self.slaves.remove(&id) {
            self.stats.sessions_closed += 1;
            tracing::info!(slave = id.0, name = %s.name, withdrawn = ?removed, "slave session closed");
        }
        removed
    }

    pub fn handle_control(&mut self, id: SlaveId, msg: ControlMessage) -> ControlOutcome {
        let Some(slave) = self.slaves.get_mut(&id) else {
            return ControlOutcome {
                replies: vec![],
                close: true,
            };
        };
        let error = |reason: String| {
            tracing::warn!(slave = id.0, %reason, "control protocol error");
            ControlOutcome {
                replies: vec![ControlMessage::Error { reason }],
                close: true,
            }
        };
        match msg {
            ControlMessage::Hello {
                kind,
                name,
                prefixes,
                mtu,
            } => {
                if slave.kind.is_some() {
                    self.stats.control_errors += 1;
                    return error("duplicate Hello".into());
                }
                slave.kind = Some(kind);
                slave.name = name;
                slave.mtu = slave
                    .session
                    .link_mtu
                    .map_or(mtu, |l| l.min(mtu))
                    .max(packet::MIN_MTU);
                self.announce(id, prefixes)
            }
            ControlMessage::Announce { prefixes } if slave.kind.is_some() => {
                self.announce(id, prefixes)
            }
            ControlMessage::Withdraw { prefixes } if slave.kind.is_some() => {
                for p in prefixes {
                    if self.table.get(&p) == Some(&id) {
                        self.table.remove(&p);
                    }
                    slave.prefixes.retain(|q| *q != p);
                }
                ControlOutcome::default()
            }
            ControlMessage::Announce { .. } | ControlMessage::Withdraw { .. } => {
                self.stats.control_errors += 1;
                error("expected Hello first".into())
            }
            other @ (ControlMessage::Accepted { .. }
            | ControlMessage::Refused { .. }
            | ControlMessage::Served { .. }) => {
                self.stats.control_errors += 1;
                error(format!("unexpected message from a slave: {other:?}"))
            }
            ControlMessage::Error { reason } => {
                tracing::warn!(slave = id.0, %reason, "slave reported an error");
                ControlOutcome {
                    replies: vec![],
                    close: true,
                }
            }
        }
    }

    fn announce(&mut self, id: SlaveId, prefixes: Vec<Ipv6Net>) -> ControlOutcome {
        let mut out = ControlOutcome::default();
        let mut accepted = Vec::new();
        for p in prefixes {
            let Some(slave) = self.slaves.get(&id) else {
                break;
            };
            let refusal = if !slave.session.allowed.iter().any(|a| a.contains(&p)) {
                Some(format!(
                    "prefix {p} is outside what {} may announce",
                    slave.session.peer
                ))
            } else {
                match self.table.get(&p) {
                    Some(owner) if *owner != id => Some(format!(
                        "prefix {p} is already announced by {}",
                        self.slaves
                            .get(owner)
                            .map_or("another slave", |s| s.name.as_str())
                    )),
                    _ => None,
                }
            };
            match refusal {
                Some(reason) => {
                    tracing::warn!(slave = id.0, %reason, "announcement refused");
                    *self
                        .stats
                        .drops
                        .entry(DropReason::RefusedAnnounce.as_str())
                        .or_default() += 1;
                    out.replies.push(ControlMessage::Refused {
                        prefix: Some(p),
                        reason,
                    });
                }
                None => {
                    self.table.insert(p, id);
                    accepted.push(p);
                }
            }
        }
        if let Some(slave) = self.slaves.get_mut(&id) {
            tracing::info!(slave = id.0, name = %slave.name, kind = ?slave.kind, prefixes = ?accepted, "routes installed");
            slave.prefixes.extend(accepted.iter().copied());
        }
        out.replies.insert(
            0,
            ControlMessage::Accepted {
                prefixes: accepted,
                router: self.router,
            },
        );
        out
    }

    fn count(&mut self, reason: DropReason) {
        self.count_n(reason, 1);
    }

    fn count_n(&mut self, reason: DropReason, n: u64) {
        *self.stats.drops.entry(reason.as_str()).or_default() += n;
    }

    fn reply(&mut self, to: SlaveId, packet: Vec<u8>, dropped: Option<DropReason>) -> Verdict {
        if let Some(r) = dropped {
            self.count(r);
        }
        self.stats.icmp_sent += 1;
        if let Some(s) = self.slaves.get_mut(&to) {
            s.stats.tx_packets += 1;
            s.stats.tx_bytes += packet.len() as u64;
        }
        Verdict::Reply {
            to,
            packet,
            dropped,
        }
    }

    fn icmp_error(
        &mut self,
        from: SlaveId,
        kind: IcmpError,
        reason: DropReason,
        pkt: &[u8],
    ) -> Verdict {
        let mut out = Vec::new();
        match Ipv6Packet::new_checked(pkt) {
            Ok(p) if packet::build_error(kind, self.router, &p, &mut out) => {
                self.reply(from, out, Some(reason))
            }
            _ => {
                self.count(reason);
                Verdict::Drop(reason)
            }
        }
    }

    /// Routes one packet from slave `from`. On [`Verdict::Forward`] the hop
    /// limit in `buf` has been decremented.
    pub fn handle_packet(&mut self, from: SlaveId, buf: &mut [u8]) -> Verdict {
        let Some(ingress) = self.slaves.get_mut(&from) else {
            return Verdict::Drop(DropReason::Unannounced);
        };
        ingress.stats.rx_packets += 1;
        ingress.stats.rx_bytes += buf.len() as u64;
        if ingress.kind.is_none() {
            self.count(DropReason::Unannounced);
            return Verdict::Drop(DropReason::Unannounced);
        }
        let (src, dst, hop_limit) = match Ipv6Packet::new_checked(&*buf) {
            Ok(p) => (p.src(), p.dst(), p.hop_limit()),
            Err(e) => {
                tracing::debug!(slave = from.0, error = %e, "malformed packet");
                self.count(DropReason::Malformed);
                return Verdict::Drop(DropReason::Malformed);
            }
        };
        if is_link_scoped(&src) || is_link_scoped(&dst) {
            self.count(DropReason::NotRoutable);
            return Verdict::Drop(DropReason::NotRoutable);
        }
        // Strict reverse-path check: the source must be routed back to the slave it came from.
        // In-process slaves may send ICMPv6 errors in the router's name (a DHT miss, say).
        let router_error = src == self.router
            && !self.slaves.get(&from).is_some_and(|s| s.session.remote)
            && is_icmp_error(buf);
        if !router_error && self.table.lookup(src).map(|(_, id)| *id) != Some(from) {
            tracing::debug!(slave = from.0, %src, "spoofed source");
            self.count(DropReason::SpoofedSource);
            return Verdict::Drop(DropReason::SpoofedSource);
        }
        if dst == self.router {
            let mut out = Vec::new();
            let echo =
                Ipv6Packet::new_checked(&*buf).map(|p| packet::build_echo_reply(&p, &mut out));
            return if echo == Ok(true) {
                self.reply(from, out, None)
            } else {
                self.count(DropReason::ToRouter);
                Verdict::Drop(DropReason::ToRouter)
            };
        }
        if hop_limit <= 1 {
            return self.icmp_error(
                from,
                IcmpError::TimeExceeded { code: 0 },
                DropReason::HopLimit,
                buf,
            );
        }
        let egress = match self.table.lookup(dst) {
            Some((_, id)) if *id != from => *id,
            _ => {
                return self.icmp_error(
                    from,
                    IcmpError::DestinationUnreachable {
                        code: packet::NO_ROUTE,
                    },
                    DropReason::NoRoute,
                    buf,
                )
            }
        };
        let mtu = self.slaves.get(&egress).map_or(packet::MIN_MTU, |s| s.mtu);
        if buf.len() > mtu as usize {
            return self.icmp_error(
                from,
                IcmpError::PacketTooBig { mtu: mtu as u32 },
                DropReason::TooBig,
                buf,
            );
        }
        buf[7] = hop_limit - 1;
        if let Some(s) = self.slaves.get_mut(&egress) {
            s.stats.tx_packets += 1;
            s.stats.tx_bytes += buf.len() as u64;
        }
        Verdict::Forward(egress)
    }

    /// A forwarded packet the egress queue could not take.
    pub fn count_queue_full(&mut self, packets: u64) {
        self.count_n(DropReason::QueueFull, packets);
    }

    pub fn stats(&self) -> &MasterStats {
        &self.stats
    }

    pub fn slaves(&self) -> Vec<SlaveView> {
        let mut v: Vec<SlaveView> = self
            .slaves
            .iter()
            .map(|(id, s)| SlaveView {
                id: *id,
                kind: s.kind,
                name: s.name.clone(),
                session: s.session.clone(),
                prefixes: s.prefixes.clone(),
                mtu: s.mtu,
                stats: s.stats.clone(),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Prefixes this site serves itself (its gateways and bridges), for the DHT slaves to publish.
    pub fn served(&self) -> Vec<Ipv6Net> {
        let mut v: Vec<Ipv6Net> = self
            .slaves
            .values()
            .filter(|s| matches!(s.kind, Some(SlaveKind::Gateway | SlaveKind::Bridge)))
            .flat_map(|s| s.prefixes.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn slaves_of_kind(&self, kind: SlaveKind) -> Vec<SlaveId> {
        let mut v: Vec<SlaveId> = self
            .slaves
            .iter()
            .filter(|(_, s)| s.kind == Some(kind))
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    }

    pub fn routes(&self) -> Vec<(Ipv6Net, SlaveId)> {
        self.table.iter().map(|(n, id)| (n, *id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{build_ipv6, parse_icmpv6, Icmpv6Message, ICMPV6};

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }
    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn session(allowed: &[&str]) -> SessionInfo {
        SessionInfo {
            peer: "test".into(),
            allowed: allowed.iter().map(|s| net(s)).collect(),
            link_mtu: None,
            remote: true,
        }
    }

    fn hello(kind: SlaveKind, prefixes: &[&str], mtu: u16) -> ControlMessage {
        ControlMessage::Hello {
            kind,
            name: format!("{kind}"),
            prefixes: prefixes.iter().map(|s| net(s)).collect(),
            mtu,
        }
    }

    fn udp(src: &str, dst: &str, hop: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        build_ipv6(addr(src), addr(dst), 17, hop, &vec![0u8; len], &mut out);
        out
    }

    /// A site with a gateway (fd6e:0:a::/48) and a tunnel (fd6e:0:b::/48).
    fn site() -> (Master, SlaveId, SlaveId) {
        let mut m = Master::new(addr("fd6e:0:a::1"));
        let gw = m.attach(session(&["fd6e:0:a::/48"]));
        let tun = m.attach(session(&["fd6e::/16"]));
        m.handle_control(gw, hello(SlaveKind::Gateway, &["fd6e:0:a::/48"], 1500));
        m.handle_control(tun, hello(SlaveKind::Tunnel, &["fd6e:0:b::/48"], 1400));
        (m, gw, tun)
    }

    fn icmp_of(v: &Verdict) -> Icmpv6Message {
        match v {
            Verdict::Reply { packet, .. } => {
                let p = Ipv6Packet::new_checked(&packet[..]).unwrap();
                assert_eq!(p.next_header(), ICMPV6);
                assert_eq!(p.src(), addr("fd6e:0:a::1"));
                parse_icmpv6(p.payload()).unwrap()
            }
            other => panic!("expected an ICMPv6 reply, got {other:?}"),
        }
    }

    #[test]
    fn forwards_by_longest_prefix_and_decrements_hop_limit() {
        let (mut m, gw, tun) = site();
        let mut p = udp("fd6e:0:a:1::2", "fd6e:0:b:1::2", 64, 100);
        assert_eq!(m.handle_packet(gw, &mut p), Verdict::Forward(tun));
        assert_eq!(p[7], 63);
        let mut back = udp("fd6e:0:b:1::2", "fd6e:0:a:1::2", 64, 100);
        assert_eq!(m.handle_packet(tun, &mut back), Verdict::Forward(gw));
        let slaves = m.slaves();
        assert_eq!(slaves[0].stats.rx_packets, 1);
        assert_eq!(slaves[0].stats.tx_packets, 1);
    }

    #[test]
    fn announcement_outside_allowance_is_refused() {
        let mut m = Master::new(addr("fd6e:0:a::1"));
        let s = m.attach(session(&["fd6e:0:c::/48"]));
        let out = m.handle_control(
            s,
            hello(
                SlaveKind::Gateway,
                &["fd6e:0:c:1::/64", "fd6e:0:a::/48"],
                1400,
            ),
        );
        assert!(!out.close);
        assert_eq!(
            out.replies[0],
            ControlMessage::Accepted {
                prefixes: vec![net("fd6e:0:c:1::/64")],
                router: addr("fd6e:0:a::1")
            }
        );
        match &out.replies[1] {
            ControlMessage::Refused { prefix, reason } => {
                assert_eq!(*prefix, Some(net("fd6e:0:a::/48")));
                assert!(reason.contains("fd6e:0:a::/48"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.routes(), vec![(net("fd6e:0:c:1::/64"), s)]);
        assert_eq!(m.stats().drops["refused_announce"], 1);
    }

    #[test]
    fn conflicting_announcement_is_refused() {
        let (mut m, _, _) = site();
        let other = m.attach(session(&["fd6e::/16"]));
        let out = m.handle_control(other, hello(SlaveKind::Tunnel, &["fd6e:0:b::/48"], 1400));
        assert!(
            matches!(&out.replies[1], ControlMessage::Refused { reason, .. } if reason.contains("already announced"))
        );
    }

    #[test]
    fn detach_withdraws_routes_and_then_no_route_is_unreachable() {
        let (mut m, gw, tun) = site();
        assert_eq!(m.detach(tun), vec![net("fd6e:0:b::/48")]);
        let mut p = udp("fd6e:0:a:1::2", "fd6e:0:b:1::2", 64, 100);
        let v = m.handle_packet(gw, &mut p);
        assert!(matches!(v, Verdict::Reply { to, .. } if to == gw));
        assert_eq!(
            icmp_of(&v),
            Icmpv6Message::DestinationUnreachable { code: 0 }
        );
        assert_eq!(m.stats().drops["no_route"], 1);
    }

    #[test]
    fn hop_limit_one_gives_time_exceeded() {
        let (mut m, gw, _) = site();
        let mut p = udp("fd6e:0:a:1::2", "fd6e:0:b:1::2", 1, 10);
        assert_eq!(
            icmp_of(&m.handle_packet(gw, &mut p)),
            Icmpv6Message::TimeExceeded { code: 0 }
        );
    }

    #[test]
    fn too_big_for_egress_gives_packet_too_big() {
        let (mut m, gw, _) = site();
        let mut p = udp("fd6e:0:a:1::2", "fd6e:0:b:1::2", 64, 1400);
        assert_eq!(
            icmp_of(&m.handle_packet(gw, &mut p)),
            Icmpv6Message::PacketTooBig { mtu: 1400 }
        );
        let mut ok = udp("fd6e:0:a:1::2", "fd6e:0:b:1::2", 64, 1360);
        assert!(matches!(m.handle_packet(gw, &mut ok), Verdict::Forward(_)));
    }

    #[test]
    fn spoofed_and_link_scoped_sources_are_dropped() {
        let (mut m, gw, tun) = site();
        let mut p = udp("fd6e:0:b:1::2", "fd6e:0:b:1::3", 64, 10);
        assert_eq!(
            m.handle_packet(gw, &mut p),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        let mut p = udp("fd6e:0:a:1::2", "fd6e:0:a:1::3", 64, 10);
        assert_eq!(
            m.handle_packet(tun, &mut p),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        let mut p = udp("fe80::1", "fd6e:0:b:1::3", 64, 10);
        assert_eq!(
            m.handle_packet(gw, &mut p),
            Verdict::Drop(DropReason::NotRoutable)
        );
        let mut p = udp("fd6e:0:a:1::2", "ff02::16", 1, 10);
        assert_eq!(
            m.handle_packet(gw, &mut p),
            Verdict::Drop(DropReason::NotRoutable)
        );
        assert_eq!(m.stats().drops["spoofed_source"], 2);
    }

    #[test]
    fn malformed_and_unannounced_are_counted() {
        let (mut m, gw, _) = site();
        assert_eq!(
            m.handle_packet(gw, &mut [0x60, 0, 0]),
            Verdict::Drop(DropReason::Malformed)
        );
        let fresh = m.attach(session(&["::/0"]));
        let mut p = udp("fd6e:0:a:1::2", "fd6e:0:b:1::2", 64, 10);
        assert_eq!(
            m.handle_packet(fresh, &mut p),
            Verdict::Drop(DropReason::Unannounced)
        );
        let out = m.handle_control(fresh, ControlMessage::Announce { prefixes: vec![] });
        assert!(out.close);
        let out = m.handle_control(gw, hello(SlaveKind::Gateway, &[], 1400));
        assert!(out.close, "duplicate Hello closes the session");
    }

    #[test]
    fn router_answers_echo() {
        let (mut m, gw, _) = site();
        let mut req = Vec::new();
        let icmp = [128u8, 0, 0, 0, 0, 7, 0, 1, 0xaa, 0xbb];
        build_ipv6(
            addr("fd6e:0:a:1::2"),
            addr("fd6e:0:a::1"),
            ICMPV6,
            64,
            &icmp,
            &mut req,
        );
        // Fill in the checksum so the request is well formed.
        let sum = packet::checksum(
            addr("fd6e:0:a:1::2"),
            addr("fd6e:0:a::1"),
            ICMPV6,
            &req[40..],
        );
        req[42..44].copy_from_slice(&sum.to_be_bytes());
        let v = m.handle_packet(gw, &mut req);
        assert_eq!(
            icmp_of(&v),
            Icmpv6Message::EchoReply {
                ident: 7,
                seq: 1,
                data_len: 2
            }
        );
    }

    #[test]
    fn served_prefixes_follow_gateways_only() {
        let (mut m, gw, _) = site();
        let dht = m.attach(SessionInfo {
            remote: false,
            ..session(&["fd6e::/16"])
        });
        m.handle_control(dht, hello(SlaveKind::Dht, &["fd6e::/16"], 1400));
        assert_eq!(m.served(), vec![net("fd6e:0:a::/48")]);
        assert_eq!(m.slaves_of_kind(SlaveKind::Dht), vec![dht]);
        m.detach(gw);
        assert!(m.served().is_empty());
    }

    #[test]
    fn in_process_slave_may_send_icmp_errors_as_the_router() {
        let (mut m, gw, _) = site();
        let dht = m.attach(SessionInfo {
            remote: false,
            ..session(&["fd6e::/16"])
        });
        m.handle_control(dht, hello(SlaveKind::Dht, &["fd6e::/16"], 1400));
        let mut offending = udp("fd6e:0:a:1::2", "fd6e:0:9::1", 64, 20);
        let mut err = Vec::new();
        assert!(packet::build_error(
            IcmpError::DestinationUnreachable { code: 3 },
            addr("fd6e:0:a::1"),
            &Ipv6Packet::new_checked(&offending[..]).unwrap(),
            &mut err
        ));
        assert_eq!(m.handle_packet(dht, &mut err), Verdict::Forward(gw));
        // Not an error message, or from a remote slave: the source check applies.
        let mut echo = udp("fd6e:0:a::1", "fd6e:0:a:1::2", 64, 20);
        assert_eq!(
            m.handle_packet(dht, &mut echo),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        let remote = m.attach(session(&["fd6e::/16"]));
        m.handle_control(remote, hello(SlaveKind::Dht, &["fd6e:1::/32"], 1400));
        let mut err2 = Vec::new();
        assert!(packet::build_error(
            IcmpError::DestinationUnreachable { code: 3 },
            addr("fd6e:0:a::1"),
            &Ipv6Packet::new_checked(&offending[..]).unwrap(),
            &mut err2
        ));
        assert_eq!(
            m.handle_packet(remote, &mut err2),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        offending.clear();
    }

    #[test]
    fn link_mtu_caps_announced_mtu() {
        let mut m = Master::new(addr("fd6e:0:a::1"));
        let mut s = session(&["fd6e::/16"]);
        s.link_mtu = Some(1414);
        let id = m.attach(s);
        m.handle_control(id, hello(SlaveKind::Tunnel, &["fd6e:0:b::/48"], 9000));
        assert_eq!(m.slaves()[0].mtu, 1414);
    }
}
