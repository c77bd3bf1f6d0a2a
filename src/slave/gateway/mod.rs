//! Gateway slave: the site's hosts reach the overlay through a TUN device.
//! It creates and configures the device itself (address, MTU, routes),
//! announces the site prefix, and moves packets both ways.

use super::{MasterPort, SlaveError};
use crate::control::{ControlMessage, SlaveKind};
use crate::master::driver::{Downlink, PacketSink};
use crate::packet::PacketArena;
use bytes::{Bytes, BytesMut};
use ipnet::Ipv6Net;
use serde::Serialize;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Slave name used in logs and the Hello.
    pub name: String,
    pub tun_name: String,
    /// The site prefix this gateway announces.
    pub prefix: Ipv6Net,
    /// More prefixes served behind the same TUN.
    pub extra_prefixes: Vec<Ipv6Net>,
    /// The TUN device's own address.
    pub address: Ipv6Addr,
    /// What the site's kernel routes into the overlay.
    pub routes: Vec<Ipv6Net>,
    pub mtu: u16,
}

#[derive(Debug, Default, Serialize)]
pub struct GatewayStats {
    pub tun_rx_packets: AtomicU64,
    pub tun_rx_bytes: AtomicU64,
    pub tun_tx_packets: AtomicU64,
    pub tun_tx_bytes: AtomicU64,
    /// TUN reads and batched writes: packets per batch shows what offload buys.
    pub tun_rx_batches: AtomicU64,
    pub tun_tx_batches: AtomicU64,
    /// Link-scoped traffic the TUN emits (router solicitations, MLD) that stays local.
    pub link_local: AtomicU64,
    pub tun_errors: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn link_scoped(packet: &[u8]) -> bool {
    // Multicast destination or link-local source: never leaves the site.
    packet.get(24) == Some(&0xff)
        || (packet.get(8) == Some(&0xfe) && packet.get(9).is_some_and(|b| b & 0xc0 == 0x80))
}

async fn ip(args: &[&str]) -> Result<(), SlaveError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| SlaveError::Os {
            what: format!("ip {}", args.join(" ")),
            source,
        })?;
    if !out.status.success() {
        return Err(SlaveError::Os {
            what: format!("ip {}", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// Reads the TUN a super-packet at a time, split into MTU-sized packets that
/// share one allocation.
struct TunReader {
    raw: Vec<u8>,
    segments: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    arena: PacketArena,
}

impl TunReader {
    fn new(mtu: u16) -> Self {
        TunReader {
            raw: vec![0; VIRTIO_NET_HDR_LEN + 65535],
            segments: vec![vec![0; mtu as usize]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            arena: PacketArena::default(),
        }
    }

    async fn read(&mut self, dev: &AsyncDevice, stats: &GatewayStats) -> Vec<BytesMut> {
        let n = match dev
            .recv_multiple(&mut self.raw, &mut self.segments, &mut self.sizes, 0)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                add(&stats.tun_errors, 1);
                tracing::warn!(error = %e, "TUN read failed");
                return Vec::new();
            }
        };
        let total: usize = self.sizes[..n].iter().sum();
        add(&stats.tun_rx_packets, n as u64);
        add(&stats.tun_rx_batches, 1);
        add(&stats.tun_rx_bytes, total as u64);
        let mut batch = Vec::with_capacity(n);
        for (segment, &len) in self.segments.iter().zip(&self.sizes).take(n) {
            let packet = &segment[..len];
            if link_scoped(packet) {
                add(&stats.link_local, 1);
                continue;
            }
            batch.push(self.arena.copy(packet));
        }
        batch
    }
}

/// Writes a batch to the TUN in one go, coalescing TCP and UDP flows into
/// super-packets (GRO) so the kernel's stack runs once per flow and batch
/// rather than once per packet.
#[derive(Default)]
struct TunWriter {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl TunWriter {
    fn push(&mut self, packets: &[Bytes]) {
        for p in packets {
            if self.bufs.len() == self.len {
                // GRO appends a flow's later packets to its first one, and only
                // into capacity that is already there.
                self.bufs
                    .push(Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65535));
            }
            let buf = &mut self.bufs[self.len];
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(p);
            self.len += 1;
        }
    }

    /// Writes without waiting: the kernel takes TUN writes at once, and
    /// should it refuse, the batch is dropped and counted.
    fn write(&mut self, dev: &AsyncDevice, stats: &GatewayStats) {
        let bufs = &mut self.bufs[..self.len];
        let bytes: usize = bufs.iter().map(|b| b.len() - VIRTIO_NET_HDR_LEN).sum();
        let sync_dev = std::ops::Deref::deref(dev);
        match sync_dev.send_multiple(&mut self.gro, bufs, VIRTIO_NET_HDR_LEN) {
            Ok(_) => {
                add(&stats.tun_tx_packets, self.len as u64);
                add(&stats.tun_tx_batches, 1);
                add(&stats.tun_tx_bytes, bytes as u64);
            }
            Err(e) => {
                add(&stats.tun_errors, 1);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
        self.len = 0;
    }
}

/// Packets for the site's hosts, written to the TUN in the sender's own call.
struct TunSink {
    dev: Arc<AsyncDevice>,
    writer: Mutex<TunWriter>,
    stats: Arc<GatewayStats>,
}

impl PacketSink for TunSink {
    fn deliver(&self, packets: Vec<Bytes>) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // The writer keeps a 64 KB buffer per packet of its largest write
        // (GRO grows a flow's first buffer in place), so writes stay at
        // batch size even when a released in-order run is thousands long.
        for chunk in packets.chunks(IDEAL_BATCH_SIZE) {
            writer.push(chunk);
            writer.write(&self.dev, &self.stats);
        }
    }
}

/// Runs the gateway until the master goes away or `shutdown` resolves. The
/// TUN device (and with it its routes) is removed when this returns.
pub async fn run(
    cfg: GatewayConfig,
    mut port: MasterPort,
    stats: Arc<GatewayStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SlaveError> {
    let dev = Arc::new(
        tun_rs::DeviceBuilder::new()
            .name(&cfg.tun_name)
            .mtu(cfg.mtu)
            .ipv6(cfg.address, 128u8)
            // Offload: the kernel hands us 64 KB TCP/UDP super-packets (split
            // here into MTU-sized ones) and takes coalesced ones back.
            .offload(true)
            .build_async()
            .map_err(SlaveError::Tun)?,
    );
    for route in &cfg.routes {
        ip(&[
            "-6",
            "route",
            "replace",
            &route.to_string(),
            "dev",
            &cfg.tun_name,
        ])
        .await?;
    }
    let hello = ControlMessage::Hello {
        kind: SlaveKind::Gateway,
        name: cfg.name.clone(),
        prefixes: std::iter::once(cfg.prefix)
            .chain(cfg.extra_prefixes.iter().copied())
            .collect(),
        mtu: cfg.mtu,
    };
    let (accepted, router) = port.hello(hello).await?;
    tracing::info!(tun = %cfg.tun_name, prefixes = ?accepted, %router, mtu = cfg.mtu, "gateway up");

    let mut reader = TunReader::new(cfg.mtu);
    let sink = Arc::new(TunSink {
        dev: dev.clone(),
        writer: Mutex::new(TunWriter::default()),
        stats: stats.clone(),
    });
    port.deliver_directly(sink.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = reader.read(&dev, &stats) => {
                if !r.is_empty() {
                    port.up.packets(r)?;
                }
            }
            msg = port.recv() => match msg {
                // Only a gateway attached over QUIC gets packets here.
                Some(Downlink::Packets(mut batch)) => {
                    while batch.len() < IDEAL_BATCH_SIZE {
                        match port.try_recv_packets() {
                            Some(more) => batch.extend(more),
                            None => break,
                        }
                    }
                    sink.deliver(batch);
                }
                Some(Downlink::Control(ControlMessage::Refused { prefix, reason })) => {
                    tracing::warn!(?prefix, %reason, "master refused an announcement");
                }
                Some(Downlink::Control(other)) => tracing::debug!(?other, "control message"),
                Some(Downlink::Close { reason }) => return Err(SlaveError::MasterError(reason)),
                None => return Err(SlaveError::MasterGone),
            }
        }
    }
}
