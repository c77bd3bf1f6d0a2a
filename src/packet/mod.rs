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
