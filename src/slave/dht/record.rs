//! Signed DHT entries: "prefix P is served at these QUIC endpoints by node N,
//! sequence S, valid until T", signed with N's certificate key and carrying
//! the certificate, so any fleet member can check it offline: chain to the
//! fleet CA, not revoked, a site (master) certificate covering P, not
//! expired, signature valid. Several entries (different prefixes, different
//! owners) share one DHT key; a record value is a list of entries.
//!
//! Entry wire format (big endian):
//! `u8 version | 16-byte network | u8 prefix length | u8 endpoint count |
//!  (u8 family 4|6, 4|16-byte address, u16 port)* | u64 seq | u64 expires
//!  (unix seconds) | u16 cert length | cert DER | u16 signature length | signature`.
//! The signature covers `DOMAIN` followed by every byte before the signature length.

use crate::pki::{NodeIdentity, Role};
use ipnet::Ipv6Net;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"on6-dht-entry-v1";
/// Refuse record values beyond this before parsing them.
pub const MAX_VALUE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    pub prefix: Ipv6Net,
    pub endpoints: Vec<SocketAddr>,
    pub seq: u64,
    pub expires: u64,
    pub cert: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("malformed DHT entry: {0}")]
    Malformed(&'static str),
    #[error("DHT entry expired")]
    Expired,
    #[error("DHT entry certificate refused: {0}")]
    Certificate(String),
    #[error("DHT entry for {prefix} outside the certificate of {owner}")]
    NotCovered { prefix: Ipv6Net, owner: String },
    #[error("DHT entry signature invalid")]
    BadSignature,
}

impl RecordError {
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::Malformed(_) => "malformed",
            RecordError::Expired => "expired",
            RecordError::Certificate(_) => "certificate",
            RecordError::NotCovered { .. } => "not_covered",
            RecordError::BadSignature => "bad_signature",
        }
    }
}

fn put_endpoint(out: &mut Vec<u8>, e: &SocketAddr) {
    match e.ip() {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&e.port().to_be_bytes());
}

impl SignedEntry {
    /// The signed part of the encoding.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.cert.len());
        out.push(VERSION);
        out.extend_from_slice(&self.prefix.network().octets());
        out.push(self.prefix.prefix_len());
        out.push(self.endpoints.len().min(255) as u8);
        for e in self.endpoints.iter().take(255) {
            put_endpoint(&mut out, e);
        }
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.extend_from_slice(&(self.cert.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.cert);
        out
    }

    /// Makes and signs an entry; `sign` signs bytes with the certificate's key.
    pub fn sign(
        prefix: Ipv6Net,
        endpoints: Vec<SocketAddr>,
        seq: u64,
        expires: u64,
        cert: Vec<u8>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Self {
        let mut e = SignedEntry {
            prefix,
            endpoints,
            seq,
            expires,
            cert,
            signature: vec![],
        };
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&e.body());
        e.signature = sign(&msg);
        e
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.body());
        out.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signature);
    }

    fn decode(r: &mut &[u8]) -> Result<Self, RecordError> {
        let start = *r;
        let take = |r: &mut &[u8], n: usize| -> Result<Vec<u8>, RecordError> {
            if r.len() < n {
                return Err(RecordError::Malformed("truncated"));
            }
            let (h, t) = r.split_at(n);
            *r = t;
            Ok(h.to_vec())
        };
        if take(r, 1)?[0] != VERSION {
            return Err(RecordError::Malformed("unknown version"));
        }
        let mut net = [0u8; 16];
        net.copy_from_slice(&take(r, 16)?);
        let len = take(r, 1)?[0];
        let prefix = Ipv6Net::new(Ipv6Addr::from(net), len)
            .map_err(|_| RecordError::Malformed("prefix length"))?;
        if prefix.trunc() != prefix {
            return Err(RecordError::Malformed("prefix has host bits set"));
        }
        let count = take(r, 1)?[0];
        let mut endpoints = Vec::new();
        for _ in 0..count {
            let ip = match take(r, 1)?[0] {
                4 => {
                    let b = take(r, 4)?;
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                6 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&take(r, 16)?);
                    IpAddr::V6(Ipv6Addr::from(a))
                }
                _ => return Err(RecordError::Malformed("endpoint family")),
            };
            let p = take(r, 2)?;
            endpoints.push(SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]])));
        }
        let u64_of = |b: Vec<u8>| b.iter().fold(0u64, |acc, x| acc << 8 | *x as u64);
        let seq = u64_of(take(r, 8)?);
        let expires = u64_of(take(r, 8)?);
        let cl = take(r, 2)?;
        let cert = take(r, u16::from_be_bytes([cl[0], cl[1]]) as usize)?;
        let body_len = start.len() - r.len();
        let sl = take(r, 2)?;
        let signature = take(r, u16::from_be_bytes([sl[0], sl[1]]) as usize)?;
        let e = SignedEntry {
            prefix,
            endpoints,
            seq,
            expires,
            cert,
            signature,
        };
        debug_assert_eq!(e.body().len(), body_len);
        Ok(e)
    }

    /// Checks the signature against the certificate's key and the prefix
    /// against its prefixes; `verify_cert` checks chain, validity and
    /// revocation and returns the identity.
    pub fn verify(
        &self,
        now_unix: u64,
        verify_cert: impl FnOnce(&[u8]) -> Result<NodeIdentity, String>,
    ) -> Result<NodeIdentity, RecordError> {
        if self.expires <= now_unix {
            return Err(RecordError::Expired);
        }
        let id = verify_cert(&self.cert).map_err(RecordError::Certificate)?;
        if id.role != Role::Master {
            return Err(RecordError::Certificate(format!(
                "{} is not a site certificate",
                id.name
            )));
        }
        if !id.covers(&self.prefix) {
            return Err(RecordError::NotCovered {
                prefix: self.prefix,
                owner: id.name,
            });
        }
        let key = cert_public_key(&self.cert)
            .ok_or(RecordError::Certificate("no P-256 public key".into()))?;
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&self.body());
        if !key.verify(&msg, &self.signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(id)
    }
}

/// The certificate's P-256 public key, as libp2p verifies with it.
pub fn cert_public_key(cert: &[u8]) -> Option<libp2p::identity::ecdsa::PublicKey> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    libp2p::identity::ecdsa::PublicKey::try_from_bytes(&c.public_key().subject_public_key.data).ok()
}

pub fn encode_value(entries: &[SignedEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len().min(u16::MAX as usize) as u16).to_be_bytes());
    for e in entries.iter().take(u16::MAX as usize) {
        e.encode(&mut out);
    }
    out
}

/// Decodes a record value; a malformed value is refused whole.
pub fn decode_value(mut bytes: &[u8]) -> Result<Vec<SignedEntry>, RecordError> {
    if bytes.len() > MAX_VALUE {
        return Err(RecordError::Malformed("value too large"));
    }
    let count = match bytes {
        [a, b, rest @ ..] => {
            let c = u16::from_be_bytes([*a, *b]);
            bytes = rest;
            c
        }
        _ => return Err(RecordError::Malformed("truncated")),
    };
    let mut out = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        out.push(SignedEntry::decode(&mut bytes)?);
    }
    if !bytes.is_empty() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    Ok(out)
}

/// Merges entries: per (prefix, certificate) only the highest sequence
/// survives; expired entries go. Keeps values bounded by dropping the oldest.
pub fn merge(
    into: &mut Vec<SignedEntry>,
    more: impl IntoIterator<Item = SignedEntry>,
    now_unix: u64,
) {
    for e in more {
        match into
            .iter_mut()
            .find(|x| x.prefix == e.prefix && x.cert == e.cert)
        {
            Some(x) if x.seq >= e.seq => {}
            Some(x) => *x = e,
            None => into.push(e),
        }
    }
    into.retain(|e| e.expires > now_unix);
    while encode_value(into).len() > MAX_VALUE {
        if let Some(oldest) = into
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.seq)
            .map(|(i, _)| i)
        {
            into.remove(oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    fn identity(prefixes: &[&str], role: Role) -> (Vec<u8>, libp2p::identity::ecdsa::Keypair) {
        let ca = pki::init_ca("t", 1).unwrap();
        let nets: Vec<Ipv6Net> = prefixes.iter().map(|p| p.parse().unwrap()).collect();
        let now = time::OffsetDateTime::now_utc();
        let (pair, _) = pki::issue(
            &ca.cert_pem,
            &ca.key_pem,
            &pki::IssueRequest {
                name: "site-b",
                role,
                prefixes: &nets,
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::hours(1),
            },
        )
        .unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pair.cert_pem.as_bytes())
            .unwrap()
            .to_vec();
        let key = super::super::keys::keypair_from_pem(&pair.key_pem).unwrap();
        (der, key)
    }

    fn trust(cert: &[u8]) -> Result<NodeIdentity, String> {
        NodeIdentity::from_der(cert).map_err(|e| e.to_string())
    }

    /// An entry of site-b's, signed with its key, and the key.
    fn signed_entry() -> (SignedEntry, libp2p::identity::ecdsa::Keypair) {
        let (cert, key) = identity(&["fd6e:0:b::/48"], Role::Master);
        let e = SignedEntry::sign(
            "fd6e:0:b::/48".parse().unwrap(),
            vec![
                "10.0.0.2:4435".parse().unwrap(),
                "[2001:db8::1]:4435".parse().unwrap(),
            ],
            7,
            2_000_000_000,
            cert,
            |m| key.sign(m),
        );
        (e, key)
    }

    #[test]
    fn sign_encode_decode_verify() {
        let (e, key) = signed_entry();
        let value = encode_value(std::slice::from_ref(&e));
        let back = decode_value(&value).unwrap();
        assert_eq!(back, vec![e.clone()]);
        assert_eq!(back[0].verify(1_000, trust).unwrap().name, "site-b");
        assert_eq!(
            back[0].verify(2_000_000_001, trust),
            Err(RecordError::Expired)
        );
        // Any change to the signed fields breaks the signature.
        let mut forged = e.clone();
        forged.endpoints = vec!["10.6.6.6:4435".parse().unwrap()];
        assert_eq!(forged.verify(1_000, trust), Err(RecordError::BadSignature));
        // A prefix outside the certificate is refused even when properly signed.
        let outside = SignedEntry::sign(
            "fd6e:0:c::/48".parse().unwrap(),
            vec![],
            1,
            2_000_000_000,
            e.cert.clone(),
            |m| key.sign(m),
        );
        assert!(matches!(
            outside.verify(1_000, trust),
            Err(RecordError::NotCovered { .. })
        ));
        // Cutting the value anywhere is an error, not a panic.
        for cut in 0..value.len() {
            assert!(decode_value(&value[..cut]).is_err());
        }
    }

    /// A value corrupted anywhere (one bit in each byte) is refused by the
    /// decoder or by verification: no corruption yields an entry that is
    /// trusted, and whatever decodes re-encodes to the same bytes.
    #[test]
    fn no_corrupted_byte_passes_decoding_and_verification() {
        let (e, _) = signed_entry();
        let value = encode_value(std::slice::from_ref(&e));
        let (mut refused_by_decoder, mut refused_by_verify) = (0, 0);
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 1 << (i % 8);
            match decode_value(&bad) {
                Err(RecordError::Malformed(_)) => refused_by_decoder += 1,
                Err(other) => panic!("byte {i}: decoder error {other:?}"),
                Ok(entries) => {
                    assert_eq!(encode_value(&entries), bad, "byte {i}: re-encoding differs");
                    for entry in &entries {
                        assert!(entry.verify(1_000, trust).is_err(), "byte {i} verified");
                    }
                    refused_by_verify += 1;
                }
            }
        }
        // Both layers do their part: framing bytes fail decoding, the
        // signed fields and the signature fail verification.
        assert!(refused_by_decoder > 0 && refused_by_verify > 0);
    }

    #[test]
    fn slave_certificates_cannot_publish() {
        let (cert, key) = identity(&["fd6e:0:b::/48"], Role::Slave);
        let e = SignedEntry::sign(
            "fd6e:0:b::/48".parse().unwrap(),
            vec![],
            1,
            2_000_000_000,
            cert,
            |m| key.sign(m),
        );
        assert!(matches!(
            e.verify(1, trust),
            Err(RecordError::Certificate(_))
        ));
    }

    #[test]
    fn merge_keeps_newest_per_prefix_and_owner() {
        let (cert, key) = identity(&["fd6e:0:b::/48"], Role::Master);
        let mk = |p: &str, seq| {
            SignedEntry::sign(
                p.parse().unwrap(),
                vec![],
                seq,
                100 + seq,
                cert.clone(),
                |m| key.sign(m),
            )
        };
        let mut v = vec![mk("fd6e:0:b::/48", 1)];
        merge(&mut v, [mk("fd6e:0:b::/48", 5), mk("fd6e:0:b::/64", 2)], 0);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v.iter().find(|e| e.prefix.prefix_len() == 48).unwrap().seq,
            5
        );
        merge(&mut v, [mk("fd6e:0:b::/48", 3)], 0);
        assert_eq!(
            v.iter().find(|e| e.prefix.prefix_len() == 48).unwrap().seq,
            5
        );
        merge(&mut v, [], 103);
        assert_eq!(v.len(), 1, "the entry expiring at 102 is gone");
    }
}
