//! Shared pieces of the namespace tests: root check, overlay builder, running
//! async client code inside a namespace.
#![allow(dead_code)]

use on6::demo::overlay::{Overlay, OverlayOptions};
use on6::netns;
use std::future::Future;
use std::time::{Duration, Instant};

pub fn options(sites: usize) -> OverlayOptions {
    let mut o = OverlayOptions::new(sites, env!("CARGO_BIN_EXE_on6"));
    o.log = std::env::var("ON6_TEST_LOG").unwrap_or_else(|_| "info,on6=debug".into());
    o
}

/// Options for sites that find each other through DHT slaves.
pub fn dht(sites: usize) -> OverlayOptions {
    let mut o = options(sites);
    o.routing = on6::demo::overlay::Routing::Dht { reference: false };
    o
}

/// Whether at least two of three pings from site `a`'s host reach site `b`'s.
pub fn ping_ok(ov: &Overlay, a: usize, b: usize) -> bool {
    on6::demo::measure_pair(ov, a, b, 3, 1).pings_received >= 2
}

/// Builds the overlay, or `None` (with a SKIPPED message) when not root.
pub fn build(test: &str, opts: OverlayOptions) -> Option<Overlay> {
    if netns::skip_unless_root(test) {
        return None;
    }
    match Overlay::build(&opts) {
        Ok(ov) => Some(ov),
        Err(e) => panic!("{test}: overlay did not come up: {e}"),
    }
}

/// Runs async code on a current-thread runtime in a thread inside namespace `ns`.
pub fn in_ns_async<F, Fut, R>(ns: &str, f: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    netns::in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f())
    })
    .expect("entering namespace")
}

/// Polls until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Fails with the processes' logs attached.
pub fn check(ov: &Overlay, ok: bool, what: &str) {
    if !ok {
        panic!("{what}\n--- logs ---\n{}", ov.logs_tail(40));
    }
}

/// Runs `promtool check metrics` on an exposition and fails with its complaints.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by scripts/setup.sh)");
    if let Some(mut stdin) = lint.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .expect("writing to promtool");
    }
    let out = lint.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops `pct` % of the wire packets into every site, one by one: nft on
/// the underlay's ingress, with the offloads off so no batch goes as one.
pub fn wire_loss(ov: &Overlay, pct: u32) {
    for (i, s) in ov.sites.iter().enumerate() {
        let rules = format!(
            "table netdev on6loss {{\n  chain ingress {{\n    type filter hook ingress device \"ul0\" priority 0; policy accept;\n    numgen random mod 100 < {pct} drop\n  }}\n}}\n"
        );
        let path = ov.dir.join(format!("loss-{i}.nft"));
        std::fs::write(&path, rules).expect("writing nft rules");
        let applied = s
            .site_ns
            .exec(&[
                "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "gro", "off",
            ])
            .and_then(|_| s.site_ns.exec(&["nft", "-f", &path.to_string_lossy()]));
        check(ov, applied.is_ok(), &format!("loss rules: {applied:?}"));
    }
}

/// Checks that 10,000 numbered UDP datagrams from site 1 to site 2 get
/// through the wire loss set up by [`wire_loss`] (`pct` %) on `path`.
pub fn check_udp_loss_hidden(ov: &Overlay, pct: u32, path: &str) {
    let total = 10_000;
    let received = udp_delivered(ov, 0, 1, total);
    let share = received as f64 / f64::from(total);
    eprintln!(
        "{path}, {pct} % wire loss: {received} of {total} datagrams delivered ({:.2} %)",
        share * 100.0
    );
    // Without loss hiding about 95 % arrive; one resend round leaves ~0.25 %.
    check(
        ov,
        share >= 0.985,
        &format!(
            "only {:.2} % of the datagrams arrived over the {path} through {pct} % wire loss\n{}",
            share * 100.0,
            where_packets_went(ov)
        ),
    );
}

/// Every place between two hosts that counts a lost packet: each namespace's
/// UDP buffer errors, the links' drops, and each site's own drop and
/// loss-hiding counters.
pub fn where_packets_went(ov: &Overlay) -> String {
    let mut out = String::new();
    for s in &ov.sites {
        for ns in [&s.host_ns, &s.site_ns] {
            let udp = ns
                .exec(&[
                    "nstat",
                    "-asz",
                    "UdpRcvbufErrors",
                    "UdpSndbufErrors",
                    "Udp6RcvbufErrors",
                    "Udp6SndbufErrors",
                    "UdpInErrors",
                    "Udp6InErrors",
                ])
                .unwrap_or_else(|e| e.to_string());
            let links = ns
                .exec(&["ip", "-s", "-o", "link"])
                .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!("== {}\n{udp}{links}\n", ns.name()));
        }
        if let Some(st) = ov.status(s.index) {
            out.push_str(&format!("== {} status\n{st}\n", s.name));
        }
    }
    out
}

/// Sends `total` numbered 1000-byte UDP datagrams from site `a`'s host to
/// site `b`'s at about 40 Mbit/s (far below capacity) and returns how many
/// arrived.
pub fn udp_delivered(ov: &Overlay, a: usize, b: usize, total: u32) -> u64 {
    use std::net::{SocketAddr, UdpSocket};
    let dst = SocketAddr::new(ov.sites[b].host_addr.into(), 9998);
    let rx_ns = ov.sites[b].host_ns.name().to_string();
    let receiver = std::thread::spawn(move || {
        netns::in_netns(&rx_ns, move || {
            let sock = UdpSocket::bind(dst).expect("bind receiver");
            sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = sock.recv(&mut buf) {
                if n >= 4 {
                    seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            seen.len() as u64
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let tx_ns = ov.sites[a].host_ns.name().to_string();
    netns::in_netns(&tx_ns, move || {
        let sock = UdpSocket::bind("[::]:0").expect("bind sender");
        let start = Instant::now();
        let mut payload = [0x5au8; 1000];
        for i in 0..total {
            payload[..4].copy_from_slice(&i.to_be_bytes());
            let _ = sock.send_to(&payload, dst);
            let due = start + Duration::from_micros(200) * (i + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    })
    .expect("sender namespace");
    receiver
        .join()
        .expect("receiver thread")
        .expect("receiver namespace")
}
