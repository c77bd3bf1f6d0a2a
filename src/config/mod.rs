//! Configuration files: one TOML file per site (`on6 run`) and one per remote
//! slave (`on6 slave`). Unknown keys are errors; every validation error names
//! the key it is about. Relative paths are relative to the file.

use crate::transport::{TransportOptions, DATAGRAM_OVERHEAD, MAX_UDP_PAYLOAD};
use ipnet::Ipv6Net;
use serde::Deserialize;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

pub const DEFAULT_MTU: u16 = 1400;
pub const MIN_MTU: u16 = 1280;

fn default_mtu() -> u16 {
    DEFAULT_MTU
}
fn default_idle_ms() -> u64 {
    3000
}
fn default_tun() -> String {
    "on6gw".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub site: Site,
    #[serde(default)]
    pub master: MasterSection,
    #[serde(default, rename = "slave")]
    pub slaves: Vec<SlaveSection>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: String,
    /// The site's address space; the in-process gateway announces it.
    pub prefix: Ipv6Net,
    /// Where the master answers ICMPv6 from; defaults to the prefix's `::1`.
    pub router_address: Option<Ipv6Addr>,
    /// Largest IPv6 packet the overlay carries between sites.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub revoked: Option<PathBuf>,
    /// Unix socket serving `on6 status`.
    pub admin_socket: Option<PathBuf>,
    /// Prometheus `/metrics` listener; off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterSection {
    /// QUIC listener for slaves in other processes; none when unset.
    pub listen: Option<SocketAddr>,
    /// A slave silent this long is gone and its routes with it.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Certificate names of the remote slaves admitted; empty admits any fleet slave.
    #[serde(default)]
    pub remote_slaves: Vec<String>,
}

impl Default for MasterSection {
    fn default() -> Self {
        MasterSection {
            listen: None,
            idle_timeout_ms: default_idle_ms(),
            remote_slaves: vec![],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SlaveSection {
    Gateway(GatewaySection),
    Tunnel(TunnelSection),
    Dht(DhtSection),
}

fn default_lengths() -> Vec<u8> {
    vec![0, 32, 40, 48, 56, 64]
}
fn default_hit_ttl_ms() -> u64 {
    60_000
}
fn default_miss_ttl_ms() -> u64 {
    5_000
}
fn default_record_ttl_s() -> u64 {
    300
}
fn default_republish_s() -> u64 {
    60
}
fn default_mode() -> String {
    "fast".into()
}

/// A DHT slave: self-organizing mapping of prefixes to sites (libp2p Kademlia).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhtSection {
    pub name: Option<String>,
    /// QUIC listener for packets from other sites.
    /// Name of the Kademlia network; DHT slaves with different networks never mix
    /// (several overlays side by side, each owning part of the address space).
    pub network: Option<String>,
    pub listen: SocketAddr,
    /// The endpoint other sites should use (behind a port forward, say); defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    /// libp2p (TCP) listener of the Kademlia node.
    pub p2p_listen: SocketAddr,
    /// libp2p addresses (ip:port) of one or two other DHT slaves.
    #[serde(default)]
    pub bootstrap: Vec<SocketAddr>,
    /// The address space this slave resolves; announced to the master.
    pub space: Vec<Ipv6Net>,
    /// Extra prefixes to publish besides those of the site's gateways.
    #[serde(default)]
    pub serve: Vec<Ipv6Net>,
    /// "fast" (parallel gets over `lengths`) or "reference" (the paper's bit-clearing walk).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Aggregation prefix lengths the fleet uses (fast mode).
    #[serde(default = "default_lengths")]
    pub lengths: Vec<u8>,
    #[serde(default = "default_hit_ttl_ms")]
    pub hit_ttl_ms: u64,
    #[serde(default = "default_miss_ttl_ms")]
    pub miss_ttl_ms: u64,
    #[serde(default = "default_record_ttl_s")]
    pub record_ttl_s: u64,
    #[serde(default = "default_republish_s")]
    pub republish_s: u64,
    /// As for a tunnel: hold TCP behind a hole until loss hiding fills it.
    #[serde(default = "default_in_order")]
    pub in_order: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub name: Option<String>,
    #[serde(default = "default_tun")]
    pub tun: String,
    /// Defaults to the site prefix (or, for a remote slave, its certificate's first prefix).
    pub prefix: Option<Ipv6Net>,
    /// The TUN's own address; defaults to the prefix's `::2`.
    pub address: Option<Ipv6Addr>,
    /// Prefixes the site kernel routes into the overlay.
    #[serde(default)]
    pub routes: Vec<Ipv6Net>,
    /// More prefixes this gateway serves (each must be inside the site certificate).
    #[serde(default)]
    pub extra_prefixes: Vec<Ipv6Net>,
    /// TUN MTU; defaults to the overlay MTU.
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    pub name: Option<String>,
    pub listen: SocketAddr,
    /// Hold TCP packets behind a hole until loss hiding fills it (see
    /// `transport::hold`). Off suits fleets whose inner TCP is mostly BBR on
    /// long lossy paths: the hold adds up to a round trip of delay there.
    #[serde(default = "default_in_order")]
    pub in_order: bool,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
}

fn default_in_order() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub name: String,
    pub endpoint: Option<SocketAddr>,
    pub prefixes: Vec<Ipv6Net>,
}

/// A slave running in its own process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaveFile {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub revoked: Option<PathBuf>,
    pub master: MasterRef,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    pub slave: SlaveSection,
    /// Unix socket serving `on6 status` for this slave.
    pub admin_socket: Option<PathBuf>,
    /// Prometheus `/metrics` listener; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterRef {
    pub address: SocketAddr,
    /// The master's certificate name.
    pub name: String,
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

fn nth_address(net: &Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn fail(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn mtu(&self, key: &str, mtu: u16) -> Result<(), ConfigError> {
        let max = MAX_UDP_PAYLOAD - DATAGRAM_OVERHEAD;
        if !(MIN_MTU..=max).contains(&mtu) {
            return Err(self.fail(key, format!("{mtu} is outside {MIN_MTU}..={max} (IPv6 minimum .. what a QUIC datagram carries)")));
        }
        Ok(())
    }

    fn name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(self.fail(
                key,
                format!("{name:?} is not a node name (lowercase letters, digits, '-', '.')"),
            ));
        }
        Ok(())
    }

    fn gateway(&self, key: &str, g: &GatewaySection, prefix: Ipv6Net) -> Result<(), ConfigError> {
        if g.tun.is_empty() || g.tun.len() > 15 {
            return Err(self.fail(
                format!("{key}.tun"),
                "interface names are 1 to 15 characters",
            ));
        }
        if let Some(p) = g.prefix {
            if p.trunc() != p {
                return Err(self.fail(format!("{key}.prefix"), format!("{p} has host bits set")));
            }
        }
        if let Some(a) = g.address {
            if !prefix.contains(&a) {
                return Err(self.fail(
                    format!("{key}.address"),
                    format!("{a} is outside the gateway prefix {prefix}"),
                ));
            }
        }
        if let Some(m) = g.mtu {
            if !(MIN_MTU..=9000).contains(&m) {
                return Err(self.fail(
                    format!("{key}.mtu"),
                    format!("{m} is outside {MIN_MTU}..=9000"),
                ));
            }
        }
        Ok(())
    }
}

impl SiteConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: SiteConfig = read_toml(path)?;
        cfg.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.site.ca, &mut cfg.site.cert, &mut cfg.site.key] {
            resolve(base, p);
        }
        for p in [&mut cfg.site.revoked, &mut cfg.site.admin_socket]
            .into_iter()
            .flatten()
        {
            resolve(base, p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = Check { path: &self.path };
        c.name("site.name", &self.site.name)?;
        let prefix = self.site.prefix;
        if prefix.trunc() != prefix {
            return Err(c.fail("site.prefix", format!("{prefix} has host bits set")));
        }
        if !prefix.contains(&self.router_address()) {
            return Err(c.fail(
                "site.router_address",
                format!(
                    "{} is outside the site prefix {prefix}",
                    self.router_address()
                ),
            ));
        }
        c.mtu("site.mtu", self.site.mtu)?;
        if self.master.idle_timeout_ms < 300 {
            return Err(c.fail("master.idle_timeout_ms", "must be at least 300"));
        }
        let mut tuns = Vec::new();
        let mut gateways = 0;
        for (i, s) in self.slaves.iter().enumerate() {
            let key = format!("slave[{i}]");
            match s {
                SlaveSection::Gateway(g) => {
                    gateways += 1;
                    c.gateway(&key, g, g.prefix.unwrap_or(prefix))?;
                    if let Some(p) = g.prefix {
                        if !prefix.contains(&p) {
                            return Err(c.fail(
                                format!("{key}.prefix"),
                                format!("{p} is outside the site prefix {prefix}"),
                            ));
                        }
                    }
                    if tuns.contains(&g.tun) {
                        return Err(c.fail(
                            format!("{key}.tun"),
                            format!("{} is used by another gateway", g.tun),
                        ));
                    }
                    tuns.push(g.tun.clone());
                }
                SlaveSection::Dht(d) => {
                    if d.space.is_empty() {
                        return Err(c.fail(
                            format!("{key}.space"),
                            "a DHT slave needs the address space it resolves",
                        ));
                    }
                    if !matches!(d.mode.as_str(), "fast" | "reference") {
                        return Err(c.fail(
                            format!("{key}.mode"),
                            format!("{:?} is neither \"fast\" nor \"reference\"", d.mode),
                        ));
                    }
                    if d.lengths.is_empty() || d.lengths.iter().any(|l| *l > 128) {
                        return Err(c.fail(
                            format!("{key}.lengths"),
                            "give one or more prefix lengths in 0..=128",
                        ));
                    }
                    if d.republish_s == 0 || d.republish_s * 2 > d.record_ttl_s {
                        return Err(c.fail(
                            format!("{key}.republish_s"),
                            "republish at most every half record lifetime, and not 0",
                        ));
                    }
                    if !d.p2p_listen.is_ipv4() || d.bootstrap.iter().any(|b| !b.is_ipv4()) {
                        return Err(c.fail(
                            format!("{key}.p2p_listen"),
                            "the DHT runs over IPv4 (the underlay)",
                        ));
                    }
                }
                SlaveSection::Tunnel(t) => {
                    for (j, p) in t.peers.iter().enumerate() {
                        c.name(&format!("{key}.peer[{j}].name"), &p.name)?;
                        if p.prefixes.is_empty() {
                            return Err(c.fail(
                                format!("{key}.peer[{j}].prefixes"),
                                "a peer needs at least one prefix",
                            ));
                        }
                        if let Some(q) = p
                            .prefixes
                            .iter()
                            .find(|q| q.contains(&prefix) || prefix.contains(*q))
                        {
                            return Err(c.fail(
                                format!("{key}.peer[{j}].prefixes"),
                                format!("{q} overlaps the site prefix {prefix}"),
                            ));
                        }
                    }
                }
            }
        }
        if gateways > 1
            && self
                .slaves
                .iter()
                .any(|s| matches!(s, SlaveSection::Gateway(g) if g.prefix.is_none()))
        {
            return Err(c.fail("slave", "with several gateways each needs its own prefix"));
        }
        Ok(())
    }

    pub fn router_address(&self) -> Ipv6Addr {
        self.site
            .router_address
            .unwrap_or_else(|| nth_address(&self.site.prefix, 1))
    }

    pub fn transport(&self) -> TransportOptions {
        TransportOptions {
            mtu: self.site.mtu,
            idle_timeout: Duration::from_millis(self.master.idle_timeout_ms),
        }
    }
}

impl GatewaySection {
    /// The concrete gateway settings, given the prefix it serves and the overlay MTU.
    pub fn resolve(
        &self,
        default_name: &str,
        prefix: Ipv6Net,
        mtu: u16,
    ) -> crate::slave::gateway::GatewayConfig {
        let prefix = self.prefix.unwrap_or(prefix);
        crate::slave::gateway::GatewayConfig {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            tun_name: self.tun.clone(),
            prefix,
            extra_prefixes: self.extra_prefixes.clone(),
            address: self.address.unwrap_or_else(|| nth_address(&prefix, 2)),
            routes: self.routes.clone(),
            mtu: self.mtu.unwrap_or(mtu),
        }
    }
}

impl TunnelSection {
    pub fn resolve(
        &self,
        default_name: &str,
        transport: TransportOptions,
    ) -> crate::slave::tunnel::TunnelConfig {
        crate::slave::tunnel::TunnelConfig {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            listen: self.listen,
            in_order: self.in_order,
            peers: self
                .peers
                .iter()
                .map(|p| crate::slave::tunnel::PeerConfig {
                    name: p.name.clone(),
                    endpoint: p.endpoint,
                    prefixes: p.prefixes.clone(),
                })
                .collect(),
            transport,
        }
    }

    pub fn allowed(&self) -> Vec<Ipv6Net> {
        self.peers
            .iter()
            .flat_map(|p| p.prefixes.iter().copied())
            .collect()
    }
}

impl DhtSection {
    pub fn resolve(
        &self,
        default_name: &str,
        site_prefix: Ipv6Net,
        transport: TransportOptions,
    ) -> crate::slave::dht::DhtConfig {
        use crate::slave::dht::resolve::{Mode, ResolverConfig};
        let mode = if self.mode == "reference" {
            Mode::Reference
        } else {
            Mode::Fast {
                lengths: self.lengths.clone(),
            }
        };
        let mut serve = self.serve.clone();
        serve.push(site_prefix);
        crate::slave::dht::DhtConfig {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            network: self.network.clone(),
            listen: self.listen,
            advertise: self.advertise.unwrap_or(self.listen),
            p2p_listen: self.p2p_listen,
            bootstrap: self.bootstrap.clone(),
            space: self.space.clone(),
            serve,
            resolver: ResolverConfig {
                mode,
                hit_ttl: Duration::from_millis(self.hit_ttl_ms),
                miss_ttl: Duration::from_millis(self.miss_ttl_ms),
                ..ResolverConfig::default()
            },
            record_ttl: Duration::from_secs(self.record_ttl_s),
            republish: Duration::from_secs(self.republish_s),
            idle_close: Duration::from_secs(120),
            in_order: self.in_order,
            transport,
        }
    }
}

impl SlaveFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: SlaveFile = read_toml(path)?;
        cfg.path = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key] {
            resolve(base, p);
        }
        for p in [&mut cfg.revoked, &mut cfg.admin_socket]
            .into_iter()
            .flatten()
        {
            resolve(base, p);
        }
        let c = Check { path: &cfg.path };
        c.mtu("mtu", cfg.mtu)?;
        c.name("master.name", &cfg.master.name)?;
        if cfg.idle_timeout_ms < 300 {
            return Err(c.fail("idle_timeout_ms", "must be at least 300"));
        }
        match &cfg.slave {
            SlaveSection::Gateway(g) => {
                if let Some(p) = g.prefix {
                    c.gateway("slave", g, p)?;
                }
            }
            SlaveSection::Tunnel(_) | SlaveSection::Dht(_) => {
                return Err(c.fail(
                    "slave.kind",
                    "tunnel and DHT slaves run inside their site's process",
                ))
            }
        }
        Ok(cfg)
    }

    pub fn transport(&self) -> TransportOptions {
        TransportOptions {
            mtu: self.mtu,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("site.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "on6-cfg-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const GOOD: &str = r#"
[site]
name = "site-a"
prefix = "fd6e:0:a::/48"
ca = "ca.pem"
cert = "site-a.pem"
key = "site-a.key"

[master]
listen = "0.0.0.0:4433"

[[slave]]
kind = "gateway"
routes = ["fd6e::/32"]

[[slave]]
kind = "tunnel"
listen = "10.0.0.1:4434"
[[slave.peer]]
name = "site-b"
endpoint = "10.0.0.2:4434"
prefixes = ["fd6e:0:b::/48"]
"#;

    #[test]
    fn good_file_loads_with_defaults() {
        let (dir, path) = write(GOOD);
        let cfg = SiteConfig::load(&path).unwrap();
        assert_eq!(cfg.site.mtu, 1400);
        assert_eq!(
            cfg.router_address(),
            "fd6e:0:a::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(cfg.site.ca, dir.0.join("ca.pem"));
        assert_eq!(cfg.slaves.len(), 2);
        let SlaveSection::Gateway(g) = &cfg.slaves[0] else {
            panic!()
        };
        let g = g.resolve("gw", cfg.site.prefix, cfg.site.mtu);
        assert_eq!(g.address, "fd6e:0:a::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(g.tun_name, "on6gw");
    }

    fn error_of(text: &str) -> String {
        let (_dir, path) = write(text);
        SiteConfig::load(&path).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = error_of(&GOOD.replace(
            "listen = \"0.0.0.0:4433\"",
            "listen = \"0.0.0.0:4433\"\nlisten_port = 1",
        ));
        assert!(e.contains("listen_port"), "{e}");
        let e = error_of(&GOOD.replace(
            "prefix = \"fd6e:0:a::/48\"",
            "prefix = \"fd6e:0:a::/48\"\nmtu = 9000",
        ));
        assert!(e.contains("site.mtu"), "{e}");
        let e = error_of(&GOOD.replace("fd6e:0:b::/48", "fd6e::/16"));
        assert!(
            e.contains("slave[1].peer[0].prefixes") && e.contains("overlaps"),
            "{e}"
        );
        let e =
            error_of(&GOOD.replace("prefix = \"fd6e:0:a::/48\"", "prefix = \"fd6e:0:a::1/48\""));
        assert!(e.contains("site.prefix") && e.contains("host bits"), "{e}");
        let e = error_of(&GOOD.replace(
            "kind = \"gateway\"",
            "kind = \"gateway\"\ntun = \"a-very-long-interface-name\"",
        ));
        assert!(e.contains("slave[0].tun"), "{e}");
        let e = error_of(&GOOD.replace("kind = \"tunnel\"", "kind = \"teleport\""));
        assert!(e.contains("teleport"), "{e}");
        let e = error_of(&GOOD.replace("endpoint = \"10.0.0.2:4434\"", "endpoint = \"nowhere\""));
        assert!(
            e.contains("endpoint") || e.contains("socket address"),
            "{e}"
        );
        let e = error_of("[site]\nname = \"x\"\n");
        assert!(e.contains("prefix"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn shipped_examples_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        SiteConfig::load(&root.join("site-a.toml")).unwrap();
        SlaveFile::load(&root.join("site-a-gw.toml")).unwrap();
        SiteConfig::load(&root.join("site-b-dht.toml")).unwrap();
    }
}
