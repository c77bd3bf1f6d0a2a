//! The tokio task around [`Master`]: it owns the state machine and one bounded
//! queue per slave. Everything else talks to it through a [`MasterHandle`].

use super::{Master, SessionInfo, SlaveId, SlaveView, Verdict};
use crate::control::{ControlMessage, SlaveKind};
use bytes::{Bytes, BytesMut};
use ipnet::Ipv6Net;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Packets queued towards one slave before the master drops (and counts) more.
pub const SLAVE_QUEUE: usize = 1024;
const INBOX: usize = 4096;

/// What the master sends a slave.
#[derive(Debug)]
pub enum Downlink {
    Packet(Bytes),
    Control(ControlMessage),
    /// The master ends the session (after the control replies before it).
    Close {
        reason: String,
    },
}

enum Event {
    Attach {
        info: SessionInfo,
        down: mpsc::Sender<Downlink>,
        reply: oneshot::Sender<SlaveId>,
    },
    Detach(SlaveId),
    Control(SlaveId, ControlMessage),
    Packet(SlaveId, BytesMut),
    Snapshot(oneshot::Sender<MasterSnapshot>),
}

/// A consistent view of the master for status and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct MasterSnapshot {
    pub router: std::net::Ipv6Addr,
    pub slaves: Vec<SlaveView>,
    pub routes: Vec<(Ipv6Net, SlaveId)>,
    pub stats: super::MasterStats,
    /// Packets the master's own inbox refused (the master was saturated).
    pub inbox_full: u64,
}

#[derive(Clone)]
pub struct MasterHandle {
    tx: mpsc::Sender<Event>,
    inbox_full: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("the master has stopped")]
pub struct MasterGone;

impl MasterHandle {
    /// Opens a session; the receiver yields what the master sends this slave.
    pub async fn attach(
        &self,
        info: SessionInfo,
    ) -> Result<(SlaveId, mpsc::Receiver<Downlink>), MasterGone> {
        let (down, rx) = mpsc::channel(SLAVE_QUEUE);
        let (reply, id) = oneshot::channel();
        self.tx
            .send(Event::Attach { info, down, reply })
            .await
            .map_err(|_| MasterGone)?;
        Ok((id.await.map_err(|_| MasterGone)?, rx))
    }

    pub async fn detach(&self, id: SlaveId) {
        let _ = self.tx.send(Event::Detach(id)).await;
    }

    pub async fn control(&self, id: SlaveId, msg: ControlMessage) -> Result<(), MasterGone> {
        self.tx
            .send(Event::Control(id, msg))
            .await
            .map_err(|_| MasterGone)
    }

    /// Never waits: a full inbox drops the packet and counts it.
    pub fn packet(&self, id: SlaveId, packet: BytesMut) -> Result<(), MasterGone> {
        match self.tx.try_send(Event::Packet(id, packet)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inbox_full.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(MasterGone),
        }
    }

    pub async fn snapshot(&self) -> Result<MasterSnapshot, MasterGone> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Snapshot(tx))
            .await
            .map_err(|_| MasterGone)?;
        rx.await.map_err(|_| MasterGone)
    }
}

/// Starts the master task; it ends when every handle is dropped.
pub fn spawn(master: Master) -> MasterHandle {
    let (tx, rx) = mpsc::channel(INBOX);
    let inbox_full = Arc::new(AtomicU64::new(0));
    tokio::spawn(run(master, rx, inbox_full.clone()));
    MasterHandle { tx, inbox_full }
}

fn send(queues: &HashMap<SlaveId, mpsc::Sender<Downlink>>, to: SlaveId, msg: Downlink) -> bool {
    queues.get(&to).is_some_and(|q| q.try_send(msg).is_ok())
}

/// Tells DHT slaves what the site serves whenever that, or the set of DHT slaves, changes.
fn notify_served(
    master: &Master,
    queues: &HashMap<SlaveId, mpsc::Sender<Downlink>>,
    last: &mut (Vec<Ipv6Net>, Vec<SlaveId>),
) {
    let now = (master.served(), master.slaves_of_kind(SlaveKind::Dht));
    if now != *last {
        for id in &now.1 {
            send(
                queues,
                *id,
                Downlink::Control(ControlMessage::Served {
                    prefixes: now.0.clone(),
                }),
            );
        }
        *last = now;
    }
}

async fn run(mut master: Master, mut rx: mpsc::Receiver<Event>, inbox_full: Arc<AtomicU64>) {
    let mut queues: HashMap<SlaveId, mpsc::Sender<Downlink>> = HashMap::new();
    let mut last_served = (Vec::new(), Vec::new());
    while let Some(event) = rx.recv().await {
        match event {
            Event::Packet(from, mut buf) => match master.handle_packet(from, &mut buf) {
                Verdict::Forward(to) => {
                    if !send(&queues, to, Downlink::Packet(buf.freeze())) {
                        master.count_queue_full();
                    }
                }
                Verdict::Reply { to, packet, .. } => {
                    if !send(&queues, to, Downlink::Packet(Bytes::from(packet))) {
                        master.count_queue_full();
                    }
                }
                Verdict::Drop(_) => {}
            },
            Event::Attach { info, down, reply } => {
                let id = master.attach(info);
                queues.insert(id, down);
                if reply.send(id).is_err() {
                    master.detach(id);
                    queues.remove(&id);
                }
            }
            Event::Detach(id) => {
                master.detach(id);
                queues.remove(&id);
                notify_served(&master, &queues, &mut last_served);
            }
            Event::Control(id, msg) => {
                let outcome = master.handle_control(id, msg);
                // Never wait on a slave's queue: one stuck slave must not stall the router.
                let mut close = outcome.close;
                for reply in outcome.replies {
                    close |= !send(&queues, id, Downlink::Control(reply));
                }
                if close {
                    send(
                        &queues,
                        id,
                        Downlink::Close {
                            reason: "control protocol error".into(),
                        },
                    );
                }
                if close {
                    master.detach(id);
                    queues.remove(&id);
                }
                notify_served(&master, &queues, &mut last_served);
            }
            Event::Snapshot(reply) => {
                let _ = reply.send(MasterSnapshot {
                    router: master.router(),
                    slaves: master.slaves(),
                    routes: master.routes(),
                    stats: master.stats().clone(),
                    inbox_full: inbox_full.load(Ordering::Relaxed),
                });
            }
        }
    }
}
