//! QUIC with mutual TLS between fleet members: datagrams carry IPv6 packets,
//! one bidirectional stream carries control frames.
//!
//! quinn's defaults break a tunnel (see CRATES.md): the minimum MTU is pinned
//! at the overlay MTU plus QUIC overhead so black-hole detection can never
//! shrink datagrams below what the TUN sends, and socket buffers are raised so
//! bursts are not lost in the kernel.

use crate::control::{ControlError, ControlMessage};
use crate::pki::{self, Credentials, NodeIdentity, PkiError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    ClientConfig, Connection, Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig,
    ServerConfig, TransportConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod arq;
pub mod cc;
pub mod hold;

pub const ALPN: &[u8] = b"on6/1";
/// Bytes a tunnel datagram adds around an IPv6 packet: the 1-RTT QUIC packet
/// (header, frame, AEAD tag: 38) and the loss-hiding header.
pub const DATAGRAM_OVERHEAD: u16 = 38 + arq::DATA_HEADER as u16;
/// Largest UDP payload we probe for: fits a 1500-byte IPv4 path with room to spare.
pub const MAX_UDP_PAYLOAD: u16 = 1452;
const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    QuicTls(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("control stream: {0}")]
    Control(#[from] ControlError),
    #[error("control stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("control stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer identity: {0}")]
    Identity(#[from] PkiError),
    #[error("overlay MTU {0} needs QUIC packets larger than {MAX_UDP_PAYLOAD} bytes")]
    MtuTooLarge(u16),
}

#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    /// Largest IPv6 packet the overlay carries in one datagram.
    pub mtu: u16,
    /// A peer silent this long is gone (keep-alives run at a third of it).
    pub idle_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            mtu: 1400,
            idle_timeout: Duration::from_secs(3),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn transport_config(opts: &TransportOptions) -> Result<Arc<TransportConfig>, TransportError> {
    let floor = opts.mtu + DATAGRAM_OVERHEAD;
    if floor > MAX_UDP_PAYLOAD {
        return Err(TransportError::MtuTooLarge(opts.mtu));
    }
    let mut t = TransportConfig::default();
    t.initial_mtu(floor).min_mtu(floor);
    let mut disc = MtuDiscoveryConfig::default();
    disc.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(disc));
    let idle = IdleTimeout::try_from(opts.idle_timeout)
        .map_err(|e| TransportError::QuicTls(e.to_string()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(opts.idle_timeout / 3));
    t.congestion_controller_factory(Arc::new(cc::TunnelCcConfig::default()));
    // A router wants short queues: a few ms of packets, not hundreds.
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(1 << 20);
    Ok(Arc::new(t))
}

pub fn server_config(
    creds: &Credentials,
    opts: &TransportOptions,
) -> Result<ServerConfig, TransportError> {
    let verifier = pki::client_verifier(&creds.ca, creds.revoked.clone(), provider())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::QuicTls(e.to_string()))?;
    let mut cfg = ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport_config(opts)?);
    Ok(cfg)
}

pub fn client_config(
    creds: &Credentials,
    opts: &TransportOptions,
) -> Result<ClientConfig, TransportError> {
    let verifier = pki::server_verifier(&creds.ca, creds.revoked.clone(), provider())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::QuicTls(e.to_string()))?;
    let mut cfg = ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport_config(opts)?);
    Ok(cfg)
}

fn force_buffer(sock: &socket2::Socket, opt: libc::c_int, size: usize) {
    use std::os::fd::AsRawFd;
    let val = size as libc::c_int;
    // SAFETY: setsockopt reads `val` for the given length; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // Without CAP_NET_ADMIN fall back to the sysctl-capped size.
        let _ = if opt == libc::SO_RCVBUFFORCE {
            sock.set_recv_buffer_size(size)
        } else {
            sock.set_send_buffer_size(size)
        };
    }
}

/// A QUIC endpoint on `bind`: a server when `server` is given, always able to dial.
pub fn endpoint(
    bind: SocketAddr,
    server: Option<ServerConfig>,
    client: ClientConfig,
) -> Result<Endpoint, TransportError> {
    let domain = if bind.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    force_buffer(&sock, libc::SO_RCVBUFFORCE, SOCKET_BUFFER);
    force_buffer(&sock, libc::SO_SNDBUFFORCE, SOCKET_BUFFER);
    sock.bind(&bind.into())?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Io(std::io::Error::other("no async runtime")))?;
    let mut ep = Endpoint::new(EndpointConfig::default(), server, sock.into(), runtime)?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// The authenticated identity of the peer (its certificate was verified in the handshake).
pub fn peer_identity(conn: &Connection) -> Result<NodeIdentity, TransportError> {
    let any = conn
        .peer_identity()
        .ok_or(TransportError::NoPeerCertificate)?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| TransportError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(TransportError::NoPeerCertificate)?;
    Ok(NodeIdentity::from_der(leaf)?)
}

/// Queues a datagram unless quinn's send buffer is full: quinn would make room
/// by silently dropping the oldest queued one, so the new one is dropped
/// instead and the caller counts it. `Ok(false)` means dropped.
pub fn send_datagram(conn: &Connection, p: bytes::Bytes) -> Result<bool, quinn::SendDatagramError> {
    send_datagram_leaving(conn, p, 0)
}

/// Send-buffer space new tunnel packets leave free for resends and NACKs:
/// with the buffer full under load, requests for lost packets were dropped
/// as often as new packets, and holes went unfilled.
pub const RESEND_RESERVE: usize = 128 * 1024;

/// As [`send_datagram`], but leaves `reserve` bytes of the buffer free.
pub fn send_datagram_leaving(
    conn: &Connection,
    p: bytes::Bytes,
    reserve: usize,
) -> Result<bool, quinn::SendDatagramError> {
    if conn.datagram_send_buffer_space() < p.len() + reserve {
        return Ok(false);
    }
    conn.send_datagram(p).map(|()| true)
}

/// Waits until `at`, or forever for `None`: a state machine's `poll_timeout`
/// as a `select!` branch.
pub async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits for a datagram, then takes every one already received, up to `max`:
/// one wake-up and one hand-off per burst instead of per packet.
pub async fn read_datagrams(
    conn: &Connection,
    max: usize,
) -> Result<Vec<bytes::Bytes>, quinn::ConnectionError> {
    use futures::FutureExt;
    let mut batch = vec![conn.read_datagram().await?];
    while batch.len() < max {
        match conn.read_datagram().now_or_never() {
            Some(Ok(d)) => batch.push(d),
            // An error comes back on the next call; deliver what we have first.
            _ => break,
        }
    }
    Ok(batch)
}

/// Reads one control frame; `Ok(None)` when the peer finished the stream cleanly.
pub async fn read_control(
    recv: &mut quinn::RecvStream,
) -> Result<Option<ControlMessage>, TransportError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(read_error(e)),
    }
    let len = ControlMessage::frame_len(len)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_error)?;
    Ok(Some(ControlMessage::decode(&body)?))
}

/// Keeps the connection's own error (a refused certificate, a timeout), which
/// quinn's read error would reduce to "connection lost".
fn read_error(e: quinn::ReadExactError) -> TransportError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            TransportError::Connection(c)
        }
        other => TransportError::Read(other),
    }
}

pub async fn write_control(
    send: &mut quinn::SendStream,
    msg: &ControlMessage,
) -> Result<(), TransportError> {
    send.write_all(&msg.to_frame()).await?;
    Ok(())
}

/// Application close codes.
pub mod close {
    pub const SHUTDOWN: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const NOT_AUTHORIZED: u32 = 2;
    pub const GONE: u32 = 3;
}
