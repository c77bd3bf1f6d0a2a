//! ICMPv6 (RFC 4443): the messages a router originates, and parsing of
//! messages received on a raw ICMPv6 socket.
//!
//! Rate limiting of generated errors (RFC 4443 §2.4(f)) is the caller's job.

use std::net::Ipv6Addr;

use super::ipv6::{push_header, Ipv6Packet, PacketError, HEADER_LEN};

/// IPv6 Next Header value for ICMPv6.
pub const ICMPV6: u8 = 58;

/// IPv6 minimum link MTU; an error message must not exceed it (RFC 4443 §2.4(c)).
pub const IPV6_MIN_MTU: usize = 1280;

/// Hop limit of the packets built here.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// ICMPv6 header length of errors and echo messages (type, code, checksum, 4 bytes).
pub const ICMPV6_HEADER_LEN: usize = 8;

/// Most bytes of the offending packet an error can quote within [`IPV6_MIN_MTU`].
pub const MAX_ERROR_BODY: usize = IPV6_MIN_MTU - HEADER_LEN - ICMPV6_HEADER_LEN;

// ICMPv6 message types (RFC 4443 §2.1, RFC 4861 §8).
/// Error: Destination Unreachable.
pub const TYPE_DESTINATION_UNREACHABLE: u8 = 1;
/// Error: Packet Too Big.
pub const TYPE_PACKET_TOO_BIG: u8 = 2;
/// Error: Time Exceeded.
pub const TYPE_TIME_EXCEEDED: u8 = 3;
/// Error: Parameter Problem.
pub const TYPE_PARAMETER_PROBLEM: u8 = 4;
/// Informational: Echo Request.
pub const TYPE_ECHO_REQUEST: u8 = 128;
/// Informational: Echo Reply.
pub const TYPE_ECHO_REPLY: u8 = 129;
/// Redirect; never answered with an error (RFC 4443 §2.4(e.2)).
pub const TYPE_REDIRECT: u8 = 137;

/// Destination Unreachable code: no route to destination.
pub const NO_ROUTE: u8 = 0;
/// Destination Unreachable code: communication administratively prohibited.
pub const ADMIN_PROHIBITED: u8 = 1;
/// Destination Unreachable code: address unreachable.
pub const ADDRESS_UNREACHABLE: u8 = 3;
/// Time Exceeded code: hop limit exceeded in transit.
pub const HOP_LIMIT_EXCEEDED: u8 = 0;

/// An ICMPv6 error a router may send about a packet it could not forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Type 1; see [`NO_ROUTE`], [`ADMIN_PROHIBITED`], [`ADDRESS_UNREACHABLE`].
    DestinationUnreachable { code: u8 },
    /// Type 2; `mtu` of the next-hop link.
    PacketTooBig { mtu: u32 },
    /// Type 3; see [`HOP_LIMIT_EXCEEDED`].
    TimeExceeded { code: u8 },
}

impl IcmpError {
    /// (type, code, second 32-bit word of the header).
    fn fields(self) -> (u8, u8, u32) {
        match self {
            IcmpError::DestinationUnreachable { code } => (TYPE_DESTINATION_UNREACHABLE, code, 0),
            IcmpError::PacketTooBig { mtu } => (TYPE_PACKET_TOO_BIG, 0, mtu),
            IcmpError::TimeExceeded { code } => (TYPE_TIME_EXCEEDED, code, 0),
        }
    }
}

/// A received ICMPv6 message, as far as this router cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Icmpv6Message {
    EchoRequest {
        ident: u16,
        seq: u16,
        data_len: usize,
    },
    EchoReply {
        ident: u16,
        seq: u16,
        data_len: usize,
    },
    DestinationUnreachable {
        code: u8,
    },
    PacketTooBig {
        mtu: u32,
    },
    TimeExceeded {
        code: u8,
    },
    /// Any other type (Parameter Problem, neighbour discovery, ...).
    Other {
        ty: u8,
        code: u8,
    },
}

/// Internet checksum (RFC 1071) over the IPv6 pseudo-header (RFC 8200 §8.1)
/// and `payload`.
///
/// With the checksum field of `payload` zeroed, this is the value to store
/// there; over a payload whose checksum field is correct it returns 0.
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> u16 {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut sum: u64 = 0;
    let words = |bytes: &[u8]| -> u64 {
        let (pairs, tail) = bytes.as_chunks::<2>();
        let tail = tail.first().map_or(0, |&b| u64::from(b) << 8);
        pairs
            .iter()
            .map(|&w| u64::from(u16::from_be_bytes(w)))
            .sum::<u64>()
            + tail
    };
    sum += words(&src.octets());
    sum += words(&dst.octets());
    sum += u64::from(len >> 16) + u64::from(len & 0xffff);
    sum += u64::from(next_header);
    sum += words(payload);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves sum <= 0xffff, so the conversion cannot fail.
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// True when `payload`'s embedded checksum field is correct.
pub fn verify_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> bool {
    checksum(src, dst, next_header, payload) == 0
}

/// Computes the ICMPv6 checksum of the message following the IPv6 header in
/// `out` and stores it in the checksum field.
fn fill_checksum(out: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) {
    let Some(msg) = out.get(HEADER_LEN..) else {
        return;
    };
    let sum = checksum(src, dst, ICMPV6, msg);
    if let Some(field) = out.get_mut(HEADER_LEN + 2..HEADER_LEN + 4) {
        field.copy_from_slice(&sum.to_be_bytes());
    }
}

/// RFC 4443 §2.4(e): whether an error about `offending` may be sent at all.
///
/// Only the fixed header's Next Header is checked for ICMPv6; an ICMPv6
/// error behind extension headers is not recognised (the forwarding path does
/// not walk extension headers). Redirects (type 137) are treated like errors,
/// as §2.4(e.2) requires.
fn error_allowed(kind: IcmpError, offending: &Ipv6Packet<&[u8]>) -> bool {
    if offending.next_header() == ICMPV6 {
        match offending.payload().first() {
            Some(&ty) if ty >= 128 && ty != TYPE_REDIRECT => {}
            _ => return false,
        }
    }
    let src = offending.src();
    if src.is_unspecified() || src.is_multicast() {
        return false;
    }
    // §2.4(e.3): Packet Too Big is the exception for multicast destinations.
    !offending.dst().is_multicast() || matches!(kind, IcmpError::PacketTooBig { .. })
}

/// Writes into `out` a complete IPv6 packet carrying the ICMPv6 error `kind`
/// about `offending`, from `router` to the offending packet's source.
///
/// The body quotes as much of `offending` as fits in [`IPV6_MIN_MTU`]. Returns
/// false, leaving `out` empty, when RFC 4443 §2.4(e) forbids the error: the
/// offending packet is an ICMPv6 error or redirect (Next Header 58 directly;
/// extension headers are not walked), its source is unspecified or multicast,
/// or its destination is multicast (except for Packet Too Big).
#[must_use = "on false, `out` is empty and nothing may be sent"]
pub fn build_error(
    kind: IcmpError,
    router: Ipv6Addr,
    offending: &Ipv6Packet<&[u8]>,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if !error_allowed(kind, offending) {
        return false;
    }
    let original = offending.as_bytes();
    let body = original.get(..MAX_ERROR_BODY).unwrap_or(original);
    let Ok(msg_len) = u16::try_from(ICMPV6_HEADER_LEN + body.len()) else {
        return false;
    };
    let (ty, code, word) = kind.fields();
    let dst = offending.src();
    out.reserve(HEADER_LEN + usize::from(msg_len));
    push_header(out, router, dst, ICMPV6, DEFAULT_HOP_LIMIT, msg_len);
    out.extend_from_slice(&[ty, code, 0, 0]);
    out.extend_from_slice(&word.to_be_bytes());
    out.extend_from_slice(body);
    fill_checksum(out, router, dst);
    true
}

/// Writes into `out` the Echo Reply to `request` if it is a valid ICMPv6 Echo
/// Request (Next Header 58, type 128, code 0, at least 8 bytes, correct
/// checksum); the reply goes from the request's destination to its source
/// with hop limit 64 and the same identifier, sequence number and data.
///
/// Returns false, leaving `out` empty, otherwise, and also when the request's
/// source is unspecified or multicast (nowhere to reply to) or its destination
/// is multicast or unspecified (the reply would need a unicast source address
/// this function does not know, RFC 4443 §4.2).
#[must_use = "on false, `out` is empty and nothing may be sent"]
pub fn build_echo_reply(request: &Ipv6Packet<&[u8]>, out: &mut Vec<u8>) -> bool {
    out.clear();
    if request.next_header() != ICMPV6 {
        return false;
    }
    let msg = request.payload();
    let Some(&[TYPE_ECHO_REQUEST, 0, _, _, _, _, _, _]) = msg.first_chunk::<8>() else {
        return false;
    };
    let (req_src, req_dst) = (request.src(), request.dst());
    if req_src.is_unspecified()
        || req_src.is_multicast()
        || req_dst.is_unspecified()
        || req_dst.is_multicast()
    {
        return false;
    }
    if !verify_checksum(req_src, req_dst, ICMPV6, msg) {
        return false;
    }
    let Ok(msg_len) = u16::try_from(msg.len()) else {
        return false;
    };
    out.reserve(HEADER_LEN + msg.len());
    push_header(out, req_dst, req_src, ICMPV6, DEFAULT_HOP_LIMIT, msg_len);
    out.extend_from_slice(&[TYPE_ECHO_REPLY, 0, 0, 0]);
    out.extend_from_slice(msg.get(4..).unwrap_or(&[]));
    fill_checksum(out, req_dst, req_src);
    true
}

/// Parses an ICMPv6 message without its IPv6 header, as a raw ICMPv6 socket
/// delivers it. The checksum is not checked (the kernel verifies it for raw
/// ICMPv6 sockets, and the addresses are not known here).
///
/// Messages shorter than their fixed header (4 bytes; 8 for echo and the
/// error types mapped here) give [`PacketError::TooShort`].
pub fn parse_icmpv6(msg: &[u8]) -> Result<Icmpv6Message, PacketError> {
    let too_short = || PacketError::TooShort { len: msg.len() };
    let &[ty, code, _, _, ..] = msg else {
        return Err(too_short());
    };
    let needs_word = matches!(
        ty,
        TYPE_DESTINATION_UNREACHABLE
            | TYPE_PACKET_TOO_BIG
            | TYPE_TIME_EXCEEDED
            | TYPE_ECHO_REQUEST
            | TYPE_ECHO_REPLY
    );
    if !needs_word {
        return Ok(Icmpv6Message::Other { ty, code });
    }
    let Some(&[_, _, _, _, w0, w1, w2, w3]) = msg.first_chunk::<8>() else {
        return Err(too_short());
    };
    let ident = u16::from_be_bytes([w0, w1]);
    let seq = u16::from_be_bytes([w2, w3]);
    let data_len = msg.len().saturating_sub(ICMPV6_HEADER_LEN);
    Ok(match ty {
        TYPE_ECHO_REQUEST => Icmpv6Message::EchoRequest {
            ident,
            seq,
            data_len,
        },
        TYPE_ECHO_REPLY => Icmpv6Message::EchoReply {
            ident,
            seq,
            data_len,
        },
        TYPE_DESTINATION_UNREACHABLE => Icmpv6Message::DestinationUnreachable { code },
        TYPE_PACKET_TOO_BIG => Icmpv6Message::PacketTooBig {
            mtu: u32::from_be_bytes([w0, w1, w2, w3]),
        },
        TYPE_TIME_EXCEEDED => Icmpv6Message::TimeExceeded { code },
        _ => Icmpv6Message::Other { ty, code },
    })
}

/// For an error message (types 1–4), the quoted original packet (possibly
/// truncated) after the 8-byte header; `None` for other types or short input.
pub fn embedded_packet(msg: &[u8]) -> Option<&[u8]> {
    match msg.first() {
        Some(1..=4) => msg.get(ICMPV6_HEADER_LEN..),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::ipv6::build_ipv6;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    const ROUTER: &str = "fd00::1";

    /// Straightforward reference: materialise the pseudo-header, sum 16-bit
    /// words with end-around carry, complement.
    fn reference_checksum(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, data: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, nh]);
        bytes.extend_from_slice(data);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            sum += (u32::from(bytes[i]) << 8) | u32::from(bytes[i + 1]);
            if sum > 0xffff {
                sum = (sum & 0xffff) + 1;
            }
            i += 2;
        }
        !(sum as u16)
    }

    fn packet(src: &str, dst: &str, nh: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        build_ipv6(a(src), a(dst), nh, 5, payload, &mut out);
        out
    }

    /// A well-formed echo request with correct checksum.
    fn echo_request(src: &str, dst: &str, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let mut msg = vec![TYPE_ECHO_REQUEST, 0, 0, 0];
        msg.extend_from_slice(&ident.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(data);
        let c = reference_checksum(a(src), a(dst), ICMPV6, &msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        packet(src, dst, ICMPV6, &msg)
    }

    /// Checks the generic shape of a generated error and returns its ICMPv6 part.
    fn check_error_packet(out: &[u8], offending: &[u8], router: Ipv6Addr) -> Vec<u8> {
        assert!(out.len() <= IPV6_MIN_MTU);
        let p = Ipv6Packet::new_checked(out).unwrap();
        let off = Ipv6Packet::new_checked(offending).unwrap();
        assert_eq!(p.src(), router);
        assert_eq!(p.dst(), off.src());
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.next_header(), ICMPV6);
        let msg = p.payload();
        assert_eq!(reference_checksum(p.src(), p.dst(), ICMPV6, msg), 0);
        assert!(verify_checksum(p.src(), p.dst(), ICMPV6, msg));
        let quoted = embedded_packet(msg).unwrap();
        let want = offending.len().min(MAX_ERROR_BODY);
        assert_eq!(quoted, &offending[..want]);
        msg.to_vec()
    }

    #[test]
    fn checksum_matches_reference() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let len = rng.random_range(0..300);
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            let src = Ipv6Addr::from(rng.random::<u128>());
            let dst = Ipv6Addr::from(rng.random::<u128>());
            let nh = rng.random::<u8>();
            let c = checksum(src, dst, nh, &data);
            assert_eq!(c, reference_checksum(src, dst, nh, &data));
            if len >= 4 {
                data[2] = 0;
                data[3] = 0;
                let c = checksum(src, dst, nh, &data);
                data[2..4].copy_from_slice(&c.to_be_bytes());
                assert!(verify_checksum(src, dst, nh, &data));
                assert_eq!(reference_checksum(src, dst, nh, &data), 0);
                data[len - 1] ^= 0x01;
                assert!(!verify_checksum(src, dst, nh, &data));
            }
        }
    }

    #[test]
    fn checksum_known_vector() {
        // ICMPv6 echo request ::1 -> ::1, id 0x1234, seq 1, data "abcd".
        // Sum: ::1 + ::1 = 2; length 12; nh 58; 0x8000 + 0x1234 + 0x0001
        // + 0x6162 + 0x6364 = 0x1_56fb -> 0x56fc; + 2 + 12 + 58 = 0x5744.
        let msg = [0x80, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c', b'd'];
        assert_eq!(checksum(a("::1"), a("::1"), ICMPV6, &msg), 0xa8bb);
    }

    #[test]
    fn destination_unreachable() {
        let off = packet("fd00::10", "fd00::20", 17, b"hello world");
        let p = Ipv6Packet::new_checked(&off[..]).unwrap();
        for code in [NO_ROUTE, ADMIN_PROHIBITED, ADDRESS_UNREACHABLE] {
            let mut out = vec![9; 3];
            assert!(build_error(
                IcmpError::DestinationUnreachable { code },
                a(ROUTER),
                &p,
                &mut out
            ));
            assert_eq!(out.len(), 40 + 8 + off.len());
            let msg = check_error_packet(&out, &off, a(ROUTER));
            assert_eq!(&msg[..2], &[1, code]);
            assert_eq!(&msg[4..8], &[0, 0, 0, 0]);
            assert_eq!(
                parse_icmpv6(&msg),
                Ok(Icmpv6Message::DestinationUnreachable { code })
            );
        }
    }

    #[test]
    fn packet_too_big_and_time_exceeded() {
        let off = packet("fd00::10", "fd00::20", 6, &[0xaa; 100]);
        let p = Ipv6Packet::new_checked(&off[..]).unwrap();
        let mut out = Vec::new();
        assert!(build_error(
            IcmpError::PacketTooBig { mtu: 1400 },
            a(ROUTER),
            &p,
            &mut out
        ));
        let msg = check_error_packet(&out, &off, a(ROUTER));
        assert_eq!(&msg[..2], &[2, 0]);
        assert_eq!(&msg[4..8], &1400u32.to_be_bytes());
        assert_eq!(
            parse_icmpv6(&msg),
            Ok(Icmpv6Message::PacketTooBig { mtu: 1400 })
        );

        assert!(build_error(
            IcmpError::TimeExceeded {
                code: HOP_LIMIT_EXCEEDED
            },
            a(ROUTER),
            &p,
            &mut out
        ));
        let msg = check_error_packet(&out, &off, a(ROUTER));
        assert_eq!(&msg[..2], &[3, 0]);
        assert_eq!(
            parse_icmpv6(&msg),
            Ok(Icmpv6Message::TimeExceeded { code: 0 })
        );
    }

    #[test]
    fn error_size_capped_at_min_mtu() {
        for payload_len in [1191, 1192, 1193, 1500, 9000, 65535] {
            let off = packet("fd00::10", "fd00::20", 17, &vec![0x5a; payload_len]);
            let p = Ipv6Packet::new_checked(&off[..]).unwrap();
            let mut out = Vec::new();
            assert!(build_error(
                IcmpError::PacketTooBig { mtu: 1280 },
                a(ROUTER),
                &p,
                &mut out
            ));
            let expected = (40 + 8 + 40 + payload_len).min(IPV6_MIN_MTU);
            assert_eq!(out.len(), expected, "payload_len {payload_len}");
            check_error_packet(&out, &off, a(ROUTER));
        }
    }

    #[test]
    fn no_error_about_icmpv6_errors() {
        let mut out = Vec::new();
        for ty in [0u8, 1, 2, 3, 4, 100, 127, TYPE_REDIRECT] {
            let off = packet("fd00::10", "fd00::20", ICMPV6, &[ty, 0, 0, 0, 0, 0, 0, 0]);
            let p = Ipv6Packet::new_checked(&off[..]).unwrap();
            for kind in [
                IcmpError::DestinationUnreachable { code: NO_ROUTE },
                IcmpError::PacketTooBig { mtu: 1280 },
                IcmpError::TimeExceeded { code: 0 },
            ] {
                out.push(1);
                assert!(!build_error(kind, a(ROUTER), &p, &mut out), "type {ty}");
                assert!(out.is_empty());
            }
        }
        // Informational messages (echo, etc.) do get errors.
        for ty in [128u8, 129, 135, 255] {
            let off = packet("fd00::10", "fd00::20", ICMPV6, &[ty, 0, 0, 0]);
            let p = Ipv6Packet::new_checked(&off[..]).unwrap();
            assert!(build_error(
                IcmpError::TimeExceeded { code: 0 },
                a(ROUTER),
                &p,
                &mut out
            ));
        }
    }

    #[test]
    fn no_error_to_unspecified_or_multicast_source() {
        let mut out = Vec::new();
        for src in ["::", "ff02::1", "ff0e::1234"] {
            let off = packet(src, "fd00::20", 17, b"x");
            let p = Ipv6Packet::new_checked(&off[..]).unwrap();
            for kind in [
                IcmpError::DestinationUnreachable { code: NO_ROUTE },
                IcmpError::PacketTooBig { mtu: 1280 },
                IcmpError::TimeExceeded { code: 0 },
            ] {
                assert!(!build_error(kind, a(ROUTER), &p, &mut out), "src {src}");
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn multicast_destination_only_packet_too_big() {
        let off = packet("fd00::10", "ff0e::1", 17, b"x");
        let p = Ipv6Packet::new_checked(&off[..]).unwrap();
        let mut out = Vec::new();
        assert!(!build_error(
            IcmpError::DestinationUnreachable { code: NO_ROUTE },
            a(ROUTER),
            &p,
            &mut out
        ));
        assert!(!build_error(
            IcmpError::TimeExceeded { code: 0 },
            a(ROUTER),
            &p,
            &mut out
        ));
        assert!(build_error(
            IcmpError::PacketTooBig { mtu: 1280 },
            a(ROUTER),
            &p,
            &mut out
        ));
        check_error_packet(&out, &off, a(ROUTER));
    }

    #[test]
    fn echo_reply() {
        let req = echo_request("fd00::10", "fd00::1", 0xbeef, 7, b"ping data!");
        let p = Ipv6Packet::new_checked(&req[..]).unwrap();
        assert_eq!(
            parse_icmpv6(p.payload()),
            Ok(Icmpv6Message::EchoRequest {
                ident: 0xbeef,
                seq: 7,
                data_len: 10
            })
        );
        let mut out = vec![1, 2, 3];
        assert!(build_echo_reply(&p, &mut out));
        let r = Ipv6Packet::new_checked(&out[..]).unwrap();
        assert_eq!(r.src(), a("fd00::1"));
        assert_eq!(r.dst(), a("fd00::10"));
        assert_eq!(r.hop_limit(), 64);
        assert_eq!(r.next_header(), ICMPV6);
        assert_eq!(r.payload_len(), p.payload_len());
        let msg = r.payload();
        assert_eq!(&msg[..2], &[TYPE_ECHO_REPLY, 0]);
        assert_eq!(&msg[4..], &p.payload()[4..]);
        assert_eq!(reference_checksum(r.src(), r.dst(), ICMPV6, msg), 0);
        assert_eq!(
            parse_icmpv6(msg),
            Ok(Icmpv6Message::EchoReply {
                ident: 0xbeef,
                seq: 7,
                data_len: 10
            })
        );
        assert_eq!(embedded_packet(msg), None);

        // Minimal request (no data).
        let req = echo_request("fd00::10", "fd00::1", 1, 2, b"");
        let p = Ipv6Packet::new_checked(&req[..]).unwrap();
        assert!(build_echo_reply(&p, &mut out));
        assert_eq!(out.len(), 48);
    }

    #[test]
    fn echo_reply_refused() {
        let mut out = Vec::new();
        let refuse = |bytes: &[u8], out: &mut Vec<u8>| {
            let p = Ipv6Packet::new_checked(bytes).unwrap();
            out.push(0);
            assert!(!build_echo_reply(&p, out));
            assert!(out.is_empty());
        };
        // Not ICMPv6.
        let mut req = echo_request("fd00::10", "fd00::1", 1, 1, b"x");
        req[6] = 17;
        refuse(&req, &mut out);
        // Wrong type / code.
        let mut req = echo_request("fd00::10", "fd00::1", 1, 1, b"x");
        req[40] = TYPE_ECHO_REPLY;
        refuse(&req, &mut out);
        let mut req = echo_request("fd00::10", "fd00::1", 1, 1, b"x");
        req[41] = 1;
        refuse(&req, &mut out);
        // Too short for an echo header.
        refuse(
            &packet("fd00::10", "fd00::1", ICMPV6, &[128, 0, 0, 0, 0, 0, 0]),
            &mut out,
        );
        // Bad checksum.
        let mut req = echo_request("fd00::10", "fd00::1", 1, 1, b"x");
        req[48] ^= 0xff;
        refuse(&req, &mut out);
        // Unspecified / multicast source, multicast destination.
        refuse(&echo_request("::", "fd00::1", 1, 1, b"x"), &mut out);
        refuse(&echo_request("ff02::1", "fd00::1", 1, 1, b"x"), &mut out);
        refuse(&echo_request("fd00::10", "ff02::1", 1, 1, b"x"), &mut out);
    }

    #[test]
    fn parse_variants_and_too_short() {
        assert_eq!(parse_icmpv6(&[]), Err(PacketError::TooShort { len: 0 }));
        assert_eq!(
            parse_icmpv6(&[1, 0, 0]),
            Err(PacketError::TooShort { len: 3 })
        );
        for ty in [1u8, 2, 3, 128, 129] {
            assert_eq!(
                parse_icmpv6(&[ty, 0, 0, 0, 0, 0, 0]),
                Err(PacketError::TooShort { len: 7 })
            );
        }
        assert_eq!(
            parse_icmpv6(&[4, 2, 0, 0]),
            Ok(Icmpv6Message::Other { ty: 4, code: 2 })
        );
        assert_eq!(
            parse_icmpv6(&[135, 0, 0, 0, 0, 0, 0, 0, 1]),
            Ok(Icmpv6Message::Other { ty: 135, code: 0 })
        );
        assert_eq!(
            parse_icmpv6(&[1, 3, 0xff, 0xff, 0, 0, 0, 0]),
            Ok(Icmpv6Message::DestinationUnreachable { code: 3 })
        );
        assert_eq!(
            parse_icmpv6(&[3, 1, 0, 0, 0, 0, 0, 0, 0x60]),
            Ok(Icmpv6Message::TimeExceeded { code: 1 })
        );
        assert_eq!(
            parse_icmpv6(&[2, 0, 0, 0, 0, 0, 0x05, 0xdc]),
            Ok(Icmpv6Message::PacketTooBig { mtu: 1500 })
        );
        assert_eq!(
            parse_icmpv6(&[129, 0, 0, 0, 0, 9, 0, 10, 1, 2]),
            Ok(Icmpv6Message::EchoReply {
                ident: 9,
                seq: 10,
                data_len: 2
            })
        );
    }

    #[test]
    fn embedded_packet_only_for_errors() {
        assert_eq!(
            embedded_packet(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 8]),
            Some(&[7u8, 8][..])
        );
        assert_eq!(embedded_packet(&[4, 0, 0, 0, 0, 0, 0, 0]), Some(&[][..]));
        assert_eq!(embedded_packet(&[2, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(embedded_packet(&[128, 0, 0, 0, 0, 0, 0, 0, 7]), None);
        assert_eq!(embedded_packet(&[]), None);
    }

    /// Random and mutated inputs: nothing panics, and whatever is built is valid.
    #[test]
    fn random_inputs_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6f6e36);
        let mut out = Vec::new();
        let router = a(ROUTER);
        let exercise = |data: &[u8], out: &mut Vec<u8>| -> bool {
            let _ = parse_icmpv6(data);
            let _ = embedded_packet(data);
            let Ok(p) = Ipv6Packet::new_checked(data) else {
                return false;
            };
            assert_eq!(p.total_len(), data.len());
            assert_eq!(p.payload().len(), usize::from(p.payload_len()));
            let _ = parse_icmpv6(p.payload());
            for kind in [
                IcmpError::DestinationUnreachable { code: NO_ROUTE },
                IcmpError::PacketTooBig { mtu: 1280 },
                IcmpError::TimeExceeded { code: 0 },
            ] {
                if build_error(kind, router, &p, out) {
                    check_error_packet(out, data, router);
                } else {
                    assert!(out.is_empty());
                }
            }
            if build_echo_reply(&p, out) {
                let r = Ipv6Packet::new_checked(&out[..]).unwrap();
                assert!(verify_checksum(r.src(), r.dst(), ICMPV6, r.payload()));
            }
            true
        };

        let mut accepted = 0;
        let mut buf = Vec::new();
        for _ in 0..100_000 {
            let len = rng.random_range(0..200);
            buf.resize(len, 0);
            rng.fill(&mut buf[..]);
            if rng.random_bool(0.5) {
                if let Some(b) = buf.first_mut() {
                    *b = 0x60 | (*b & 0x0f);
                }
            }
            exercise(&buf, &mut out);
        }

        let addrs = ["fd00::10", "fd00::20", "::", "ff02::1", "fe80::1", "::1"];
        let mut echoes = 0;
        for _ in 0..100_000 {
            let src = addrs[rng.random_range(0..addrs.len())];
            let dst = addrs[rng.random_range(0..addrs.len())];
            let mut data = vec![0u8; rng.random_range(0..160)];
            rng.fill(&mut data[..]);
            let mut pkt = match rng.random_range(0..4) {
                0 => echo_request(src, dst, rng.random(), rng.random(), &data),
                1 => {
                    let ty = [1u8, 2, 3, 4, 128, 129, 137][rng.random_range(0..7)];
                    data.insert(0, ty);
                    packet(src, dst, ICMPV6, &data)
                }
                _ => {
                    data.push(0);
                    packet(src, dst, rng.random(), &data)
                }
            };
            for _ in 0..rng.random_range(0..4) {
                let i = rng.random_range(0..pkt.len());
                pkt[i] ^= 1 << rng.random_range(0..8);
            }
            match rng.random_range(0..6) {
                0 => pkt.truncate(rng.random_range(0..=pkt.len())),
                1 => pkt.extend_from_slice(&[0xff; 3][..rng.random_range(1..=3)]),
                _ => {}
            }
            if rng.random_bool(0.5) && pkt.len() > HEADER_LEN {
                // Repair the length field so mutated packets reach the builders.
                let plen = (pkt.len() - HEADER_LEN) as u16;
                pkt[4..6].copy_from_slice(&plen.to_be_bytes());
            }
            if exercise(&pkt, &mut out) {
                accepted += 1;
                if build_echo_reply(&Ipv6Packet::new_checked(&pkt[..]).unwrap(), &mut out) {
                    echoes += 1;
                }
            }
        }
        // The mutated corpus must actually reach the builders.
        assert!(accepted > 30_000, "accepted {accepted}");
        assert!(echoes > 1_000, "echoes {echoes}");
    }
}
