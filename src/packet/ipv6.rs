//! Checked, zero-copy view over an IPv6 packet (fixed header only, RFC 8200 §3).
//!
//! Packets come from slaves that are authenticated but not trusted, so the
//! header is validated once in [`Ipv6Packet::new_checked`]. Accessors still use
//! non-panicking slice access, so even an inconsistent `AsRef` implementation
//! cannot turn into a panic on the forwarding path.

use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// Largest payload expressible in the 16-bit Payload Length field.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

const ZERO_HEADER: [u8; HEADER_LEN] = [0; HEADER_LEN];
/// The TCP next-header value.
const TCP: u8 = 6;

/// Why a buffer is not an acceptable IPv6 packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PacketError {
    /// Fewer bytes than the header (or message) needs.
    #[error("packet too short: {len} bytes")]
    TooShort { len: usize },
    /// The version nibble is not 6.
    #[error("bad IP version {version} (expected 6)")]
    BadVersion { version: u8 },
    /// Payload Length 0 means a Jumbo Payload option follows; not supported.
    #[error("jumbograms (payload length 0) are not supported")]
    Jumbogram,
    /// `header` is the total length the header claims (40 + Payload Length),
    /// `actual` the buffer length; trailing or missing bytes both count.
    #[error("length mismatch: header says {header} bytes, buffer has {actual}")]
    LengthMismatch { header: usize, actual: usize },
}

impl PacketError {
    /// Short, stable snake_case label, usable as a metrics label value.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::TooShort { .. } => "too_short",
            PacketError::BadVersion { .. } => "bad_version",
            PacketError::Jumbogram => "jumbogram",
            PacketError::LengthMismatch { .. } => "length_mismatch",
        }
    }
}

/// An IPv6 packet whose fixed header has been validated against its buffer.
///
/// Invariant (established by [`Ipv6Packet::new_checked`]): the buffer is at
/// least 40 bytes, version is 6, and `40 + payload_len == buffer.len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Validates `buffer` as exactly one IPv6 packet.
    ///
    /// The length must match exactly: trailing bytes would otherwise be
    /// forwarded as part of the packet, or a short buffer would be read past.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        let bytes = buffer.as_ref();
        let actual = bytes.len();
        let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(PacketError::TooShort { len: actual });
        };
        let version = header[0] >> 4;
        if version != 6 {
            return Err(PacketError::BadVersion { version });
        }
        let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if payload_len == 0 {
            return Err(PacketError::Jumbogram);
        }
        let claimed = HEADER_LEN + payload_len;
        if claimed != actual {
            return Err(PacketError::LengthMismatch {
                header: claimed,
                actual,
            });
        }
        Ok(Ipv6Packet { buffer })
    }

    /// The fixed header; all zeros only if the invariant was broken.
    fn header(&self) -> &[u8; HEADER_LEN] {
        self.buffer
            .as_ref()
            .first_chunk::<HEADER_LEN>()
            .unwrap_or(&ZERO_HEADER)
    }

    fn addr_at(&self, offset: usize) -> Ipv6Addr {
        self.header()
            .get(offset..offset + 16)
            .and_then(|s| <[u8; 16]>::try_from(s).ok())
            .map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from)
    }

    /// Always 6 for a checked packet.
    pub fn version(&self) -> u8 {
        self.header()[0] >> 4
    }

    /// Traffic Class (DSCP + ECN).
    pub fn traffic_class(&self) -> u8 {
        let h = self.header();
        (h[0] << 4) | (h[1] >> 4)
    }

    /// 20-bit Flow Label.
    pub fn flow_label(&self) -> u32 {
        let h = self.header();
        u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]])
    }

    /// Payload Length field (bytes after the fixed header, extension headers included).
    pub fn payload_len(&self) -> u16 {
        let h = self.header();
        u16::from_be_bytes([h[4], h[5]])
    }

    /// Next Header field; only the fixed header is parsed, so this may name
    /// an extension header rather than the upper-layer protocol.
    pub fn next_header(&self) -> u8 {
        self.header()[6]
    }

    /// Hop Limit field.
    pub fn hop_limit(&self) -> u8 {
        self.header()[7]
    }

    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        self.addr_at(8)
    }

    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        self.addr_at(24)
    }

    /// Everything after the fixed header.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..self.total_len())
            .unwrap_or(&[])
    }

    /// TCP right after the fixed header.
    pub fn is_tcp(&self) -> bool {
        self.next_header() == TCP
    }

    /// A TCP segment with data. Pure ACKs (and SYNs and FINs without data)
    /// answer `false`: TCP takes them in any order, as it does a lost one.
    pub fn carries_tcp_data(&self) -> bool {
        let tcp = self.payload();
        let header_len = tcp.get(12).map_or(usize::MAX, |b| usize::from(b >> 4) * 4);
        self.is_tcp() && tcp.len() > header_len
    }

    /// A TCP SYN: the first packet each way of a new flow.
    pub fn opens_tcp_flow(&self) -> bool {
        const SYN: u8 = 0x02;
        self.is_tcp() && self.payload().get(13).is_some_and(|flags| flags & SYN != 0)
    }

    /// Header plus payload length; equals the buffer length once checked.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// A borrowed view of the same packet, e.g. to pass an owned packet to
    /// functions taking `&Ipv6Packet<&[u8]>`.
    pub fn as_view(&self) -> Ipv6Packet<&[u8]> {
        Ipv6Packet {
            buffer: self.buffer.as_ref(),
        }
    }

    /// Gives the buffer back (e.g. to reuse its allocation).
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Overwrites the Hop Limit (forwarders decrement it in place; IPv6 has
    /// no header checksum to fix up).
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(7) {
            *b = hop_limit;
        }
    }
}

/// Appends a fixed IPv6 header (traffic class and flow label 0) to `out`.
pub(super) fn push_header(
    out: &mut Vec<u8>,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload_len: u16,
) {
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[next_header, hop_limit]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
}

/// Clears `out` and writes a complete packet (traffic class and flow label 0).
///
/// Payloads longer than 65535 bytes are truncated to 65535 (no jumbograms).
/// An empty payload yields Payload Length 0, which [`Ipv6Packet::new_checked`]
/// rejects as a jumbogram.
pub fn build_ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let payload = payload.get(..MAX_PAYLOAD_LEN).unwrap_or(payload);
    let payload_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    out.clear();
    out.reserve(HEADER_LEN + payload.len());
    push_header(out, src, dst, next_header, hop_limit, payload_len);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn sample(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        build_ipv6(a("fd00::1"), a("fd00::2"), 17, 33, payload, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let payload: Vec<u8> = (0..=255u8).collect();
        let bytes = sample(&payload);
        assert_eq!(bytes.len(), 40 + 256);
        let p = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0);
        assert_eq!(p.payload_len(), 256);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 33);
        assert_eq!(p.src(), a("fd00::1"));
        assert_eq!(p.dst(), a("fd00::2"));
        assert_eq!(p.payload(), &payload[..]);
        assert_eq!(p.total_len(), bytes.len());
        assert_eq!(p.as_bytes(), &bytes[..]);
        assert_eq!(p.as_view(), p);
        assert_eq!(p.into_inner(), &bytes[..]);
    }

    #[test]
    fn tcp_data_is_told_from_pure_acks() {
        let tcp = |data: &[u8]| {
            let mut seg = vec![0u8; 20];
            seg[12] = 5 << 4;
            seg.extend_from_slice(data);
            let mut out = Vec::new();
            build_ipv6(a("fd00::1"), a("fd00::2"), 6, 64, &seg, &mut out);
            out
        };
        let data = tcp(b"hello");
        let ack = tcp(b"");
        let mut syn = ack.clone();
        syn[HEADER_LEN + 13] = 0x02;
        let flow_start = |b: &[u8]| Ipv6Packet::new_checked(b).unwrap().opens_tcp_flow();
        assert!(flow_start(&syn) && !flow_start(&ack) && !flow_start(&data));
        let check = |b: &[u8]| Ipv6Packet::new_checked(b).unwrap().carries_tcp_data();
        assert!(check(&data));
        assert!(!check(&ack), "a pure ACK carries no data");
        assert!(!check(&sample(b"hello, udp")), "UDP is not TCP");
        let mut short = Vec::new();
        build_ipv6(a("fd00::1"), a("fd00::2"), 6, 64, &[0; 3], &mut short);
        assert!(!check(&short), "too short for a TCP header");
    }

    #[test]
    fn traffic_class_and_flow_label() {
        let mut bytes = sample(b"x");
        // version 6, TC 0xab, flow label 0xcdef1
        bytes[..4].copy_from_slice(&[0x6a, 0xbc, 0xde, 0xf1]);
        let p = Ipv6Packet::new_checked(&bytes).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xab);
        assert_eq!(p.flow_label(), 0xcdef1);
    }

    #[test]
    fn set_hop_limit_in_place() {
        let mut p = Ipv6Packet::new_checked(sample(b"abc")).unwrap();
        p.set_hop_limit(p.hop_limit() - 1);
        assert_eq!(p.hop_limit(), 32);
        let bytes = p.into_inner();
        assert_eq!(bytes[7], 32);
        assert_eq!(bytes, {
            let mut e = sample(b"abc");
            e[7] = 32;
            e
        });
    }

    #[test]
    fn rejects_too_short() {
        for len in [0, 1, 39] {
            let err = Ipv6Packet::new_checked(vec![0x60; len]).unwrap_err();
            assert_eq!(err, PacketError::TooShort { len });
            assert_eq!(err.reason(), "too_short");
        }
    }

    #[test]
    fn rejects_bad_version() {
        for version in [0u8, 4, 7, 15] {
            let mut bytes = sample(b"abc");
            bytes[0] = (version << 4) | (bytes[0] & 0x0f);
            let err = Ipv6Packet::new_checked(&bytes).unwrap_err();
            assert_eq!(err, PacketError::BadVersion { version });
            assert_eq!(err.reason(), "bad_version");
        }
    }

    #[test]
    fn rejects_jumbogram() {
        let mut bytes = sample(b"abc");
        bytes[4] = 0;
        bytes[5] = 0;
        let err = Ipv6Packet::new_checked(&bytes).unwrap_err();
        assert_eq!(err, PacketError::Jumbogram);
        assert_eq!(err.reason(), "jumbogram");
        // A builder with an empty payload produces exactly this.
        assert_eq!(
            Ipv6Packet::new_checked(sample(b"")).unwrap_err(),
            PacketError::Jumbogram
        );
    }

    #[test]
    fn rejects_length_mismatch() {
        let mut longer = sample(b"abc");
        longer.push(0);
        let err = Ipv6Packet::new_checked(&longer).unwrap_err();
        assert_eq!(
            err,
            PacketError::LengthMismatch {
                header: 43,
                actual: 44
            }
        );
        assert_eq!(err.reason(), "length_mismatch");

        let mut shorter = sample(b"abc");
        shorter.pop();
        assert_eq!(
            Ipv6Packet::new_checked(&shorter).unwrap_err(),
            PacketError::LengthMismatch {
                header: 43,
                actual: 42
            }
        );
    }

    #[test]
    fn error_messages_are_descriptive() {
        let cases = [
            PacketError::TooShort { len: 3 },
            PacketError::BadVersion { version: 4 },
            PacketError::Jumbogram,
            PacketError::LengthMismatch {
                header: 43,
                actual: 44,
            },
        ];
        let shown: Vec<String> = cases.iter().map(ToString::to_string).collect();
        assert_eq!(shown[0], "packet too short: 3 bytes");
        assert_eq!(shown[1], "bad IP version 4 (expected 6)");
        assert!(shown[2].contains("jumbogram"));
        assert_eq!(
            shown[3],
            "length mismatch: header says 43 bytes, buffer has 44"
        );
    }

    #[test]
    fn builder_clears_and_caps() {
        let mut out = vec![1, 2, 3];
        build_ipv6(a("::1"), a("::2"), 59, 1, b"z", &mut out);
        assert_eq!(out.len(), 41);
        assert!(Ipv6Packet::new_checked(&out).is_ok());

        let big = vec![7u8; MAX_PAYLOAD_LEN + 10];
        build_ipv6(a("::1"), a("::2"), 59, 1, &big, &mut out);
        assert_eq!(out.len(), HEADER_LEN + MAX_PAYLOAD_LEN);
        let p = Ipv6Packet::new_checked(&out).unwrap();
        assert_eq!(p.payload_len(), u16::MAX);
    }
}
