//! The control protocol between a slave and its master: versioned,
//! length-delimited frames. The same [`ControlMessage`] values travel over a
//! QUIC stream (encoded) or a channel (in-process slaves).
//!
//! Frame: `u32 length (big endian, of what follows) | u8 version | u8 type | body`.
//! Strings are `u16 length | UTF-8`; prefix lists are `u16 count | (16-byte
//! address, u8 length)*`. A decoder error names what was wrong; the session
//! that sent it is closed, nothing else.

use ipnet::Ipv6Net;
use std::net::Ipv6Addr;

pub const VERSION: u8 = 1;
/// Frames larger than this are refused before they are read.
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlaveKind {
    Gateway,
    Tunnel,
    Dht,
    Multicast,
    Anycast,
    Resiliency,
    Bridge,
    Management,
}

impl SlaveKind {
    pub const ALL: [SlaveKind; 8] = [
        SlaveKind::Gateway,
        SlaveKind::Tunnel,
        SlaveKind::Dht,
        SlaveKind::Multicast,
        SlaveKind::Anycast,
        SlaveKind::Resiliency,
        SlaveKind::Bridge,
        SlaveKind::Management,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlaveKind::Gateway => "gateway",
            SlaveKind::Tunnel => "tunnel",
            SlaveKind::Dht => "dht",
            SlaveKind::Multicast => "multicast",
            SlaveKind::Anycast => "anycast",
            SlaveKind::Resiliency => "resiliency",
            SlaveKind::Bridge => "bridge",
            SlaveKind::Management => "management",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get((code as usize).checked_sub(1)?).copied()
    }
}

impl std::fmt::Display for SlaveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// A slave's first message: who it is and the prefixes it serves.
    Hello {
        kind: SlaveKind,
        name: String,
        prefixes: Vec<Ipv6Net>,
        mtu: u16,
    },
    /// The master installed these prefixes; `router` is the address it answers ICMPv6 from.
    Accepted {
        prefixes: Vec<Ipv6Net>,
        router: Ipv6Addr,
    },
    /// The master refused an announcement; the session stays up with what was accepted.
    Refused {
        prefix: Option<Ipv6Net>,
        reason: String,
    },
    /// Prefixes added after the Hello.
    Announce {
        prefixes: Vec<Ipv6Net>,
    },
    Withdraw {
        prefixes: Vec<Ipv6Net>,
    },
    /// A protocol error; the sender closes the session after it.
    Error {
        reason: String,
    },
    /// Master to DHT slaves: the prefixes this site's gateways serve now.
    Served {
        prefixes: Vec<Ipv6Net>,
    },
}

const T_HELLO: u8 = 1;
const T_ACCEPTED: u8 = 2;
const T_REFUSED: u8 = 3;
const T_ANNOUNCE: u8 = 4;
const T_WITHDRAW: u8 = 5;
const T_ERROR: u8 = 6;
const T_SERVED: u8 = 7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge { len: usize },
    #[error("control frame too short: {len} bytes")]
    FrameTooShort { len: usize },
    #[error("unsupported control protocol version {version} (this node speaks {VERSION})")]
    UnsupportedVersion { version: u8 },
    #[error("unknown control message type {ty}")]
    UnknownType { ty: u8 },
    #[error("malformed control message: {what}")]
    Malformed { what: &'static str },
    #[error("{extra} trailing bytes after control message")]
    TrailingBytes { extra: usize },
}

impl ControlError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ControlError::FrameTooLarge { .. } => "frame_too_large",
            ControlError::FrameTooShort { .. } => "frame_too_short",
            ControlError::UnsupportedVersion { .. } => "unsupported_version",
            ControlError::UnknownType { .. } => "unknown_type",
            ControlError::Malformed { .. } => "malformed",
            ControlError::TrailingBytes { .. } => "trailing_bytes",
        }
    }
}

impl ControlMessage {
    /// Appends the full frame, length prefix included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, VERSION]);
        match self {
            ControlMessage::Hello {
                kind,
                name,
                prefixes,
                mtu,
            } => {
                out.push(T_HELLO);
                out.push(kind.code());
                put_str(out, name);
                put_prefixes(out, prefixes);
                out.extend_from_slice(&mtu.to_be_bytes());
            }
            ControlMessage::Accepted { prefixes, router } => {
                out.push(T_ACCEPTED);
                put_prefixes(out, prefixes);
                out.extend_from_slice(&router.octets());
            }
            ControlMessage::Refused { prefix, reason } => {
                out.push(T_REFUSED);
                match prefix {
                    Some(p) => {
                        out.push(1);
                        put_prefix(out, p);
                    }
                    None => out.push(0),
                }
                put_str(out, reason);
            }
            ControlMessage::Announce { prefixes } => {
                out.push(T_ANNOUNCE);
                put_prefixes(out, prefixes);
            }
            ControlMessage::Withdraw { prefixes } => {
                out.push(T_WITHDRAW);
                put_prefixes(out, prefixes);
            }
            ControlMessage::Error { reason } => {
                out.push(T_ERROR);
                put_str(out, reason);
            }
            ControlMessage::Served { prefixes } => {
                out.push(T_SERVED);
                put_prefixes(out, prefixes);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Reads the length prefix of a frame; refuses oversized frames before reading them.
    pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ControlError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME {
            return Err(ControlError::FrameTooLarge { len });
        }
        if len < 2 {
            return Err(ControlError::FrameTooShort { len });
        }
        Ok(len)
    }

    /// Decodes one frame body (what follows the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, ControlError> {
        let mut r = Reader(body);
        let version = r.u8()?;
        if version != VERSION {
            return Err(ControlError::UnsupportedVersion { version });
        }
        let ty = r.u8()?;
        let msg = match ty {
            T_HELLO => {
                let code = r.u8()?;
                let kind = SlaveKind::from_code(code).ok_or(ControlError::Malformed {
                    what: "unknown slave kind",
                })?;
                let name = r.string()?;
                let prefixes = r.prefixes()?;
                let mtu = r.u16()?;
                ControlMessage::Hello {
                    kind,
                    name,
                    prefixes,
                    mtu,
                }
            }
            T_ACCEPTED => {
                let prefixes = r.prefixes()?;
                let router = Ipv6Addr::from(r.array::<16>()?);
                ControlMessage::Accepted { prefixes, router }
            }
            T_REFUSED => {
                let prefix = match r.u8()? {
                    0 => None,
                    1 => Some(r.prefix()?),
                    _ => {
                        return Err(ControlError::Malformed {
                            what: "bad option flag",
                        })
                    }
                };
                ControlMessage::Refused {
                    prefix,
                    reason: r.string()?,
                }
            }
            T_ANNOUNCE => ControlMessage::Announce {
                prefixes: r.prefixes()?,
            },
            T_WITHDRAW => ControlMessage::Withdraw {
                prefixes: r.prefixes()?,
            },
            T_ERROR => ControlMessage::Error {
                reason: r.string()?,
            },
            T_SERVED => ControlMessage::Served {
                prefixes: r.prefixes()?,
            },
            ty => return Err(ControlError::UnknownType { ty }),
        };
        if !r.0.is_empty() {
            return Err(ControlError::TrailingBytes { extra: r.0.len() });
        }
        Ok(msg)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_prefix(out: &mut Vec<u8>, p: &Ipv6Net) {
    out.extend_from_slice(&p.network().octets());
    out.push(p.prefix_len());
}

fn put_prefixes(out: &mut Vec<u8>, prefixes: &[Ipv6Net]) {
    out.extend_from_slice(&(prefixes.len() as u16).to_be_bytes());
    for p in prefixes {
        put_prefix(out, p);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], ControlError> {
        if self.0.len() < n {
            return Err(ControlError::Malformed { what });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.take(1, "truncated")?[0])
    }

    fn u16(&mut self) -> Result<u16, ControlError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ControlError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, "truncated")?);
        Ok(a)
    }

    fn string(&mut self) -> Result<String, ControlError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len, "truncated string")?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ControlError::Malformed {
            what: "string is not UTF-8",
        })
    }

    fn prefix(&mut self) -> Result<Ipv6Net, ControlError> {
        let addr = Ipv6Addr::from(self.array::<16>()?);
        let len = self.u8()?;
        let net = Ipv6Net::new(addr, len).map_err(|_| ControlError::Malformed {
            what: "prefix length above 128",
        })?;
        if net.trunc() != net {
            return Err(ControlError::Malformed {
                what: "prefix has host bits set",
            });
        }
        Ok(net)
    }

    fn prefixes(&mut self) -> Result<Vec<Ipv6Net>, ControlError> {
        let count = self.u16()? as usize;
        // Each prefix is 17 bytes: refuse counts the frame cannot hold before allocating.
        if count * 17 > self.0.len() {
            return Err(ControlError::Malformed {
                what: "prefix count beyond frame",
            });
        }
        (0..count).map(|_| self.prefix()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<ControlMessage> {
        let p: Ipv6Net = "fd6e:0:a::/48".parse().unwrap();
        vec![
            ControlMessage::Hello {
                kind: SlaveKind::Gateway,
                name: "gw-a".into(),
                prefixes: vec![p],
                mtu: 1400,
            },
            ControlMessage::Accepted {
                prefixes: vec![p, "fd6e::/32".parse().unwrap()],
                router: "fd6e:0:a::1".parse().unwrap(),
            },
            ControlMessage::Refused {
                prefix: Some(p),
                reason: "outside certificate".into(),
            },
            ControlMessage::Refused {
                prefix: None,
                reason: String::new(),
            },
            ControlMessage::Announce { prefixes: vec![] },
            ControlMessage::Withdraw { prefixes: vec![p] },
            ControlMessage::Error {
                reason: "bye ☃".into(),
            },
        ]
    }

    #[test]
    fn round_trip_every_message() {
        for msg in samples() {
            let frame = msg.to_frame();
            let len = ControlMessage::frame_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            assert_eq!(ControlMessage::decode(&frame[4..]).unwrap(), msg);
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        let frame = samples()[0].to_frame();
        let mut body = frame[4..].to_vec();
        body[0] = 9;
        assert_eq!(
            ControlMessage::decode(&body),
            Err(ControlError::UnsupportedVersion { version: 9 })
        );
        body[0] = VERSION;
        body[1] = 200;
        assert_eq!(
            ControlMessage::decode(&body),
            Err(ControlError::UnknownType { ty: 200 })
        );
        let mut long = frame[4..].to_vec();
        long.push(0);
        assert_eq!(
            ControlMessage::decode(&long),
            Err(ControlError::TrailingBytes { extra: 1 })
        );
        assert!(matches!(
            ControlMessage::frame_len([0, 1, 0, 1]),
            Err(ControlError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            ControlMessage::frame_len([0, 0, 0, 1]),
            Err(ControlError::FrameTooShort { .. })
        ));
        // Host bits set in an announced prefix.
        let mut bad = ControlMessage::Announce {
            prefixes: vec!["fd6e::/16".parse().unwrap()],
        }
        .to_frame();
        bad[4 + 2 + 2 + 15] = 1;
        assert!(matches!(
            ControlMessage::decode(&bad[4..]),
            Err(ControlError::Malformed { .. })
        ));
    }

    #[test]
    fn every_truncation_and_random_garbage_is_an_error_not_a_panic() {
        for msg in samples() {
            let frame = msg.to_frame();
            for cut in 4..frame.len() - 1 {
                assert!(
                    ControlMessage::decode(&frame[4..cut]).is_err(),
                    "{msg:?} cut at {cut}"
                );
            }
        }
        let mut seed = 1u64;
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let len = (seed >> 40) as usize % 64;
            let mut bytes: Vec<u8> = (0..len)
                .map(|i| (seed >> (i % 56)) as u8 ^ i as u8)
                .collect();
            if let Some(b) = bytes.first_mut() {
                *b = VERSION;
            }
            let _ = ControlMessage::decode(&bytes);
        }
    }
}
