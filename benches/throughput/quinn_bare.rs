//! The bench's reference tunnel: quinn datagrams between two TUN devices and
//! nothing else (no router, no loss hiding, quinn 0.11's defaults but for the
//! MTU and a keep-alive across the bench's pauses). It is the floor any quinn-based design starts from on this machine,
//! measured beside on6 in the same run, so a gap to a WireGuard-class peer can
//! be split into what QUIC costs here and what on6 adds on top.
//!
//! The bench runs its own binary in each site's namespace with
//! `--quinn-bare server|client …`; the server holds a self-signed certificate
//! the bench made, the client trusts exactly that certificate.

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// UDP payload on the bench's 1500-byte underlay, as on6 uses.
const UDP_PAYLOAD: u16 = 1452;
/// Inner MTU: on6's default, so both carry the same packets.
const TUN_MTU: u16 = 1400;
/// Both sides bind this UDP port (the relay forwards to fixed ports).
pub const PORT: u16 = 4433;

pub struct Args {
    server: bool,
    /// Where the client connects to (the server binds [`PORT`]).
    addr: SocketAddr,
    tun: String,
    /// The other site's prefix, routed into the TUN.
    route: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Args {
    /// `server|client ADDR TUN ROUTE CERT KEY`.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let [role, addr, tun, route, cert, key] = args else {
            return Err(format!(
                "--quinn-bare takes server|client ADDR TUN ROUTE CERT KEY, got {args:?}"
            ));
        };
        Ok(Args {
            server: match role.as_str() {
                "server" => true,
                "client" => false,
                other => return Err(format!("role `{other}`: expected server or client")),
            },
            addr: addr.parse().map_err(|e| format!("address `{addr}`: {e}"))?,
            tun: tun.clone(),
            route: route.clone(),
            cert: cert.into(),
            key: key.into(),
        })
    }

    pub fn to_argv(
        server: bool,
        addr: SocketAddr,
        tun: &str,
        route: &str,
        cert: &str,
        key: &str,
    ) -> Vec<String> {
        let role = if server { "server" } else { "client" };
        [role, &addr.to_string(), tun, route, cert, key]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// Writes a self-signed certificate and its key (DER) for the server.
pub fn make_cert(cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
    let c =
        rcgen::generate_simple_self_signed(vec!["quinn-bare".into()]).map_err(|e| e.to_string())?;
    std::fs::write(cert, c.cert.der()).map_err(|e| e.to_string())?;
    std::fs::write(key, c.signing_key.serialize_der()).map_err(|e| e.to_string())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(UDP_PAYLOAD).min_mtu(UDP_PAYLOAD);
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    Arc::new(t)
}

/// An error's text with what failed in front.
fn ctx<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |err| format!("{what}: {err}")
}

/// Runs the tunnel until the connection or the TUN fails.
pub fn run(args: Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(tunnel(args))
}

async fn tunnel(args: Args) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dev = Arc::new(
        tun_rs::DeviceBuilder::new()
            .name(&args.tun)
            .mtu(TUN_MTU)
            .offload(true)
            .build_async()
            .map_err(ctx("TUN"))?,
    );
    let status = std::process::Command::new("ip")
        .args(["-6", "route", "add", &args.route, "dev", &args.tun])
        .status()
        .map_err(ctx("ip route"))?;
    if !status.success() {
        return Err(format!("ip route add {} failed", args.route));
    }
    let cert = std::fs::read(&args.cert).map_err(ctx("certificate"))?;
    let conn = if args.server {
        let key = std::fs::read(&args.key).map_err(ctx("key"))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
        let mut cfg = quinn::ServerConfig::with_single_cert(vec![cert.into()], key)
            .map_err(ctx("server config"))?;
        cfg.transport_config(transport());
        let bind: SocketAddr = ([0, 0, 0, 0], PORT).into();
        let ep = quinn::Endpoint::server(cfg, bind).map_err(ctx("endpoint"))?;
        let incoming = ep.accept().await.ok_or("endpoint closed")?;
        incoming.await.map_err(ctx("handshake"))?
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.into()).map_err(ctx("certificate"))?;
        let mut cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots))
            .map_err(ctx("client config"))?;
        cfg.transport_config(transport());
        let bind: SocketAddr = ([0, 0, 0, 0], PORT).into();
        let mut ep = quinn::Endpoint::client(bind).map_err(ctx("endpoint"))?;
        ep.set_default_client_config(cfg);
        ep.connect(args.addr, "quinn-bare")
            .map_err(ctx("connect"))?
            .await
            .map_err(ctx("handshake"))?
    };
    eprintln!("quinn-bare: connected to {}", conn.remote_address());
    tokio::spawn(to_tun(conn.clone(), dev.clone()));
    tokio::select! {
        why = conn.closed() => Err(format!("connection lost: {why}")),
        failed = from_tun(&conn, &dev) => failed,
    }
}

/// TUN packets to datagrams, until a read or a send fails.
async fn from_tun(conn: &quinn::Connection, dev: &tun_rs::AsyncDevice) -> Result<(), String> {
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
    let mut segments = vec![vec![0u8; TUN_MTU as usize]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    loop {
        let n = dev
            .recv_multiple(&mut raw, &mut segments, &mut sizes, 0)
            .await
            .map_err(ctx("TUN read"))?;
        for (segment, &len) in segments.iter().zip(&sizes).take(n) {
            // A full send buffer drops quinn's oldest datagram, as a router
            // would; any error (too large, refused, closed) ends the tunnel.
            conn.send_datagram(Bytes::copy_from_slice(&segment[..len]))
                .map_err(ctx("send"))?;
        }
    }
}

/// Datagrams to the TUN: what has arrived is written as one batch, coalesced.
async fn to_tun(conn: quinn::Connection, dev: Arc<tun_rs::AsyncDevice>) {
    let mut gro = GROTable::default();
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    while let Ok(batch) = on6::transport::read_datagrams(&conn, IDEAL_BATCH_SIZE).await {
        bufs.resize_with(batch.len().max(bufs.len()), || {
            Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65535)
        });
        for (buf, d) in bufs.iter_mut().zip(&batch) {
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(d);
        }
        let _ = dev
            .send_multiple(&mut gro, &mut bufs[..batch.len()], VIRTIO_NET_HDR_LEN)
            .await;
    }
}
