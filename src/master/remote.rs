//! Sessions of slaves that run in other processes: QUIC connections accepted
//! on the master's listener. The control stream and datagrams are turned into
//! the same events an in-process slave produces.

use super::driver::{Downlink, MasterHandle, MAX_BATCH};
use super::SessionInfo;
use crate::control::ControlMessage;
use crate::packet::PacketArena;
use crate::pki::Role;
use crate::transport::{self, close, TransportError};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a connected slave has to open its control stream and say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Serialize)]
pub struct RemoteStats {
    pub handshakes_ok: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub refused_peers: AtomicU64,
    pub control_errors: AtomicU64,
}

impl RemoteStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who may attach: any fleet slave, or only the named ones.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub allowed_names: Vec<String>,
}

/// Accepts remote slaves until the endpoint closes.
pub async fn serve(
    endpoint: quinn::Endpoint,
    master: MasterHandle,
    admission: Admission,
    stats: Arc<RemoteStats>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let master = master.clone();
        let admission = admission.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    RemoteStats::bump(&stats.handshakes_failed);
                    tracing::warn!(%remote, error = %e, "slave handshake failed");
                    return;
                }
            };
            RemoteStats::bump(&stats.handshakes_ok);
            if let Err(e) = session(conn, master, &admission, &stats).await {
                tracing::info!(%remote, error = %e, "slave session ended");
            }
        });
    }
}

async fn session(
    conn: quinn::Connection,
    master: MasterHandle,
    admission: &Admission,
    stats: &RemoteStats,
) -> Result<(), TransportError> {
    let identity = transport::peer_identity(&conn)?;
    let refuse = |why: String| {
        RemoteStats::bump(&stats.refused_peers);
        tracing::warn!(peer = %identity.name, reason = %why, "slave refused");
        conn.close(close::NOT_AUTHORIZED.into(), why.as_bytes());
    };
    if identity.role != Role::Slave {
        refuse(format!(
            "{} holds a {} certificate, not a slave certificate",
            identity.name, identity.role
        ));
        return Ok(());
    }
    if !admission.allowed_names.is_empty() && !admission.allowed_names.contains(&identity.name) {
        refuse(format!("{} is not a slave of this site", identity.name));
        return Ok(());
    }
    let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
        Ok(r) => r?,
        Err(_) => {
            conn.close(close::PROTOCOL_ERROR.into(), b"no control stream");
            return Ok(());
        }
    };
    let info = SessionInfo {
        peer: identity.name.clone(),
        allowed: identity.prefixes.clone(),
        link_mtu: conn.max_datagram_size().and_then(|s| u16::try_from(s).ok()),
        remote: true,
    };
    let (id, mut down) = master.attach(info);

    // Control frames in: decode errors are counted, named to the peer, and end this session only.
    let control_in = async {
        loop {
            match transport::read_control(&mut recv).await {
                Ok(Some(msg)) => master.control(id, msg),
                Ok(None) => return None,
                Err(TransportError::Control(e)) => {
                    RemoteStats::bump(&stats.control_errors);
                    tracing::warn!(peer = %identity.name, error = %e, "malformed control message");
                    return Some(e.to_string());
                }
                Err(e) => {
                    tracing::debug!(peer = %identity.name, error = %e, "control stream closed");
                    return None;
                }
            }
        }
    };
    let datagrams_in = async {
        let mut arena = PacketArena::default();
        while let Ok(batch) = transport::read_datagrams(&conn, MAX_BATCH).await {
            let batch = batch.iter().map(|d| arena.copy(d)).collect();
            master.packets(id, batch);
        }
    };
    let out = async {
        while let Some(msg) = down.recv().await {
            match msg {
                Downlink::Packets(packets) => {
                    for p in packets {
                        match conn.send_datagram(p) {
                            Ok(()) => {}
                            Err(quinn::SendDatagramError::ConnectionLost(_)) => return None,
                            Err(e) => {
                                tracing::debug!(peer = %identity.name, error = %e, "datagram not sent")
                            }
                        }
                    }
                }
                Downlink::Control(m) => {
                    if transport::write_control(&mut send, &m).await.is_err() {
                        return None;
                    }
                }
                Downlink::Close { reason } => return Some(reason),
            }
        }
        None
    };
    let reason = tokio::select! {
        r = control_in => r,
        _ = datagrams_in => None,
        r = out => r,
    };
    master.detach(id);
    match reason {
        Some(reason) => {
            let _ = transport::write_control(
                &mut send,
                &ControlMessage::Error {
                    reason: reason.clone(),
                },
            )
            .await;
            let _ = send.finish();
            // Give the error frame a moment to leave before the close.
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            conn.close(close::PROTOCOL_ERROR.into(), reason.as_bytes());
        }
        None => conn.close(close::GONE.into(), b"session ended"),
    }
    Ok(())
}
