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
