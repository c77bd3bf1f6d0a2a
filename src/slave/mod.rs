//! Slaves: each owns part of the address space and moves packets between the
//! master and something else (a TUN device, other sites). A slave sees its
//! master through a [`MasterPort`], the same whether it runs in the master's
//! process (channels, no crypto) or in its own (QUIC to the master).

pub mod dht;
pub mod gateway;
pub mod link;
pub mod tunnel;

use crate::control::ControlMessage;
use crate::master::driver::{downlink, Downlink, DownlinkRx, MasterHandle, PacketSink, MAX_BATCH};
use crate::master::{SessionInfo, SlaveId};
use crate::pki::Credentials;
use crate::transport::{self, TransportError, TransportOptions};
use bytes::{Bytes, BytesMut};
use ipnet::Ipv6Net;
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum SlaveError {
    #[error("the master is gone")]
    MasterGone,
    #[error("the master refused {prefix}: {reason}")]
    Refused { prefix: String, reason: String },
    #[error("the master reported: {0}")]
    MasterError(String),
    #[error("unexpected control message from the master: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("TUN device: {0}")]
    Tun(std::io::Error),
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// The slave's way up to the master.
#[derive(Clone)]
pub enum Uplink {
    Local {
        id: SlaveId,
        master: MasterHandle,
    },
    Remote {
        conn: quinn::Connection,
        control: mpsc::Sender<ControlMessage>,
    },
}

impl Uplink {
    /// Sends a packet without waiting; an overloaded path drops and counts.
    pub fn packet(&self, packet: BytesMut) -> Result<(), SlaveError> {
        self.packets(vec![packet])
    }

    /// Sends a batch without waiting: in-process the master routes it in
    /// this call and hands each egress slave its share; an overloaded path
    /// drops and counts.
    pub fn packets(&self, batch: Vec<BytesMut>) -> Result<(), SlaveError> {
        match self {
            Uplink::Local { id, master } => {
                master.packets(*id, batch);
                Ok(())
            }
            Uplink::Remote { conn, .. } => {
                for packet in batch {
                    match conn.send_datagram(packet.freeze()) {
                        Ok(()) => {}
                        Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                            return Err(SlaveError::MasterGone)
                        }
                        Err(e) => tracing::debug!(error = %e, "datagram to master not sent"),
                    }
                }
                Ok(())
            }
        }
    }

    pub async fn control(&self, msg: ControlMessage) -> Result<(), SlaveError> {
        match self {
            Uplink::Local { id, master } => {
                master.control(*id, msg);
                Ok(())
            }
            Uplink::Remote { control, .. } => {
                control.send(msg).await.map_err(|_| SlaveError::MasterGone)
            }
        }
    }

    /// Largest packet the link to the master carries.
    pub fn max_packet(&self) -> Option<usize> {
        match self {
            Uplink::Local { .. } => None,
            Uplink::Remote { conn, .. } => conn.max_datagram_size(),
        }
    }
}

pub struct MasterPort {
    pub up: Uplink,
    down: DownlinkRx,
    /// Messages that arrived while `hello` waited for its answer.
    backlog: VecDeque<Downlink>,
}

impl MasterPort {
    /// Sends Hello and waits for the master's answer. Returns the router
    /// address; a refused prefix is an error naming it.
    pub async fn hello(
        &mut self,
        hello: ControlMessage,
    ) -> Result<(Vec<Ipv6Net>, Ipv6Addr), SlaveError> {
        self.up.control(hello).await?;
        let (prefixes, router) = loop {
            match self.down.recv().await {
                Some(Downlink::Control(ControlMessage::Accepted { prefixes, router })) => {
                    break (prefixes, router)
                }
                Some(Downlink::Control(ControlMessage::Error { reason })) => {
                    return Err(SlaveError::MasterError(reason))
                }
                Some(Downlink::Close { reason }) => return Err(SlaveError::MasterError(reason)),
                Some(Downlink::Packets(_)) => continue,
                Some(Downlink::Control(other)) => {
                    return Err(SlaveError::Unexpected(format!("{other:?}")))
                }
                None => return Err(SlaveError::MasterGone),
            }
        };
        // Refusals follow the Accepted message at once; anything else is kept for `recv`.
        while let Some(msg) = self.down.try_recv() {
            match msg {
                Downlink::Control(ControlMessage::Refused { prefix, reason }) => {
                    return Err(SlaveError::Refused {
                        prefix: prefix.map_or("-".into(), |p| p.to_string()),
                        reason,
                    });
                }
                other => self.backlog.push_back(other),
            }
        }
        Ok((prefixes, router))
    }

    /// In-process, the master hands this slave's packets to `sink` in the
    /// sender's call from now on. Over QUIC they still arrive through
    /// [`MasterPort::recv`], and the slave passes them to the same sink.
    pub fn deliver_directly(&self, sink: Arc<dyn PacketSink>) {
        if let Uplink::Local { id, master } = &self.up {
            master.set_sink(*id, sink);
        }
    }

    /// The next message from the master; `None` once it is gone.
    pub async fn recv(&mut self) -> Option<Downlink> {
        match self.backlog.pop_front() {
            Some(m) => Some(m),
            None => self.down.recv().await,
        }
    }

    /// Packets the master has already queued, if the next message carries
    /// packets: lets a slave write several batches at once. Anything else
    /// stays queued for [`MasterPort::recv`].
    pub fn try_recv_packets(&mut self) -> Option<Vec<Bytes>> {
        if !self.backlog.is_empty() {
            return None;
        }
        match self.down.try_recv()? {
            Downlink::Packets(p) => Some(p),
            other => {
                self.backlog.push_back(other);
                None
            }
        }
    }
}

/// An in-process slave that stops leaves the master: its routes go at once.
impl Drop for MasterPort {
    fn drop(&mut self) {
        if let Uplink::Local { id, master } = &self.up {
            master.detach(*id);
        }
    }
}

/// Attaches an in-process slave: it routes through the shared master itself.
pub async fn attach_local(
    master: &MasterHandle,
    name: &str,
    allowed: Vec<Ipv6Net>,
) -> Result<MasterPort, SlaveError> {
    let info = SessionInfo {
        peer: name.to_string(),
        allowed,
        link_mtu: None,
        remote: false,
    };
    let (id, down) = master.attach(info);
    Ok(MasterPort {
        up: Uplink::Local {
            id,
            master: master.clone(),
        },
        down,
        backlog: VecDeque::new(),
    })
}

/// Connects to a master in another process over mutually authenticated QUIC.
pub async fn connect_remote(
    creds: &Credentials,
    opts: &TransportOptions,
    master_addr: SocketAddr,
    master_name: &str,
) -> Result<MasterPort, SlaveError> {
    let bind: SocketAddr = if master_addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| SlaveError::Config("bind address".into()))?;
    let client = transport::client_config(creds, opts)?;
    let endpoint = transport::endpoint(bind, None, client)?;
    let conn = endpoint
        .connect(master_addr, master_name)
        .map_err(TransportError::from)?
        .await
        .map_err(TransportError::from)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(TransportError::from)?;
    let (down_tx, down) = downlink();
    let (control_tx, mut control_rx) = mpsc::channel::<ControlMessage>(16);

    // The writer owns the send stream; the endpoint lives as long as it does.
    tokio::spawn(async move {
        let _endpoint = endpoint;
        while let Some(msg) = control_rx.recv().await {
            if transport::write_control(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let ctl_tx = down_tx.clone();
    tokio::spawn(async move {
        loop {
            match transport::read_control(&mut recv).await {
                Ok(Some(m)) => {
                    if ctl_tx.send(Downlink::Control(m)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = ctl_tx
                        .send(Downlink::Close {
                            reason: e.to_string(),
                        })
                        .await;
                    break;
                }
            }
        }
    });
    let dgram_conn = conn.clone();
    tokio::spawn(async move {
        while let Ok(batch) = transport::read_datagrams(&dgram_conn, MAX_BATCH).await {
            if !down_tx.try_send(Downlink::Packets(batch)) && down_tx.is_closed() {
                break;
            }
        }
        let reason = dgram_conn
            .close_reason()
            .map_or("connection closed".to_string(), |r| r.to_string());
        let _ = down_tx.send(Downlink::Close { reason }).await;
    });
    Ok(MasterPort {
        up: Uplink::Remote {
            conn,
            control: control_tx,
        },
        down,
        backlog: VecDeque::new(),
    })
}
