//! Packet parsing and construction for the data plane.
//!
//! Masters forward raw IPv6 packets between slaves they do not trust, so every
//! packet is validated once ([`Ipv6Packet::new_checked`]) before it is routed,
//! and nothing here panics on arbitrary input. [`icmpv6`] builds the RFC 4443
//! messages a router must originate (errors, echo replies) and parses what a
//! raw ICMPv6 socket delivers.

pub mod icmpv6;
pub mod ipv6;

pub use icmpv6::*;
pub use ipv6::build_ipv6;
pub use ipv6::{Ipv6Packet, PacketError};

/// IPv6's minimum link MTU (RFC 8200), as the master's MTU type.
pub const MIN_MTU: u16 = IPV6_MIN_MTU as u16;

/// Copies packets into shared blocks: one allocation per 64 KB of packets
/// rather than one per packet. A block is freed when its last packet is.
#[derive(Debug)]
pub struct PacketArena {
    block: bytes::BytesMut,
}

const ARENA_BLOCK: usize = 64 * 1024;

impl Default for PacketArena {
    fn default() -> Self {
        PacketArena {
            block: bytes::BytesMut::with_capacity(ARENA_BLOCK),
        }
    }
}

impl PacketArena {
    pub fn copy(&mut self, packet: &[u8]) -> bytes::BytesMut {
        self.copy_parts(&[packet])
    }

    /// One packet made of `parts` back to back (a header, then a payload).
    pub fn copy_parts(&mut self, parts: &[&[u8]]) -> bytes::BytesMut {
        let len = parts.iter().map(|p| p.len()).sum();
        if self.block.capacity() < len {
            self.block = bytes::BytesMut::with_capacity(ARENA_BLOCK.max(len));
        }
        for p in parts {
            self.block.extend_from_slice(p);
        }
        self.block.split()
    }
}

#[cfg(test)]
mod arena_tests {
    use super::PacketArena;

    #[test]
    fn packets_are_independent_copies() {
        let mut arena = PacketArena::default();
        let mut packets: Vec<_> = (0..200u8).map(|i| arena.copy(&[i; 1400])).collect();
        packets[3][0] = 0xff;
        assert_eq!(packets[2][..], [2; 1400][..]);
        assert_eq!(packets[4][..], [4; 1400][..]);
        assert_eq!(packets[3][1], 3);
        assert_eq!(arena.copy(&[9; 70_000]).len(), 70_000);
        assert_eq!(&arena.copy_parts(&[b"ab", b"", b"cde"])[..], b"abcde");
    }
}
