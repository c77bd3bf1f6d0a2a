//! The node's certificate key doubles as its libp2p identity (ECDSA P-256):
//! a DHT peer id then names the certificate holder, and the noise handshake
//! proves possession of the certificate's key.

use libp2p::identity::{ecdsa, Keypair};

/// Reads the raw P-256 scalar out of a PKCS#8 PEM key (as rcgen writes it).
pub fn keypair_from_pem(pem: &str) -> Option<ecdsa::Keypair> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    scalar_from_pkcs8(der.secret_pkcs8_der())
}

/// PKCS#8 wraps an ECPrivateKey: `SEQUENCE { INTEGER 1, OCTET STRING (32) ... }`.
fn scalar_from_pkcs8(der: &[u8]) -> Option<ecdsa::Keypair> {
    const MARK: [u8; 5] = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = der.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let scalar = der.get(at..at + 32)?;
    let secret = ecdsa::SecretKey::try_from_bytes(scalar).ok()?;
    Some(ecdsa::Keypair::from(secret))
}

pub fn libp2p_keypair(k: ecdsa::Keypair) -> Keypair {
    Keypair::from(k)
}
