//! Prometheus metrics of a running overlay: a clean exposition (promtool),
//! counters that move with traffic, and a real Prometheus server scraping them.

mod common;

use on6::demo::overlay::{Overlay, METRICS_PORT};
use on6::netns::{self, PingOpts};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn http_get(ns: &str, port: u16, path: &str) -> String {
    let path = path.to_string();
    netns::in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

fn scrape(ov: &Overlay, i: usize) -> String {
    let resp = http_get(ov.sites[i].site_ns.name(), METRICS_PORT, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Sum of the samples of `name` whose labels contain every `label="value"` given.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_are_clean_and_move_with_traffic() {
    let mut opts = common::options(2);
    opts.remote_gateways = vec![1];
    let Some(ov) = common::build("metrics_move_with_traffic", opts) else {
        return;
    };
    let before = scrape(&ov, 0);

    // The exposition passes Prometheus' own linter.
    common::promtool_check_metrics(&before);

    const N: u32 = 20;
    let dst = ov.sites[1].host_addr;
    let stats = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping_many(dst, N, Duration::from_millis(20), PingOpts::default())
    })
    .unwrap();
    assert_eq!(stats.received, N);
    let after = scrape(&ov, 0);

    let rose =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    assert!(
        rose(
            "on6_slave_packets_total",
            &["kind=\"gateway\"", "direction=\"in\""]
        ) >= N as f64
    );
    assert!(
        rose(
            "on6_slave_packets_total",
            &["kind=\"tunnel\"", "direction=\"out\""]
        ) >= N as f64
    );
    assert!(
        rose(
            "on6_slave_packets_total",
            &["kind=\"tunnel\"", "direction=\"in\""]
        ) >= N as f64
    );
    assert!(
        rose(
            "on6_peer_packets_total",
            &["peer=\"site-2\"", "direction=\"out\""]
        ) >= N as f64
    );
    assert!(rose("on6_tun_packets_total", &["direction=\"in\""]) >= N as f64);
    assert_eq!(sample(&after, "on6_peer_up", &["peer=\"site-2\""]), 1.0);
    assert!(sample(&after, "on6_peer_rtt_seconds", &["peer=\"site-2\""]) > 0.0);
    assert_eq!(sample(&after, "on6_routes", &["kind=\"gateway\""]), 1.0);
    assert_eq!(sample(&after, "on6_build_info", &[]), 1.0);
    assert!(after.contains("on6_drops_total{reason=\"spoofed_source\"}"));

    // A slave in its own process serves its own metrics.
    let gw_ns = ov.sites[1]
        .gateway_ns
        .as_ref()
        .map(|g| g.0.name().to_string())
        .unwrap();
    let resp = http_get(&gw_ns, METRICS_PORT, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        sample(&resp, "on6_tun_packets_total", &["direction=\"out\""]) >= N as f64,
        "{resp}"
    );
    assert!(
        sample(&resp, "on6_build_info", &["site=\"site-2-gw\""]) == 1.0,
        "{resp}"
    );

    let other = http_get(ov.sites[0].site_ns.name(), METRICS_PORT, "/other");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn real_prometheus_scrapes_the_site() {
    let Some(ov) = common::build("real_prometheus_scrapes", common::options(2)) else {
        return;
    };
    let dir = ov.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: on6\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n        labels:\n          site: site-1\n")).unwrap();
    let ns = ov.sites[0].site_ns.name().to_string();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, "prometheus"])
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (installed by scripts/setup.sh)");
    let _prometheus = Killed(child);
    let dst = ov.sites[1].host_addr;
    netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping_many(dst, 5, Duration::from_millis(20), PingOpts::default())
    })
    .unwrap();
    let query = "/api/v1/query?query=on6_slave_packets_total%7Bkind%3D%22gateway%22%2Cdirection%3D%22in%22%7D";
    let mut last = String::new();
    let found = common::wait_until(Duration::from_secs(30), || {
        last = std::panic::catch_unwind(|| http_get(&ns, 9090, query)).unwrap_or_default();
        last.contains("\"status\":\"success\"")
            && last.contains("\"site\":\"site-1\"")
            && last.contains("on6_slave_packets_total")
    });
    assert!(
        found,
        "Prometheus never returned the series; last answer:\n{last}\nlog:\n{}",
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );
    let value: f64 = last
        .rsplit(",\"")
        .next()
        .and_then(|v| v.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        value >= 5.0,
        "gateway packets in Prometheus: {value}; {last}"
    );
}
