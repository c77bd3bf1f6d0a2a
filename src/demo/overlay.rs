//! A multi-site overlay on one machine, in network namespaces: the topology
//! `on6 demo` shows and the integration tests drive. Everything it creates
//! (namespaces, processes, files) is removed when it is dropped.
//!
//! ```text
//!  host-N ns ── veth ── site-N ns (on6 run: master, gateway TUN, tunnel)
//!                              │ 10.77.0.N
//!                       underlay ns (bridge)
//!                              │ 10.77.0.(100+N)
//!                       nat-N ns (nftables masquerade)      [remote gateway only]
//!                              │ 10.88.N.1 / .2
//!                        gw-N ns (on6 slave: gateway TUN) ── veth ── host-N ns
//! ```

use crate::netns::{self, Netns, NetnsError};
use crate::pki::{self, Role};
use ipnet::Ipv6Net;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const FLEET_PREFIX: &str = "fd6e::/32";
pub const TUNNEL_PORT: u16 = 4434;
pub const MASTER_PORT: u16 = 4433;
/// Each site serves `/metrics` on this port on its namespace's loopback.
pub const METRICS_PORT: u16 = 9600;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    NotReady(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OverlayError {
    let what = what.into();
    move |source| OverlayError::Io { what, source }
}

#[derive(Debug, Clone)]
pub struct OverlayOptions {
    pub sites: usize,
    /// The on6 binary to run in the namespaces.
    pub bin: PathBuf,
    /// Sites (0-based) whose gateway runs as a remote slave behind a NAT.
    pub remote_gateways: Vec<usize>,
    /// Per-site gateway TUN MTU overrides (site index, MTU).
    pub gateway_mtu: Vec<(usize, u16)>,
    /// Extra config lines appended to each site's `[master]` section.
    pub idle_timeout_ms: u64,
    pub log: String,
    /// Give the root namespace a management link into every site namespace,
    /// so a Prometheus there can scrape each site's metrics.
    pub expose_metrics: bool,
    /// How sites find each other: static tunnels, or DHT slaves.
    pub routing: Routing,
    /// Add a mobile network (its own gateway process) attached first to this site.
    pub mobile: Option<usize>,
    /// A second overlay side by side: every site also serves fd6f:0:N::/48
    /// (a second address on its host), resolved by a second DHT slave in its
    /// own Kademlia network that owns fd6f::/32.
    pub second_dht: bool,
    /// Start the on6 processes (false: build the topology only).
    pub start: bool,
    /// Tunnels hold TCP in order behind a hole (the default; off for A/B runs).
    pub tunnel_in_order: bool,
}

/// The address space of the second overlay (`second_dht`).
pub const SECOND_SPACE: &str = "fd6f::/32";
pub const DHT_B_PORT: u16 = 4445;
pub const P2P_B_PORT: u16 = 4446;

/// Site `i`'s prefix and host address in the second overlay.
pub fn second_prefix(i: usize) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd6f, 0, i as u16 + 1, 0, 0, 0, 0, 0), 48).unwrap_or_default()
}

pub fn second_host_addr(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd6f, 0, i as u16 + 1, 1, 0, 0, 0, 2)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Every site has a static tunnel to every other site.
    Static,
    /// Every site runs a DHT slave bootstrapped from one other site only.
    Dht { reference: bool },
}

pub const DHT_PORT: u16 = 4435;
pub const P2P_PORT: u16 = 4436;
/// The mobile network's prefix; every site's certificate may serve it.
pub const MOBILE_PREFIX: &str = "fd6e:0:99::/48";
pub const MOBILE_HOST: Ipv6Addr = Ipv6Addr::new(0xfd6e, 0, 0x99, 1, 0, 0, 0, 2);

impl OverlayOptions {
    pub fn new(sites: usize, bin: impl Into<PathBuf>) -> Self {
        OverlayOptions {
            sites,
            bin: bin.into(),
            remote_gateways: vec![],
            gateway_mtu: vec![],
            idle_timeout_ms: 3000,
            log: "info".into(),
            expose_metrics: false,
            routing: Routing::Static,
            mobile: None,
            second_dht: false,
            start: true,
            tunnel_in_order: true,
        }
    }
}

pub struct SiteHandle {
    pub index: usize,
    pub name: String,
    pub prefix: Ipv6Net,
    pub router: Ipv6Addr,
    pub host_addr: Ipv6Addr,
    pub underlay: Ipv4Addr,
    pub admin_socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub site_ns: Netns,
    pub host_ns: Netns,
    /// The site's metrics as reachable from the root namespace (with `expose_metrics`).
    pub metrics_target: Option<std::net::SocketAddrV4>,
    /// For a remote gateway: its namespace, the NAT in front of it, its log.
    pub gateway_ns: Option<(Netns, Netns, PathBuf)>,
}

/// The mobile network: a gateway in its own namespace with a host behind it,
/// attached to whichever site's master it is told.
pub struct MobileHandle {
    pub gateway_ns: Netns,
    pub host_ns: Netns,
    pub at: usize,
    pub log: PathBuf,
}

pub struct Overlay {
    pub dir: PathBuf,
    pub sites: Vec<SiteHandle>,
    pub mobile: Option<MobileHandle>,
    routing: Routing,
    children: Vec<(String, Child)>,
    underlay: Option<Netns>,
    keep_dir: bool,
}

fn site_prefix(i: usize) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd6e, 0, i as u16 + 1, 0, 0, 0, 0, 0), 48).unwrap_or_default()
}

fn host_addr(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd6e, 0, i as u16 + 1, 1, 0, 0, 0, 2)
}

/// Site `i`'s native IPv6 address on the underlay link.
pub fn underlay_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, i as u16 + 1)
}

/// A namespace whose links are usable at once: without duplicate address
/// detection the first packets do not wait seconds for tentative link-locals.
fn namespace(prefix: &str) -> Result<Netns, OverlayError> {
    let ns = Netns::create(prefix)?;
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
    }
    Ok(ns)
}

fn root_ip(args: &[&str]) -> Result<(), OverlayError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(io("running ip"))?;
    if !out.status.success() {
        return Err(OverlayError::NotReady(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A veth from the root namespace into a site namespace (10.234.SUBNET.4i+1/30
/// root side, .4i+2 site side); it disappears with the site namespace.
fn management_link(
    site_ns: &Netns,
    subnet: u8,
    i: usize,
) -> Result<std::net::SocketAddrV4, OverlayError> {
    let root = Ipv4Addr::new(10, 234, subnet, 4 * i as u8 + 1);
    let site = Ipv4Addr::new(10, 234, subnet, 4 * i as u8 + 2);
    let root_if = netns::unique_ifname("m");
    root_ip(&[
        "link",
        "add",
        &root_if,
        "type",
        "veth",
        "peer",
        "name",
        "mgmt0",
        "netns",
        site_ns.name(),
    ])?;
    root_ip(&["addr", "add", &format!("{root}/30"), "dev", &root_if])?;
    root_ip(&["link", "set", &root_if, "up"])?;
    site_ns.addr("mgmt0", &format!("{site}/30"))?;
    site_ns.link_up("mgmt0")?;
    Ok(std::net::SocketAddrV4::new(site, METRICS_PORT))
}

/// A Prometheus scrape config for every site's metrics (with `expose_metrics`).
pub fn scrape_config(sites: &[SiteHandle], interval: &str) -> String {
    let mut out = format!("global:\n  scrape_interval: {interval}\nscrape_configs:\n  - job_name: on6\n    static_configs:\n");
    for s in sites {
        if let Some(t) = s.metrics_target {
            out.push_str(&format!("      - targets: ['{t}']\n"));
        }
    }
    out
}

fn site_name(i: usize) -> String {
    format!("site-{}", i + 1)
}

impl Overlay {
    pub fn build(opts: &OverlayOptions) -> Result<Overlay, OverlayError> {
        let dir = std::env::temp_dir().join(format!(
            "on6-overlay-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(io("creating the overlay directory"))?;
        let mut overlay = Overlay {
            dir: dir.clone(),
            sites: vec![],
            mobile: None,
            routing: opts.routing,
            children: vec![],
            underlay: None,
            // Set ON6_KEEP_LOGS=1 to keep configs and logs of a failing test for a post-mortem.
            keep_dir: std::env::var_os("ON6_KEEP_LOGS").is_some(),
        };
        overlay.setup(opts)?;
        Ok(overlay)
    }

    fn setup(&mut self, opts: &OverlayOptions) -> Result<(), OverlayError> {
        let dir = self.dir.clone();
        let ca = pki::init_ca("on6 demo fleet", 2)?;
        pki::write_file(&dir.join("ca.pem"), &ca.cert_pem, false)?;
        pki::write_file(&dir.join("ca.key"), &ca.key_pem, true)?;
        let now = time::OffsetDateTime::now_utc();
        let (nb, na) = (
            now - time::Duration::minutes(5),
            now + time::Duration::days(1),
        );
        let issue = |name: &str, role: Role, prefixes: &[Ipv6Net]| -> Result<(), OverlayError> {
            let (pair, _) = pki::issue(
                &ca.cert_pem,
                &ca.key_pem,
                &pki::IssueRequest {
                    name,
                    role,
                    prefixes,
                    not_before: nb,
                    not_after: na,
                },
            )?;
            pki::write_file(&dir.join(format!("{name}.pem")), &pair.cert_pem, false)?;
            pki::write_file(&dir.join(format!("{name}.key")), &pair.key_pem, true)?;
            Ok(())
        };

        let underlay = Netns::create("on6u")?;
        underlay.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        underlay.exec(&["ip", "link", "set", "br0", "up"])?;
        let fleet: Ipv6Net = FLEET_PREFIX.parse().unwrap_or_default();
        let mgmt_subnet = {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ((std::process::id() + n) % 250 + 1) as u8
        };

        for i in 0..opts.sites {
            let name = site_name(i);
            let prefix = site_prefix(i);
            let router = Ipv6Addr::from(u128::from(prefix.network()) + 1);
            let ul_ip = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
            let mut site_prefixes = vec![prefix];
            if opts.mobile.is_some() {
                site_prefixes.push(MOBILE_PREFIX.parse().unwrap_or_default());
            }
            let second = opts.second_dht && !opts.remote_gateways.contains(&i);
            if second {
                site_prefixes.push(second_prefix(i));
            }
            issue(&name, Role::Master, &site_prefixes)?;

            let site_ns = namespace(&format!("on6s{}", i + 1))?;
            let host_ns = namespace(&format!("on6h{}", i + 1))?;
            let ul_if = netns::unique_ifname("ul");
            netns::veth(&site_ns, "ul0", &underlay, &ul_if)?;
            underlay.exec(&["ip", "link", "set", &ul_if, "master", "br0"])?;
            site_ns.addr("ul0", &format!("{ul_ip}/24"))?;
            // An IPv6 address on the underlay too, for a native (no tunnel) baseline.
            site_ns.addr("ul0", &format!("{}/64", underlay_v6(i)))?;

            let remote = opts.remote_gateways.contains(&i);
            let gw_mtu = opts
                .gateway_mtu
                .iter()
                .find(|(s, _)| *s == i)
                .map(|(_, m)| *m);
            let host_net_ns = if remote {
                // The gateway runs in its own namespace behind a NAT, dialing its master.
                let gw_name = format!("{name}-gw");
                issue(&gw_name, Role::Slave, &[prefix])?;
                let nat_ns = namespace(&format!("on6n{}", i + 1))?;
                let gw_ns = namespace(&format!("on6g{}", i + 1))?;
                let nat_ul = netns::unique_ifname("nu");
                netns::veth(&nat_ns, "ul0", &underlay, &nat_ul)?;
                underlay.exec(&["ip", "link", "set", &nat_ul, "master", "br0"])?;
                nat_ns.addr("ul0", &format!("10.77.0.{}/24", 101 + i))?;
                netns::veth(&nat_ns, "in0", &gw_ns, "out0")?;
                nat_ns.addr("in0", &format!("10.88.{}.1/24", i + 1))?;
                gw_ns.addr("out0", &format!("10.88.{}.2/24", i + 1))?;
                gw_ns.route(&["add", "default", "via", &format!("10.88.{}.1", i + 1)])?;
                nat_ns.sysctl("net.ipv4.ip_forward", "1")?;
                let rules = "table ip on6nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"ul0\" masquerade\n }\n chain forward {\n  type filter hook forward priority filter; policy drop;\n  ct state established,related accept\n  iifname \"in0\" oifname \"ul0\" accept\n }\n}\n";
                let rules_path = dir.join(format!("nat-{}.nft", i + 1));
                std::fs::write(&rules_path, rules).map_err(io("writing NAT rules"))?;
                nat_ns.exec(&["nft", "-f", &rules_path.to_string_lossy()])?;

                let slave_cfg = format!(
                    "ca = \"ca.pem\"\ncert = \"{gw_name}.pem\"\nkey = \"{gw_name}.key\"\nidle_timeout_ms = {idle}\nmetrics_listen = \"0.0.0.0:{METRICS_PORT}\"\nadmin_socket = \"{gw_name}.sock\"\n\n[master]\naddress = \"{ul_ip}:{MASTER_PORT}\"\nname = \"{name}\"\n\n[slave]\nkind = \"gateway\"\nprefix = \"{prefix}\"\nroutes = [\"{fleet}\"]\n{mtu}",
                    idle = opts.idle_timeout_ms,
                    mtu = gw_mtu.map_or(String::new(), |m| format!("mtu = {m}\n")),
                );
                let slave_path = dir.join(format!("{gw_name}.toml"));
                std::fs::write(&slave_path, slave_cfg).map_err(io("writing slave config"))?;
                gw_ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                let log = dir.join(format!("{gw_name}.log"));
                // The slave process starts after its master (below).
                Some((gw_ns, nat_ns, log))
            } else {
                None
            };

            // Host behind whichever namespace holds the gateway.
            let router_ns = host_net_ns.as_ref().map_or(&site_ns, |(g, _, _)| g);
            netns::veth(router_ns, "lan0", &host_ns, "eth0")?;
            router_ns.addr(
                "lan0",
                &format!("{}/64", Ipv6Addr::from(u128::from(host_addr(i)) - 1)),
            )?;
            if second {
                router_ns.addr(
                    "lan0",
                    &format!("{}/64", Ipv6Addr::from(u128::from(second_host_addr(i)) - 1)),
                )?;
                host_ns.addr("eth0", &format!("{}/64", second_host_addr(i)))?;
            }
            host_ns.addr("eth0", &format!("{}/64", host_addr(i)))?;
            host_ns.route(&[
                "add",
                "default",
                "via",
                &Ipv6Addr::from(u128::from(host_addr(i)) - 1).to_string(),
            ])?;
            site_ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;

            let routing = match opts.routing {
                Routing::Static => {
                    let mut peers = String::new();
                    for j in (0..opts.sites).filter(|j| *j != i) {
                        peers.push_str(&format!(
                            "\n[[slave.peer]]\nname = \"{}\"\nendpoint = \"10.77.0.{}:{TUNNEL_PORT}\"\nprefixes = [\"{}\"]\n",
                            site_name(j),
                            j + 1,
                            site_prefix(j)
                        ));
                    }
                    let in_order = opts.tunnel_in_order;
                    format!("\n[[slave]]\nkind = \"tunnel\"\nlisten = \"{ul_ip}:{TUNNEL_PORT}\"\nin_order = {in_order}\n{peers}")
                }
                Routing::Dht { reference } => {
                    // One bootstrap peer only: the previous site (the first site bootstraps from the second).
                    let boot = if i == 0 { 1 } else { i - 1 };
                    format!(
                        "\n[[slave]]\nkind = \"dht\"\nlisten = \"{ul_ip}:{DHT_PORT}\"\np2p_listen = \"{ul_ip}:{P2P_PORT}\"\nbootstrap = [\"10.77.0.{}:{P2P_PORT}\"]\nspace = [\"{fleet}\"]\nmode = \"{}\"\n",
                        boot + 1,
                        if reference { "reference" } else { "fast" }
                    )
                }
            };
            let gateway = if remote {
                String::new()
            } else {
                let (routes, extra) = if second {
                    (
                        format!("[\"{fleet}\", \"{SECOND_SPACE}\"]"),
                        format!("extra_prefixes = [\"{}\"]\n", second_prefix(i)),
                    )
                } else {
                    (format!("[\"{fleet}\"]"), String::new())
                };
                format!(
                    "\n[[slave]]\nkind = \"gateway\"\nroutes = {routes}\n{extra}{}",
                    gw_mtu.map_or(String::new(), |m| format!("mtu = {m}\n"))
                )
            };
            let routing = if second {
                let boot = if i == 0 { 1 } else { i - 1 };
                format!(
                    "{routing}\n[[slave]]\nkind = \"dht\"\nname = \"{name}-dht-b\"\nnetwork = \"b\"\nlisten = \"{ul_ip}:{DHT_B_PORT}\"\np2p_listen = \"{ul_ip}:{P2P_B_PORT}\"\nbootstrap = [\"10.77.0.{}:{P2P_B_PORT}\"]\nspace = [\"{SECOND_SPACE}\"]\n",
                    boot + 1
                )
            } else {
                routing
            };
            let admin_socket = dir.join(format!("{name}.sock"));
            let site_cfg = format!(
                "[site]\nname = \"{name}\"\nprefix = \"{prefix}\"\nca = \"ca.pem\"\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\nrevoked = \"revoked.txt\"\nadmin_socket = \"{}\"\nmetrics_listen = \"0.0.0.0:{METRICS_PORT}\"\n\n[master]\nlisten = \"{ul_ip}:{MASTER_PORT}\"\nidle_timeout_ms = {}\n{gateway}{routing}",
                admin_socket.display(),
                opts.idle_timeout_ms
            );
            let metrics_target = if opts.expose_metrics {
                Some(management_link(&site_ns, mgmt_subnet, i)?)
            } else {
                None
            };
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, site_cfg).map_err(io("writing site config"))?;
            let log = dir.join(format!("{name}.log"));
            self.sites.push(SiteHandle {
                index: i,
                name,
                prefix,
                router,
                host_addr: host_addr(i),
                underlay: ul_ip,
                admin_socket,
                config,
                log,
                site_ns,
                host_ns,
                gateway_ns: host_net_ns,
                metrics_target,
            });
        }
        std::fs::write(dir.join("revoked.txt"), "# revoked serials\n")
            .map_err(io("writing revocation list"))?;
        if let Some(at) = opts.mobile {
            issue(
                "mobile-gw",
                Role::Slave,
                &[MOBILE_PREFIX.parse().unwrap_or_default()],
            )?;
            let gw = namespace("on6mg")?;
            let host = namespace("on6mh")?;
            let ul = netns::unique_ifname("mu");
            netns::veth(&gw, "ul0", &underlay, &ul)?;
            underlay.exec(&["ip", "link", "set", &ul, "master", "br0"])?;
            gw.addr("ul0", "10.77.0.200/24")?;
            netns::veth(&gw, "lan0", &host, "eth0")?;
            gw.addr("lan0", "fd6e:0:99:1::1/64")?;
            host.addr("eth0", &format!("{MOBILE_HOST}/64"))?;
            host.route(&["add", "default", "via", "fd6e:0:99:1::1"])?;
            gw.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            self.mobile = Some(MobileHandle {
                gateway_ns: gw,
                host_ns: host,
                at,
                log: dir.join("mobile-gw.log"),
            });
        }
        self.underlay = Some(underlay);

        if !opts.start {
            // Namespaces and configs only: a bench runs other tunnels over the same topology.
            return Ok(());
        }
        for i in 0..self.sites.len() {
            self.start_site(i, &opts.bin, &opts.log)?;
        }
        for i in 0..self.sites.len() {
            if self.sites[i].gateway_ns.is_some() {
                self.start_remote_gateway(i, &opts.bin, &opts.log)?;
            }
        }
        if let Some(at) = opts.mobile {
            self.start_mobile(at, &opts.bin, &opts.log)?;
        }
        self.wait_ready(Duration::from_secs(30))
    }

    fn spawn_in(
        &mut self,
        label: String,
        ns: &str,
        bin: &Path,
        args: &[&str],
        log: &Path,
        level: &str,
    ) -> Result<(), OverlayError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = out.try_clone().map_err(io("log file"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {} in {ns}", bin.display())))?;
        self.children.push((label, child));
        Ok(())
    }

    pub fn start_site(&mut self, i: usize, bin: &Path, level: &str) -> Result<(), OverlayError> {
        let s = &self.sites[i];
        let (ns, cfg, log, label) = (
            s.site_ns.name().to_string(),
            s.config.clone(),
            s.log.clone(),
            s.name.clone(),
        );
        self.spawn_in(
            label,
            &ns,
            bin,
            &["run", &cfg.to_string_lossy()],
            &log,
            level,
        )
    }

    pub fn start_remote_gateway(
        &mut self,
        i: usize,
        bin: &Path,
        level: &str,
    ) -> Result<(), OverlayError> {
        let s = &self.sites[i];
        let Some((gw_ns, _, log)) = &s.gateway_ns else {
            return Ok(());
        };
        let cfg = self.dir.join(format!("{}-gw.toml", s.name));
        let (ns, log, label) = (
            gw_ns.name().to_string(),
            log.clone(),
            format!("{}-gw", s.name),
        );
        self.spawn_in(
            label,
            &ns,
            bin,
            &["slave", &cfg.to_string_lossy()],
            &log,
            level,
        )
    }

    /// Starts the mobile network's gateway attached to site `at`'s master.
    pub fn start_mobile(&mut self, at: usize, bin: &Path, level: &str) -> Result<(), OverlayError> {
        let Some(m) = &mut self.mobile else {
            return Ok(());
        };
        m.at = at;
        let cfg = format!(
            "ca = \"ca.pem\"\ncert = \"mobile-gw.pem\"\nkey = \"mobile-gw.key\"\n\n[master]\naddress = \"10.77.0.{}:{MASTER_PORT}\"\nname = \"{}\"\n\n[slave]\nkind = \"gateway\"\nprefix = \"{MOBILE_PREFIX}\"\nroutes = [\"{FLEET_PREFIX}\"]\n",
            at + 1,
            site_name(at)
        );
        let path = self.dir.join("mobile-gw.toml");
        std::fs::write(&path, cfg).map_err(io("writing the mobile gateway config"))?;
        let (ns, log) = (m.gateway_ns.name().to_string(), m.log.clone());
        self.spawn_in(
            "mobile".into(),
            &ns,
            bin,
            &["slave", &path.to_string_lossy()],
            &log,
            level,
        )
    }

    /// Moves the mobile network to site `to`: its gateway process dies
    /// (SIGKILL, no goodbye) and a new one attaches to the other master.
    pub fn move_mobile(&mut self, to: usize, bin: &Path, level: &str) -> Result<(), OverlayError> {
        self.kill("mobile");
        self.start_mobile(to, bin, level)
    }

    /// Plugs a namespace of the caller's into the underlay bridge with `cidr` (e.g. "10.77.0.150/24").
    pub fn underlay_link(&self, ns: &Netns, cidr: &str) -> Result<(), OverlayError> {
        let underlay = self
            .underlay
            .as_ref()
            .ok_or_else(|| OverlayError::NotReady("no underlay".into()))?;
        let ul = netns::unique_ifname("xu");
        netns::veth(ns, "ul0", underlay, &ul)?;
        underlay.exec(&["ip", "link", "set", &ul, "master", "br0"])?;
        ns.addr("ul0", cidr)?;
        Ok(())
    }

    /// Process ids of the on6 processes (for CPU and memory accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Whether site `i`'s master has a route for `prefix`.
    pub fn has_route(&self, i: usize, prefix: &str) -> bool {
        self.status(i).is_some_and(|st| {
            st["master"]["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r[0] == prefix))
        })
    }

    /// Kills a process (site or remote gateway, by label) with SIGKILL: no goodbye to its peers.
    pub fn kill(&mut self, label: &str) -> bool {
        let mut found = false;
        for (l, child) in self.children.iter_mut().filter(|(l, _)| l == label) {
            let _ = child.kill();
            let _ = child.wait();
            found = true;
            tracing::info!(process = %l, "killed");
        }
        self.children.retain(|(l, _)| l != label);
        found
    }

    /// Sends SIGTERM to a process (by label) and waits up to `timeout` for it to exit.
    pub fn terminate(
        &mut self,
        label: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let pos = self.children.iter().position(|(l, _)| l == label)?;
        let (_, mut child) = self.children.remove(pos);
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let text = crate::status::fetch(&self.sites[i].admin_socket).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether site `i` has its gateway attached and every tunnel peer connected.
    pub fn site_ready(&self, i: usize) -> bool {
        let Some(st) = self.status(i) else {
            return false;
        };
        let gateway_up = st["master"]["slaves"].as_array().is_some_and(|v| {
            v.iter().any(|s| {
                s["kind"] == "gateway" && !s["prefixes"].as_array().is_none_or(|p| p.is_empty())
            })
        });
        if let Routing::Dht { .. } = self.routing {
            // Every site's entry is in this node's store: the DHT has formed and replicated.
            let dht_ready = st["dhts"].as_array().is_some_and(|d| {
                d.iter().all(|d| {
                    let p2p = &d[1]["status"]["p2p"];
                    p2p["peers"].as_u64() >= Some(1)
                        && p2p["records_held"].as_u64() >= Some(self.sites.len() as u64)
                })
            });
            if !dht_ready {
                return false;
            }
        }
        if let Some(m) = &self.mobile {
            if m.at == i && !self.has_route(i, MOBILE_PREFIX) {
                return false;
            }
        }
        let peers_up = st["tunnels"].as_array().is_some_and(|t| {
            t.iter().all(|tun| {
                tun[1]
                    .as_array()
                    .is_some_and(|ps| ps.iter().all(|p| p["connected"] == true))
            })
        });
        gateway_up && peers_up
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), OverlayError> {
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<usize> = (0..self.sites.len())
                .filter(|i| !self.site_ready(*i))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            for (label, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(OverlayError::NotReady(format!(
                        "{label} exited with {status}; see the logs in {}",
                        self.dir.display()
                    )));
                }
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = pending
                    .iter()
                    .map(|i| self.sites[*i].name.as_str())
                    .collect();
                // What the first pending site reports says why it is not ready.
                let detail = self
                    .status(pending[0])
                    .map_or("no status".to_string(), |st| {
                        format!(
                            "slaves {} tunnels {} dhts {}",
                            st["master"]["slaves"], st["tunnels"], st["dhts"]
                        )
                    });
                return Err(OverlayError::NotReady(format!(
                    "sites not ready after {timeout:?}: {names:?}; logs in {}; {}: {detail}",
                    self.dir.display(),
                    names.first().unwrap_or(&"?")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keeps the working directory (configs, certificates, logs) after drop.
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    /// The last lines of every process log, for failure reports.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut paths: Vec<PathBuf> = self.sites.iter().map(|s| s.log.clone()).collect();
        paths.extend(
            self.sites
                .iter()
                .filter_map(|s| s.gateway_ns.as_ref().map(|g| g.2.clone())),
        );
        for p in paths {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("==> {} <==\n", p.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // SIGTERM first so sites remove their TUN devices and say goodbye; then make sure.
        for (_, child) in &mut self.children {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, child) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.sites.clear();
        self.mobile = None;
        self.underlay = None;
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
