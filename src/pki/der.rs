//! The two certificate extensions on6 adds, in DER: the RFC 3779 IP address
//! blocks (IPv6 prefixes a node may announce) and the node's role.
//!
//! Hand-written because the structures are tiny and the decoder must be strict
//! and bounded: it reads bytes an attacker chose.

use ipnet::Ipv6Net;
use std::net::Ipv6Addr;

/// id-pe-ipAddrBlocks (RFC 3779 §2.2.1).
pub const OID_IP_ADDR_BLOCKS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 7];
/// on6 node role. A private arc: replace with the operator's enterprise number
/// if certificates must interoperate with other tooling.
pub const OID_ON6_ROLE: &[u64] = &[1, 3, 6, 1, 4, 1, 59_999, 6, 1];

const SEQUENCE: u8 = 0x30;
const OCTET_STRING: u8 = 0x04;
const BIT_STRING: u8 = 0x03;
const UTF8_STRING: u8 = 0x0c;
const AFI_IPV6: [u8; 2] = [0x00, 0x02];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed certificate extension: {0}")]
pub struct DerError(pub &'static str);

fn push_tlv(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(body);
}

/// Reads one TLV with the expected tag; returns (body, rest).
fn read_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), DerError> {
    let (&got, rest) = input.split_first().ok_or(DerError("truncated tag"))?;
    if got != tag {
        return Err(DerError("unexpected tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(DerError("truncated length"))?;
    let (len, rest) = match first {
        l if l < 0x80 => (l as usize, rest),
        0x81 => {
            let (&l, rest) = rest.split_first().ok_or(DerError("truncated length"))?;
            (l as usize, rest)
        }
        0x82 => {
            let b = rest.get(..2).ok_or(DerError("truncated length"))?;
            ((b[0] as usize) << 8 | b[1] as usize, &rest[2..])
        }
        _ => return Err(DerError("length too large")),
    };
    if rest.len() < len {
        return Err(DerError("length beyond end"));
    }
    Ok(rest.split_at(len))
}

/// Encodes IPAddrBlocks holding one IPv6 family with the given prefixes.
pub fn encode_ip_addr_blocks(prefixes: &[Ipv6Net]) -> Vec<u8> {
    let mut sorted: Vec<Ipv6Net> = prefixes.iter().map(|p| p.trunc()).collect();
    sorted.sort();
    sorted.dedup();
    let mut choices = Vec::new();
    for p in &sorted {
        let len = p.prefix_len() as usize;
        let nbytes = len.div_ceil(8);
        let unused = (nbytes * 8 - len) as u8;
        let mut bits = vec![unused];
        bits.extend_from_slice(&p.network().octets()[..nbytes]);
        push_tlv(&mut choices, BIT_STRING, &bits);
    }
    let mut family = Vec::new();
    push_tlv(&mut family, OCTET_STRING, &AFI_IPV6);
    push_tlv(&mut family, SEQUENCE, &choices);
    let mut families = Vec::new();
    push_tlv(&mut families, SEQUENCE, &family);
    let mut out = Vec::new();
    push_tlv(&mut out, SEQUENCE, &families);
    out
}

/// Decodes the IPv6 prefixes of an IPAddrBlocks extension. Other families are
/// skipped; ranges and `inherit` are refused (on6 never issues them).
pub fn decode_ip_addr_blocks(input: &[u8]) -> Result<Vec<Ipv6Net>, DerError> {
    let (mut families, rest) = read_tlv(input, SEQUENCE)?;
    if !rest.is_empty() {
        return Err(DerError("trailing bytes"));
    }
    let mut prefixes = Vec::new();
    while !families.is_empty() {
        let (family, next) = read_tlv(families, SEQUENCE)?;
        families = next;
        let (afi, choice) = read_tlv(family, OCTET_STRING)?;
        if afi.get(..2) != Some(&AFI_IPV6[..]) {
            continue;
        }
        let (mut entries, rest) = read_tlv(choice, SEQUENCE)
            .map_err(|_| DerError("only address prefixes are supported"))?;
        if !rest.is_empty() {
            return Err(DerError("trailing bytes in family"));
        }
        while !entries.is_empty() {
            let (bits, next) = read_tlv(entries, BIT_STRING)
                .map_err(|_| DerError("expected an address prefix"))?;
            entries = next;
            let (&unused, addr) = bits.split_first().ok_or(DerError("empty bit string"))?;
            if unused > 7 || addr.len() > 16 || (addr.is_empty() && unused != 0) {
                return Err(DerError("bad prefix bit string"));
            }
            let len = addr.len() * 8 - unused as usize;
            let mut octets = [0u8; 16];
            octets[..addr.len()].copy_from_slice(addr);
            let net = Ipv6Net::new(Ipv6Addr::from(octets), len as u8)
                .map_err(|_| DerError("bad prefix length"))?;
            prefixes.push(net.trunc());
        }
    }
    Ok(prefixes)
}

pub fn encode_utf8(value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_tlv(&mut out, UTF8_STRING, value.as_bytes());
    out
}

pub fn decode_utf8(input: &[u8]) -> Result<&str, DerError> {
    let (body, rest) = read_tlv(input, UTF8_STRING)?;
    if !rest.is_empty() {
        return Err(DerError("trailing bytes"));
    }
    std::str::from_utf8(body).map_err(|_| DerError("invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addr_blocks_round_trip() {
        let prefixes: Vec<Ipv6Net> = [
            "fd6e:0:a::/48",
            "2001:db8::/32",
            "::/0",
            "fd00::1/128",
            "fd6e:0:b:8000::/49",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let der = encode_ip_addr_blocks(&prefixes);
        let mut back = decode_ip_addr_blocks(&der).unwrap();
        back.sort();
        let mut want = prefixes.clone();
        want.sort();
        assert_eq!(back, want);
    }

    #[test]
    fn rfc3779_example_encoding() {
        // 2001:db8::/32 -> BIT STRING 03 05 00 20 01 0d b8
        let der = encode_ip_addr_blocks(&["2001:db8::/32".parse().unwrap()]);
        assert_eq!(
            der,
            [
                0x30, 0x0f, 0x30, 0x0d, 0x04, 0x02, 0x00, 0x02, 0x30, 0x07, 0x03, 0x05, 0x00, 0x20,
                0x01, 0x0d, 0xb8
            ]
        );
    }

    #[test]
    fn garbage_is_refused_not_panicking() {
        let der = encode_ip_addr_blocks(&["fd6e:0:a::/48".parse().unwrap()]);
        for cut in 0..der.len() {
            assert!(decode_ip_addr_blocks(&der[..cut]).is_err());
        }
        let mut seed = 7u64;
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = decode_ip_addr_blocks(&bytes);
            let _ = decode_utf8(&bytes);
        }
    }
}
