//! The Grafana dashboards and alert rules against a real Prometheus scraping
//! a real 3-site overlay: every panel query returns data, every variable
//! query finds its label, the rules pass promtool and evaluate.

mod common;

use on6::demo::overlay::{scrape_config, Overlay};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.display().to_string(),
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ));
        }
    }
    assert!(out.len() >= 4, "dashboards missing");
    out
}

fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("grafana/alerts/on6.rules.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr:").map(|e| e.trim().to_string()))
        .collect()
}

/// Fills in the dashboard variables the way Grafana would with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$job", "on6")
        .replace("$site", ".+")
        .replace("$instance", ".+")
}

#[test]
fn dashboards_are_well_formed() {
    for (file, d) in dashboards() {
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vars, ["datasource", "job", "site", "instance"], "{file}");
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file}");
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{file}: {title} has no description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"].as_str().is_some(),
                "{file}: {title} has no unit"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
            for t in p["targets"].as_array().unwrap() {
                let e = t["expr"].as_str().unwrap();
                assert!(
                    e.contains("$job") && e.contains("$instance"),
                    "{file}: {title}: {e} ignores the variables"
                );
                if e.contains("rate(") {
                    assert!(e.contains("$__rate_interval"), "{file}: {title}: {e}");
                }
            }
        }
    }
}

#[test]
fn alert_rules_pass_promtool() {
    if on6::netns::skip_unless_root(
        "alert_rules_pass_promtool (promtool comes from scripts/setup.sh)",
    ) {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root().join("grafana/alerts/on6.rules.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rule_exprs().len() >= 5);
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query(port: u16, q: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("prometheus");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HTTP/1.0: an answer over 4 KB would otherwise come chunked, which
    // this reader does not decode (it read as no data at all).
    write!(
        s,
        "GET /api/v1/query?query={} HTTP/1.0\r\nHost: localhost\r\n\r\n",
        encode(q)
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn series(v: &serde_json::Value) -> usize {
    v["data"]["result"].as_array().map_or(0, |r| r.len())
}

struct Prometheus(std::process::Child, u16);
impl Prometheus {
    fn start(dir: &Path, ov: &Overlay) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, scrape_config(&ov.sites, "1s")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (installed by scripts/setup.sh)");
        Prometheus(child, port)
    }
}
impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let mut opts = common::options(3);
    opts.expose_metrics = true;
    // Static tunnels for the site prefixes and a DHT overlay beside them: every dashboard has data.
    opts.second_dht = true;
    let Some(ov) = common::build("every_panel_query_returns_data", opts) else {
        return;
    };
    let dir = ov.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let prom = Prometheus::start(&dir, &ov);
    let port = prom.1;

    // Traffic between every pair while Prometheus scrapes.
    for _ in 0..3 {
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    on6::demo::measure_pair(&ov, a, b, 2, 100_000);
                    let dst = on6::demo::overlay::second_host_addr(b);
                    let _ = on6::netns::in_netns(ov.sites[a].host_ns.name(), move || {
                        on6::netns::ping6(dst, on6::netns::PingOpts::default())
                    });
                }
            }
        }
    }
    let all_up = common::wait_until(Duration::from_secs(30), || {
        let v = query(port, "count(on6_build_info)");
        v["data"]["result"][0]["value"][1] == "3"
    });
    assert!(
        all_up,
        "Prometheus does not see 3 sites; log:\n{}",
        std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );

    // The exposition with DHT histograms passes Prometheus' linter too.
    let target = ov.sites[0].metrics_target.expect("management link");
    let mut s = std::net::TcpStream::connect(target).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    assert!(body.contains("on6_dht_resolution_seconds_bucket"), "{body}");
    common::promtool_check_metrics(&body);

    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, d) in dashboards() {
        for var in d["templating"]["list"].as_array().unwrap() {
            let Some(q) = var["query"]["query"].as_str() else {
                continue;
            };
            // label_values(METRIC_SELECTOR, LABEL): the selector must find series carrying LABEL.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let (metric, label) = inner.rsplit_once(',').unwrap();
            let v = query(port, &substitute(metric.trim()));
            let has = v["data"]["result"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["metric"][label.trim()].is_string()));
            if !has {
                failures.push(format!("{file}: variable {}: {q}", var["name"]));
            }
            checked += 1;
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = substitute(t["expr"].as_str().unwrap());
                let ok =
                    common::wait_until(Duration::from_secs(15), || series(&query(port, &expr)) > 0);
                if !ok {
                    failures.push(format!(
                        "{file}: panel {:?}: {expr} -> {}",
                        p["title"],
                        query(port, &expr)
                    ));
                }
                checked += 1;
            }
        }
    }
    for expr in rule_exprs() {
        let v = query(port, &expr);
        if v["status"] != "success" {
            failures.push(format!("alert rule {expr}: {v}"));
        }
        checked += 1;
    }
    eprintln!("checked {checked} queries against Prometheus");
    assert!(
        failures.is_empty(),
        "queries without data:\n{}",
        failures.join("\n")
    );
}
