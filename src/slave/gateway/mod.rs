//! Gateway slave: the site's hosts reach the overlay through a TUN device.
//! It creates and configures the device itself (address, MTU, routes),
//! announces the site prefix, and moves packets both ways.

use super::{MasterPort, SlaveError};
use crate::control::{ControlMessage, SlaveKind};
use crate::master::driver::Downlink;
use bytes::BytesMut;
use ipnet::Ipv6Net;
use serde::Serialize;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Runs the gateway until the master goes away or `shutdown` resolves. The
/// TUN device (and with it its routes) is removed when this returns.
pub async fn run(
    cfg: GatewayConfig,
    mut port: MasterPort,
    stats: Arc<GatewayStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SlaveError> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(&cfg.tun_name)
        .mtu(cfg.mtu)
        .ipv6(cfg.address, 128u8)
        .build_async()
        .map_err(SlaveError::Tun)?;
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

    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = dev.recv(&mut buf) => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => {
                        add(&stats.tun_errors, 1);
                        tracing::warn!(error = %e, "TUN read failed");
                        continue;
                    }
                };
                add(&stats.tun_rx_packets, 1);
                add(&stats.tun_rx_bytes, n as u64);
                let packet = &buf[..n];
                if link_scoped(packet) {
                    add(&stats.link_local, 1);
                    continue;
                }
                port.up.packet(BytesMut::from(packet))?;
            }
            msg = port.recv() => match msg {
                Some(Downlink::Packet(p)) => match dev.send(&p).await {
                    Ok(_) => {
                        add(&stats.tun_tx_packets, 1);
                        add(&stats.tun_tx_bytes, p.len() as u64);
                    }
                    Err(e) => {
                        add(&stats.tun_errors, 1);
                        tracing::debug!(error = %e, "TUN write failed");
                    }
                },
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
