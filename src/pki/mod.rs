//! Fleet identity: one CA (made with rcgen) signs every node certificate.
//!
//! A node certificate names the node (CN and DNS SAN), its role (a private
//! extension) and the IPv6 prefixes it may announce (RFC 3779 IP address
//! blocks, non-critical so standard verifiers accept it). The same parsed
//! [`NodeIdentity`] drives every authorization decision after a handshake.

mod der;
mod verify;

pub use der::{DerError, OID_IP_ADDR_BLOCKS, OID_ON6_ROLE};
pub use verify::{client_verifier, server_verifier};

use ipnet::Ipv6Net;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("certificate is not parseable X.509: {0}")]
    Parse(String),
    #[error("certificate has no on6 {0} extension")]
    MissingExtension(&'static str),
    #[error(transparent)]
    Der(#[from] DerError),
    #[error("unknown role {0:?} (expected master or slave)")]
    BadRole(String),
    #[error("invalid node name {0:?}: use lowercase letters, digits, '-' and '.'")]
    BadName(String),
}

/// What a node is allowed to be in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A site's master (also the identity sites present to each other).
    Master,
    /// A slave attaching to a master from its own process.
    Slave,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Slave => "slave",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master" => Ok(Role::Master),
            "slave" => Ok(Role::Slave),
            other => Err(PkiError::BadRole(other.to_string())),
        }
    }
}

/// The authenticated facts a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeIdentity {
    pub name: String,
    pub role: Role,
    pub prefixes: Vec<Ipv6Net>,
    /// Lowercase hex, no separators: the key used by the revocation list.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl NodeIdentity {
    /// Whether `net` lies inside one of the certificate's prefixes.
    pub fn covers(&self, net: &Ipv6Net) -> bool {
        self.prefixes.iter().any(|p| p.contains(net))
    }

    pub fn covers_addr(&self, addr: &std::net::Ipv6Addr) -> bool {
        self.prefixes.iter().any(|p| p.contains(addr))
    }

    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(PkiError::MissingExtension("common name"))?
            .to_string();
        let mut role = None;
        let mut prefixes = None;
        for ext in cert.extensions() {
            let oid: Vec<u64> = ext.oid.iter().map(|i| i.collect()).unwrap_or_default();
            if oid == der::OID_ON6_ROLE {
                role = Some(der::decode_utf8(ext.value)?.parse::<Role>()?);
            } else if oid == der::OID_IP_ADDR_BLOCKS {
                prefixes = Some(der::decode_ip_addr_blocks(ext.value)?);
            }
        }
        Ok(NodeIdentity {
            name,
            role: role.ok_or(PkiError::MissingExtension("role"))?,
            prefixes: prefixes.ok_or(PkiError::MissingExtension("IP address blocks"))?,
            serial: hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Normalizes a serial as operators may write it ("0A:1b", "0x0a1b").
fn normalize_serial(s: &str) -> String {
    let s = s.trim().trim_start_matches("0x");
    let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let digits = digits.to_ascii_lowercase();
    // DER may carry a leading zero byte; compare without leading zeros.
    digits.trim_start_matches('0').to_string()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// A PEM certificate and its PEM private key.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a fleet CA valid for `days`.
pub fn init_ca(name: &str, days: u32) -> Result<Pair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "on6 fleet");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days as i64);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero to strip
    SerialNumber::from_slice(&bytes)
}

/// What to put in a node certificate.
pub struct IssueRequest<'a> {
    pub name: &'a str,
    pub role: Role,
    pub prefixes: &'a [Ipv6Net],
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

/// Issues a node certificate signed by the CA; returns it with its new key and serial.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    req: &IssueRequest,
) -> Result<(Pair, String), PkiError> {
    if !valid_name(req.name) {
        return Err(PkiError::BadName(req.name.to_string()));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![req.name.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, req.name);
    params.not_before = req.not_before;
    params.not_after = req.not_after;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let serial = random_serial();
    let serial_hex = hex(&serial.to_bytes());
    params.serial_number = Some(serial);
    params.custom_extensions = vec![
        CustomExtension::from_oid_content(
            der::OID_IP_ADDR_BLOCKS,
            der::encode_ip_addr_blocks(req.prefixes),
        ),
        CustomExtension::from_oid_content(
            der::OID_ON6_ROLE,
            der::encode_utf8(&req.role.to_string()),
        ),
    ];
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        serial_hex,
    ))
}

/// Writes a file; keys get mode 0600 before any byte is written.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(contents.as_bytes()).map_err(io)
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PkiError::NoPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| PkiError::NoPem {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// A file of revoked serials (hex, one per line, `#` comments), re-read when it
/// changes so an operator can revoke without restarting nodes.
#[derive(Debug)]
pub struct RevocationList {
    path: Option<PathBuf>,
    state: Mutex<(Option<SystemTime>, HashSet<String>)>,
}

impl RevocationList {
    pub fn empty() -> Self {
        RevocationList {
            path: None,
            state: Mutex::new((None, HashSet::new())),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, PkiError> {
        let list = RevocationList {
            path: Some(path.to_path_buf()),
            state: Mutex::new((None, HashSet::new())),
        };
        list.reload()?;
        Ok(list)
    }

    fn reload(&self) -> Result<(), PkiError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| PkiError::Io {
            path: path.clone(),
            source,
        };
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(io)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == Some(mtime) {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        state.1 = parse_revocations(&text);
        state.0 = Some(mtime);
        Ok(())
    }

    /// Whether `serial` (hex) is revoked. An unreadable list fails closed.
    pub fn is_revoked(&self, serial: &str) -> bool {
        if let Err(e) = self.reload() {
            tracing::error!(error = %e, "revocation list unreadable: refusing every peer");
            return true;
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1.contains(&normalize_serial(serial))
    }
}

fn parse_revocations(text: &str) -> HashSet<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(normalize_serial)
        .collect()
}

/// Everything a node needs to speak mutually authenticated QUIC.
#[derive(Clone)]
pub struct Credentials {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The key's PEM text: the DHT slave derives its libp2p identity from it.
    pub key_pem: Option<String>,
    pub identity: NodeIdentity,
    pub revoked: Arc<RevocationList>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn load(
        ca: &Path,
        cert: &Path,
        key: &Path,
        revoked: Option<&Path>,
    ) -> Result<Self, PkiError> {
        let ca = load_certs(ca)?.remove(0);
        let chain = load_certs(cert)?;
        let key_pem = std::fs::read_to_string(key).ok();
        let key = load_key(key)?;
        let identity = NodeIdentity::from_der(&chain[0])?;
        let revoked = match revoked {
            Some(p) => RevocationList::from_file(p)?,
            None => RevocationList::empty(),
        };
        Ok(Credentials {
            ca,
            chain,
            key: Arc::new(key),
            key_pem,
            identity,
            revoked: Arc::new(revoked),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn year() -> (time::OffsetDateTime, time::OffsetDateTime) {
        let now = time::OffsetDateTime::now_utc();
        (
            now - time::Duration::hours(1),
            now + time::Duration::days(365),
        )
    }

    #[test]
    fn issued_certificate_carries_identity() {
        let ca = init_ca("test fleet", 30).unwrap();
        let prefixes: Vec<Ipv6Net> = vec!["fd6e:0:a::/48".parse().unwrap()];
        let (nb, na) = year();
        let (pair, serial) = issue(
            &ca.cert_pem,
            &ca.key_pem,
            &IssueRequest {
                name: "site-a",
                role: Role::Master,
                prefixes: &prefixes,
                not_before: nb,
                not_after: na,
            },
        )
        .unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap();
        let id = NodeIdentity::from_der(&der).unwrap();
        assert_eq!(id.name, "site-a");
        assert_eq!(id.role, Role::Master);
        assert_eq!(id.prefixes, prefixes);
        assert_eq!(normalize_serial(&id.serial), normalize_serial(&serial));
        assert!(id.covers(&"fd6e:0:a:1::/64".parse().unwrap()));
        assert!(!id.covers(&"fd6e:0:b::/48".parse().unwrap()));
    }

    #[test]
    fn bad_names_are_refused() {
        let ca = init_ca("test fleet", 30).unwrap();
        let (nb, na) = year();
        for name in ["", "Site", "a b", "-x", "x."] {
            let r = issue(
                &ca.cert_pem,
                &ca.key_pem,
                &IssueRequest {
                    name,
                    role: Role::Slave,
                    prefixes: &[],
                    not_before: nb,
                    not_after: na,
                },
            );
            assert!(matches!(r, Err(PkiError::BadName(_))), "{name:?}");
        }
    }

    #[test]
    fn revocation_list_formats() {
        let set = parse_revocations("# comment\n0A:1B:2c\n0x00ff # trailing\n\n");
        assert!(set.contains(&normalize_serial("0a1b2c")));
        assert!(set.contains(&normalize_serial("ff")));
        assert_eq!(set.len(), 2);
    }
}
