//! # on6 — IPv6 routing for sites behind IPv4 and NAT
//!
//! Every site runs one distributed IPv6 edge router: a **master** that owns a
//! longest-prefix-match table, and **slaves** that each own part of the
//! address space (after Zhou, van Renesse and Marsh, "Implementing IPv6 as a
//! Peer-to-Peer Overlay Network"). A slave's first control message announces
//! its prefixes; the master installs those its certificate allows and drops
//! them the moment the session ends. Slaves attach in-process (channels, no
//! crypto) or from another process over mutually authenticated QUIC, with the
//! same messages: datagrams carry IPv6 packets, a stream carries control.
//!
//! ```text
//!   site A                                             site B
//!  hosts ── kernel ── TUN ┐                        ┌ TUN ── kernel ── hosts
//!                    gateway slave              gateway slave
//!                         │  (in-process or QUIC)      │
//!                      master A (LPM, ICMPv6)      master B
//!                         │                            │
//!                    tunnel slave ══ QUIC datagrams ══ tunnel slave
//!                         (mutual TLS, fleet CA, IPv4 / NAT underlay)
//! ```
//!
//! Layout, protocol cores apart from I/O (quinn-proto style: plain types, unit
//! tested; tokio tasks only move bytes):
//! - [`packet`]: checked views over IPv6 / ICMPv6 bytes, ICMPv6 error builders.
//! - [`control`]: the versioned control protocol between slaves and masters.
//! - [`master`]: the routing state machine ([`master::Master`]), its table,
//!   the shared router its in-process slaves route through, and the QUIC
//!   sessions of remote slaves.
//! - [`slave`]: slaves (`gateway`: TUN; `tunnel`: static QUIC tunnels; `dht`:
//!   libp2p Kademlia prefix-to-site mapping with a pure resolver) and the
//!   [`slave::MasterPort`] through which they see their master.
//! - [`transport`]: quinn endpoints with fleet mutual TLS and tunnel-safe MTU.
//! - [`pki`]: the fleet CA, node certificates with role and prefixes, revocation.
//! - [`config`]: site and slave TOML files. [`site`]: a site process,
//!   `run(config, shutdown)`. [`status`]: the admin socket behind `on6 status`.
//!   [`metrics`]: the only module that knows Prometheus; it renders snapshots.
//! - [`netns`]: network namespaces and traffic helpers for tests and `on6 demo`
//!   (privileged OS code, kept in its own corner). [`demo`]: the demo overlay.

pub mod config;
pub mod control;
pub mod demo;
pub mod impair;
pub mod master;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod pki;
pub mod site;
pub mod slave;
pub mod status;
pub mod transport;
