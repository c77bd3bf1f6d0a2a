//! The `on6` command line as an operator uses it: CA and certificates,
//! config checking with errors that name the key, clean shutdown on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn on6(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_on6"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running on6");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct TempDir(PathBuf);
impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "on6-cli-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

const SITE: &str = r#"[site]
name = "site-a"
prefix = "fd6e:0:a::/48"
ca = "ca.pem"
cert = "site-a.pem"
key = "site-a.key"

[[slave]]
kind = "gateway"
routes = ["fd6e::/32"]
"#;

#[test]
fn ca_issue_and_check_config() {
    let dir = TempDir::new();
    let d = dir.0.to_str().unwrap();
    let (ok, out, err) = on6(&["ca", "init", "--dir", d]);
    assert!(ok, "{out}{err}");
    assert_eq!(mode(&dir.0.join("ca.key")), 0o600);
    let (ok, _, err) = on6(&["ca", "init", "--dir", d]);
    assert!(!ok && err.contains("refusing to overwrite"), "{err}");
    let (ok, out, err) = on6(&[
        "ca",
        "issue",
        "--dir",
        d,
        "--name",
        "site-a",
        "--role",
        "master",
        "--prefix",
        "fd6e:0:a::/48",
    ]);
    assert!(ok && out.contains("serial"), "{out}{err}");
    assert_eq!(mode(&dir.0.join("site-a.key")), 0o600);
    let (ok, _, err) = on6(&[
        "ca", "issue", "--dir", d, "--name", "Bad Name", "--role", "slave",
    ]);
    assert!(!ok && err.contains("invalid node name"), "{err}");

    let cfg = dir.0.join("site-a.toml");
    std::fs::write(&cfg, SITE).unwrap();
    let (ok, out, err) = on6(&["check-config", cfg.to_str().unwrap()]);
    assert!(ok && out.contains("ok"), "{out}{err}");

    let bad = |text: String, expect: &[&str]| {
        std::fs::write(&cfg, text).unwrap();
        let (ok, out, err) = on6(&["check-config", cfg.to_str().unwrap()]);
        assert!(!ok, "accepted a bad file: {out}");
        for e in expect {
            assert!(err.contains(e), "error should mention {e:?}: {err}");
        }
    };
    bad(SITE.replace("routes =", "routez ="), &["routez"]);
    bad(
        SITE.replace("name = \"site-a\"", "name = \"site-a\"\nmtu = 100"),
        &["site.mtu", "100"],
    );
    // The certificate covers fd6e:0:a::/48 only.
    bad(
        SITE.replace("fd6e:0:a::/48", "fd6e:0:b::/48"),
        &["does not cover", "fd6e:0:b::/48"],
    );
    bad(SITE.replace("site-a.pem", "missing.pem"), &["missing.pem"]);
    bad("[site\nname=".into(), &["site-a.toml"]);

    // Revocation appends the certificate's serial.
    let list = dir.0.join("revoked.txt");
    let (ok, out, err) = on6(&[
        "ca",
        "revoke",
        "--cert",
        dir.0.join("site-a.pem").to_str().unwrap(),
        "--list",
        list.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(std::fs::read_to_string(&list).unwrap().contains("site-a"));
}

#[test]
fn sigterm_removes_tun_and_status_shows_routes_and_peers() {
    let Some(mut ov) = common::build("sigterm_clean_shutdown", common::options(2)) else {
        return;
    };
    let (ok, out, err) = on6(&[
        "status",
        "--socket",
        ov.sites[0].admin_socket.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("fd6e:0:1::/48") && out.contains("fd6e:0:2::/48"),
        "routes missing from status:\n{out}"
    );
    assert!(
        out.contains("site-2") && out.contains(" up "),
        "peer missing from status:\n{out}"
    );
    let (ok, json, _) = on6(&[
        "status",
        "--json",
        "--socket",
        ov.sites[0].admin_socket.to_str().unwrap(),
    ]);
    assert!(ok && serde_json::from_str::<serde_json::Value>(&json).is_ok());

    let ns = ov.sites[0].site_ns.name().to_string();
    assert!(ov.sites[0]
        .site_ns
        .exec(&["ip", "link", "show", "on6gw"])
        .is_ok());
    let status = ov.terminate("site-1", Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "site-1 did not exit cleanly on SIGTERM: {status:?}"
    );
    let link = ov.sites[0].site_ns.exec(&["ip", "link", "show", "on6gw"]);
    assert!(link.is_err(), "TUN still present in {ns} after shutdown");
    assert!(
        !ov.sites[0].admin_socket.exists(),
        "admin socket left behind"
    );
    // Site 2 withdraws site 1's prefix once the tunnel is gone, and answers unreachable.
    let gone = common::wait_until(Duration::from_secs(10), || {
        ov.status(1).is_some_and(|st| {
            st["master"]["routes"]
                .as_array()
                .is_some_and(|r| !r.iter().any(|r| r[0] == "fd6e:0:1::/48"))
        })
    });
    common::check(
        &ov,
        gone,
        "site-2 withdrew site-1's prefix after it shut down",
    );

    // Restarted, site 1 is dialed again (the tunnel re-establishes) and traffic flows.
    ov.start_site(0, Path::new(env!("CARGO_BIN_EXE_on6")), "info")
        .expect("restart site-1");
    ov.wait_ready(Duration::from_secs(20))
        .expect("site-1 back with its peers");
    let r = on6::demo::measure_pair(&ov, 1, 0, 3, 1_000_000);
    common::check(
        &ov,
        r.pings_received >= 2 && matches!(r.tcp, Ok((_, true, true))),
        "traffic flows again after the restart",
    );
}
