//! Linux network-namespace plumbing for integration tests and `on6 demo`.
//!
//! Everything privileged (namespaces, veths, `setns`, `/proc/sys` writes) is
//! kept in this one module so the rest of on6 stays ordinary user-space code.
//! Namespaces are managed through `ip netns` so they are visible to `ip` and
//! are removed again by the [`Netns`] guard's `Drop`.
//!
//! Traffic generators (ICMPv6 echo, TCP transfer with SHA-256 integrity) live
//! in [`traffic`] and are re-exported here; they use only std sockets so they
//! work from any thread that has entered a namespace with [`in_netns`].
//!
//! ```no_run
//! # use on6::netns::*;
//! # use std::time::Duration;
//! # fn demo() -> Result<(), NetnsError> {
//! let a = Netns::create("a")?;
//! let b = Netns::create("b")?;
//! let (ia, ib) = (unique_ifname("va"), unique_ifname("vb"));
//! veth(&a, &ia, &b, &ib)?;
//! a.addr(&ia, "fd00:1::1/64")?;
//! b.addr(&ib, "fd00:1::2/64")?;
//!
//! // The sink binds inside `b` (on its own thread) and reports back on join.
//! let sink = spawn_sink(b.name(), "[fd00:1::2]:0".parse().unwrap(), Duration::from_secs(30))?;
//! let dst = sink.local_addr();
//! let sent = in_netns(a.name(), move || tcp_send(dst, 20 << 20, 7, Duration::from_secs(30)))??;
//! let got = sink.join()?;
//! assert_eq!(sent.sha256, got.sha256);
//!
//! let outcome = in_netns(a.name(), || ping6("fd00:1::2".parse().unwrap(), PingOpts::default()))??;
//! assert!(matches!(outcome, PingOutcome::Reply { .. }));
//! # Ok(()) }
//! ```

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod traffic;

pub use traffic::{
    mbit_per_s, pattern_sha256, ping6, ping_many, spawn_sink, tcp_send, IcmpErrorKind, PingOpts,
    PingOutcome, PingStats, SendReport, SinkHandle, SinkReport, TcpSink,
};

/// Where `ip netns add` bind-mounts namespace handles.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Linux limit for interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Errors from namespace management and traffic helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started at all (e.g. `ip` missing).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    /// Opening or entering a namespace failed.
    #[error("cannot enter network namespace `{ns}`: {source}")]
    Enter {
        ns: String,
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Bad name, key or size passed in by the caller.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The closure run inside a namespace thread panicked.
    #[error("thread in network namespace `{ns}` panicked: {message}")]
    Panicked { ns: String, message: String },
    /// A deadline passed before the operation completed.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl NetnsError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        NetnsError::Io {
            context: context.into(),
            source,
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_counter() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// True when running as root (euid 0), which namespaces and raw sockets need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For tests: prints a skip notice and returns true when not root.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {test}: needs root for network namespaces");
    true
}

/// A process-unique interface name of at most 15 bytes: `{tag}-{pid}{n}`.
///
/// Interface names only need to be unique inside one namespace, but veths
/// are created via the root namespace's netlink socket and tests run in
/// parallel, so unique names avoid any surprise. `tag` is cut to 4 safe
/// characters; the pid's low 16 bits and a 24-bit counter (both hex) follow.
pub fn unique_ifname(tag: &str) -> String {
    let mut t: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(4)
        .collect();
    if t.is_empty() {
        t.push_str("if");
    }
    let pid = std::process::id() & 0xffff;
    let n = next_counter() & 0xff_ffff;
    format!("{t}-{pid:04x}{n:x}")
}

fn check_ifname(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(NetnsError::Invalid(format!(
            "interface name `{name}` (must be 1..=15 bytes, no '/', ':' or spaces)"
        )))
    }
}

pub(crate) fn check_ns_name(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(NetnsError::Invalid(format!("namespace name `{name}`")))
    }
}

fn netns_path(name: &str) -> String {
    format!("{NETNS_RUN_DIR}/{name}")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; stdout on success, command + stderr otherwise.
fn run(cmd: &mut Command) -> Result<String, NetnsError> {
    let desc = describe(cmd);
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::Command {
            cmd: desc,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run(Command::new("ip").args(args))
}

/// Serializes `ip netns add/del` in this process: the first `add` on a
/// machine sets up the `/var/run/netns` mount, which races with itself.
static NETNS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ip_netns_locked(args: &[&str]) -> Result<String, NetnsError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    ip(args)
}

/// `now + d`, saturating (a year) instead of panicking on huge timeouts.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

/// Guard for a named network namespace; `Drop` deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `{prefix}-{pid}-{counter}` with `lo` up.
    pub fn create(prefix: &str) -> Result<Netns, NetnsError> {
        check_ns_name(prefix)?;
        let name = format!("{prefix}-{}-{}", std::process::id(), next_counter());
        ip_netns_locked(&["netns", "add", &name])?;
        // From here on the guard owns the namespace, so a failure below
        // still removes it.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name as known to `ip netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip netns exec NAME args...` and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String, NetnsError> {
        if args.is_empty() {
            return Err(NetnsError::Invalid("exec needs a program".into()));
        }
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Runs `ip -n NAME args...` (cheaper than `exec`: no mount namespace).
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Adds an address; IPv6 addresses get `nodad` so they are usable at once.
    pub fn addr(&self, ifname: &str, cidr: &str) -> Result<(), NetnsError> {
        check_ifname(ifname)?;
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Runs `ip -n NAME route args...`, e.g. `["add", "default", "via", "fd00:1::1"]`.
    pub fn route(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut v = vec!["route"];
        v.extend_from_slice(args);
        self.ip(&v).map(drop)
    }

    /// Brings an interface up.
    pub fn link_up(&self, ifname: &str) -> Result<(), NetnsError> {
        check_ifname(ifname)?;
        self.ip(&["link", "set", ifname, "up"]).map(drop)
    }

    /// Sets an interface's MTU.
    pub fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<(), NetnsError> {
        check_ifname(ifname)?;
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])
            .map(drop)
    }

    /// Writes a sysctl inside the namespace.
    ///
    /// Done by writing `/proc/sys/...` from a thread that entered the
    /// namespace (`/proc/sys/net` follows the calling thread's netns), so the
    /// `sysctl` binary (procps) is not needed.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = sysctl_path(key)?;
        let value = value.to_string();
        in_netns(&self.name, move || {
            std::fs::write(&path, value.as_bytes())
                .map_err(|e| NetnsError::io(format!("write {path}"), e))
        })?
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> Result<String, NetnsError> {
        let path = sysctl_path(key)?;
        in_netns(&self.name, move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| NetnsError::io(format!("read {path}"), e))
        })?
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        in_netns(&self.name, f)
    }

    /// Spawns `cmd` inside the namespace, keeping its env, cwd and stdio.
    ///
    /// Rather than rebuilding it as `ip netns exec NAME ...` (std cannot read
    /// back stdio settings), this adds a `pre_exec` hook that does what
    /// `ip netns exec` does in the child: `setns` into the namespace, then
    /// (best effort) a private mount namespace with this netns's `/sys`.
    /// The hook stays on `cmd`; don't reuse one `Command` for two namespaces.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let fd: OwnedFd = File::open(netns_path(&self.name))?.into();
        let sys_src = CString::new(self.name.as_str())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the hook only makes raw syscalls (setns/unshare/mount/
        // umount2) on data prepared before fork; it allocates nothing and
        // touches no locks, so it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::unshare(libc::CLONE_NEWNS) == 0 {
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_SLAVE | libc::MS_REC,
                        std::ptr::null(),
                    );
                    libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
                    libc::mount(
                        sys_src.as_ptr(),
                        c"/sys".as_ptr(),
                        c"sysfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth ends inside it.
        if let Err(e) = ip_netns_locked(&["netns", "del", &self.name]) {
            tracing::warn!(ns = %self.name, error = %e, "failed to delete network namespace");
        }
    }
}

fn sysctl_path(key: &str) -> Result<String, NetnsError> {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    let bad = rel.is_empty()
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(NetnsError::Invalid(format!("sysctl key `{key}`")));
    }
    Ok(format!("/proc/sys/{rel}"))
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`, both up.
///
/// The ends are created directly in their namespaces, so the names never
/// exist (or collide) in the root namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), NetnsError> {
    check_ifname(a_if)?;
    check_ifname(b_if)?;
    ip(&[
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ])?;
    a.link_up(a_if)?;
    b.link_up(b_if)
}

/// Moves the calling thread into namespace `ns_name` (for threads the caller
/// owns, e.g. one that then builds a current-thread tokio runtime).
///
/// Only network state changes; sockets opened afterwards on this thread
/// belong to the namespace. There is no way back short of entering another
/// namespace, so use a dedicated thread.
pub fn enter_netns(ns_name: &str) -> Result<(), NetnsError> {
    check_ns_name(ns_name)?;
    let enter_err = |source| NetnsError::Enter {
        ns: ns_name.to_string(),
        source,
    };
    let file = File::open(netns_path(ns_name)).map_err(enter_err)?;
    // SAFETY: plain syscall on a valid, open fd we own for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(enter_err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a new thread that has entered `ns_name`, returning its result.
///
/// A panic in `f` comes back as [`NetnsError::Panicked`] with its message.
pub fn in_netns<F, R>(ns_name: &str, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    check_ns_name(ns_name)?;
    let ns = ns_name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<R, NetnsError> {
            enter_netns(&ns)?;
            Ok(f())
        })
        .map_err(|e| NetnsError::io("spawn namespace thread", e))?;
    join_thread(ns_name, handle)?
}

pub(crate) fn join_thread<T>(
    ns: &str,
    handle: std::thread::JoinHandle<T>,
) -> Result<T, NetnsError> {
    handle.join().map_err(|payload| NetnsError::Panicked {
        ns: ns.to_string(),
        message: panic_message(payload.as_ref()),
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    //! Real-namespace tests; they skip (with a message) when not root.
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn ns_exists(name: &str) -> bool {
        std::path::Path::new(&netns_path(name)).exists()
            || ip(&["netns", "list"])
                .unwrap()
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
    }

    /// a(fd00:1::1) <-> b(fd00:1::2)
    fn pair() -> (Netns, Netns, String, String) {
        let a = Netns::create("t-a").unwrap();
        let b = Netns::create("t-b").unwrap();
        let (ia, ib) = (unique_ifname("ta"), unique_ifname("tb"));
        veth(&a, &ia, &b, &ib).unwrap();
        a.addr(&ia, "fd00:1::1/64").unwrap();
        b.addr(&ib, "fd00:1::2/64").unwrap();
        (a, b, ia, ib)
    }

    /// Pings `dst` from `ns` until it answers. A fresh veth drops what it is
    /// given until the kernel's link watcher activates it, which can take
    /// seconds while other tests hold the rtnl lock; a first ping there can
    /// fail with no reply or "address unreachable". Bounded generously.
    fn first_reply(ns: &Netns, dst: Ipv6Addr) -> PingOutcome {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let o = ns
                .run(move || ping6(dst, PingOpts::default()))
                .unwrap()
                .unwrap();
            if matches!(o, PingOutcome::Reply { .. }) || Instant::now() >= until {
                return o;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    #[test]
    fn names_and_arguments() {
        let names: Vec<String> = (0..100).map(|_| unique_ifname("veth-long-tag")).collect();
        assert!(names
            .iter()
            .all(|n| n.len() <= IFNAME_MAX && n.starts_with("veth-")));
        let mut d = names.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), names.len());
        assert!(unique_ifname("").starts_with("if-"));
        assert!(unique_ifname("ä/ b").len() <= IFNAME_MAX);
        assert!(matches!(
            check_ifname("0123456789abcdef"),
            Err(NetnsError::Invalid(_))
        ));
        assert!(matches!(
            in_netns("../etc", || ()),
            Err(NetnsError::Invalid(_))
        ));
        assert!(matches!(Netns::create("a/b"), Err(NetnsError::Invalid(_))));
        assert!(sysctl_path("net..x").is_err() && sysctl_path("").is_err());
        assert!(sysctl_path("../../etc/passwd").is_err());
        assert_eq!(
            sysctl_path("net.ipv6.conf.all.forwarding").unwrap(),
            "/proc/sys/net/ipv6/conf/all/forwarding"
        );
    }

    #[test]
    fn guard_and_thread_errors() {
        if skip_unless_root("guard_and_thread_errors") {
            return;
        }
        assert!(matches!(
            in_netns("on6-no-such-ns", || ()),
            Err(NetnsError::Enter { .. })
        ));
        let ns = Netns::create("t-g").unwrap();
        let name = ns.name().to_string();
        assert!(ns_exists(&name));
        match ns.run(|| panic!("boom inside")) {
            Err(NetnsError::Panicked { message, .. }) => assert!(message.contains("boom inside")),
            other => panic!("unexpected {other:?}"),
        }
        let err = ns
            .exec(&["ip", "link", "show", "nonexistent0"])
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ip netns exec") && text.contains("nonexistent0"),
            "{text}"
        );
        // `lo` is up; a huge timeout must not overflow.
        let r = ns.run(|| {
            ping6(
                Ipv6Addr::LOCALHOST,
                PingOpts {
                    timeout: Duration::MAX,
                    ..Default::default()
                },
            )
        });
        assert!(matches!(r, Ok(Ok(PingOutcome::Reply { .. }))), "{r:?}");
        // A fresh namespace has no routes: sending fails locally.
        let r = ns
            .run(|| ping6(ip6("fd00:9::1"), PingOpts::default()))
            .unwrap();
        assert!(r.is_err(), "{r:?}");
        drop(ns);
        assert!(!ns_exists(&name));

        // The guard also cleans up while unwinding.
        let seen = std::sync::Mutex::new(String::new());
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ns = Netns::create("t-p").unwrap();
            *seen.lock().unwrap() = ns.name().to_string();
            panic!("test panic with a live namespace");
        }));
        assert!(res.is_err());
        let name = seen.lock().unwrap().clone();
        assert!(!name.is_empty() && !ns_exists(&name));
    }

    #[test]
    fn veth_ping_spawn_and_tcp() {
        if skip_unless_root("veth_ping_spawn_and_tcp") {
            return;
        }
        let (a, b, ia, _ib) = pair();

        let out = a.exec(&["ip", "-6", "addr", "show", "dev", &ia]).unwrap();
        assert!(out.contains("fd00:1::1/64"), "{out}");

        // spawn keeps env and stdio and sees this namespace's /sys.
        let child = a
            .spawn(
                std::process::Command::new("sh")
                    .args([
                        "-c",
                        &format!("echo $ON6_T; cat /sys/class/net/{ia}/mtu; ip -o -6 addr"),
                    ])
                    .env("ON6_T", "kept")
                    .stdout(std::process::Stdio::piped()),
            )
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.starts_with("kept\n1500\n") && text.contains("fd00:1::1"),
            "{text}"
        );

        let r = first_reply(&a, ip6("fd00:1::2"));
        assert!(
            matches!(r, PingOutcome::Reply { from, .. } if from == ip6("fd00:1::2")),
            "{r:?}"
        );

        // Bound source, bigger payload, ping_many.
        let stats = a
            .run(|| {
                let opts = PingOpts {
                    src: Some(ip6("fd00:1::1")),
                    payload_len: 1400,
                    ..Default::default()
                };
                ping_many(ip6("fd00:1::2"), 3, Duration::from_millis(50), opts)
            })
            .unwrap();
        assert_eq!((stats.sent, stats.received), (3, 3), "{stats:?}");
        assert!(stats.p50().is_some() && stats.min() <= stats.max());

        // Larger than the link MTU with DONTFRAG: refused locally.
        let r = a
            .run(|| {
                ping6(
                    ip6("fd00:1::2"),
                    PingOpts {
                        payload_len: 2000,
                        ..Default::default()
                    },
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(r, PingOutcome::LocalTooBig { mtu: Some(1500) });

        // Nobody answers for fd00:1::3 within the timeout.
        let r = a
            .run(|| {
                ping6(
                    ip6("fd00:1::3"),
                    PingOpts {
                        timeout: Duration::from_millis(300),
                        ..Default::default()
                    },
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(r, PingOutcome::Timeout);

        // 20 MB TCP transfer with integrity.
        const N: u64 = 20 * 1000 * 1000;
        let t = Duration::from_secs(60);
        let sink = spawn_sink(b.name(), SocketAddrV6::new(ip6("fd00:1::2"), 0, 0, 0), t).unwrap();
        let dst = sink.local_addr();
        assert_ne!(dst.port(), 0);
        let sent = a.run(move || tcp_send(dst, N, 42, t)).unwrap().unwrap();
        let got = sink.join().unwrap();
        assert_eq!((sent.bytes, got.bytes), (N, N));
        assert_eq!(sent.sha256, got.sha256);
        assert_eq!(got.sha256, pattern_sha256(N, 42));
        assert_eq!(got.peer, sent.local);
        assert_eq!(got.peer.ip(), std::net::IpAddr::V6(ip6("fd00:1::1")));
        eprintln!(
            "20 MB in {:?}: {:.0} Mbit/s",
            sent.elapsed,
            mbit_per_s(N, sent.elapsed)
        );

        // The sink is bound in b: nothing listens on that port in a.
        let r = a
            .run(move || tcp_send(SocketAddrV6::new(ip6("::1"), dst.port(), 0, 0), 1, 1, t))
            .unwrap();
        assert!(r.is_err());
        // Bind failure in the sink thread comes back from spawn_sink.
        assert!(spawn_sink(a.name(), SocketAddrV6::new(ip6("fd00:1::2"), 0, 0, 0), t).is_err());
    }

    #[test]
    fn router_errors() {
        if skip_unless_root("router_errors") {
            return;
        }
        // a(fd00:a::2) -- (fd00:a::1)r(fd00:b::1) -- (fd00:b::2)b
        let a = Netns::create("t-ra").unwrap();
        let r = Netns::create("t-rr").unwrap();
        let b = Netns::create("t-rb").unwrap();
        let (a0, r0, r1, b0) = (
            unique_ifname("a"),
            unique_ifname("r"),
            unique_ifname("r"),
            unique_ifname("b"),
        );
        veth(&a, &a0, &r, &r0).unwrap();
        veth(&r, &r1, &b, &b0).unwrap();
        a.addr(&a0, "fd00:a::2/64").unwrap();
        r.addr(&r0, "fd00:a::1/64").unwrap();
        r.addr(&r1, "fd00:b::1/64").unwrap();
        b.addr(&b0, "fd00:b::2/64").unwrap();
        a.route(&["add", "default", "via", "fd00:a::1"]).unwrap();
        b.route(&["add", "fd00:a::/64", "via", "fd00:b::1"])
            .unwrap();

        let key = "net.ipv6.conf.all.forwarding";
        let root_before =
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap();
        r.sysctl(key, "1").unwrap();
        assert_eq!(r.read_sysctl(key).unwrap(), "1");
        assert_eq!(a.read_sysctl(key).unwrap(), "0");
        let root_after = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap();
        assert_eq!(
            root_before, root_after,
            "sysctl leaked into the root namespace"
        );
        // Small MTU on the far link for Packet Too Big.
        r.set_mtu(&r1, 1280).unwrap();
        b.set_mtu(&b0, 1280).unwrap();

        let router = ip6("fd00:a::1");
        let pa = |dst: &str, opts: PingOpts| {
            let dst = ip6(dst);
            a.run(move || ping6(dst, opts)).unwrap().unwrap()
        };
        let o = first_reply(&a, ip6("fd00:b::2"));
        assert!(
            matches!(o, PingOutcome::Reply { from, .. } if from == ip6("fd00:b::2")),
            "{o:?}"
        );

        let o = pa(
            "fd00:b::2",
            PingOpts {
                hop_limit: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(
            o,
            PingOutcome::Error {
                from: router,
                kind: IcmpErrorKind::TimeExceeded { code: 0 }
            }
        );

        let o = pa("fd00:ff::1", PingOpts::default());
        assert_eq!(
            o,
            PingOutcome::Error {
                from: router,
                kind: IcmpErrorKind::DestinationUnreachable { code: 0 }
            }
        );

        let o = pa(
            "fd00:b::2",
            PingOpts {
                payload_len: 1400,
                ..Default::default()
            },
        );
        assert_eq!(
            o,
            PingOutcome::Error {
                from: router,
                kind: IcmpErrorKind::PacketTooBig { mtu: 1280 }
            }
        );
        // The kernel learned the PMTU, so the next oversize probe is refused locally.
        let o = pa(
            "fd00:b::2",
            PingOpts {
                payload_len: 1400,
                ..Default::default()
            },
        );
        assert_eq!(o, PingOutcome::LocalTooBig { mtu: Some(1280) });
    }
}
