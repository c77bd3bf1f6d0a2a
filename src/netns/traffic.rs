//! Blocking IPv6 traffic generators with timeouts: ICMPv6 echo over a raw
//! socket and a TCP bulk transfer whose integrity is checked with SHA-256.
//!
//! Everything here opens sockets in the *calling thread's* network
//! namespace, so call it from inside [`in_netns`](super::in_netns) (or use
//! [`spawn_sink`], which does that for the receiving side).

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};

use super::{check_ns_name, deadline_after, enter_netns, join_thread, NetnsError};

const ICMP6_DST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_PARAM_PROB: u8 = 4;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
const NEXT_HEADER_ICMPV6: u8 = 58;
/// Largest echo payload that fits an IPv6 packet without jumbograms.
const MAX_PAYLOAD: usize = 65535 - 8;
/// Chunk size for generating and hashing the TCP stream.
const CHUNK: usize = 64 * 1024;

static IDENT: AtomicU16 = AtomicU16::new(0);

/// A process-unique echo identifier so concurrent pingers don't match
/// each other's replies.
fn next_ident() -> u16 {
    (std::process::id() as u16)
        .wrapping_mul(0x9e37)
        .wrapping_add(IDENT.fetch_add(1, Ordering::Relaxed))
}

/// Options for [`ping6`].
#[derive(Debug, Clone)]
pub struct PingOpts {
    /// Unicast hop limit; `None` keeps the system default.
    pub hop_limit: Option<u32>,
    /// Echo payload bytes after the 8-byte ICMPv6 header.
    pub payload_len: usize,
    /// How long to wait for a matching reply or error.
    pub timeout: Duration,
    /// Echo identifier; `Default` picks a process-unique one.
    pub ident: u16,
    /// Echo sequence number.
    pub seq: u16,
    /// Source address to bind, if any.
    pub src: Option<Ipv6Addr>,
    /// Scope (interface index) for link-local destinations; 0 otherwise.
    pub scope_id: u32,
}

impl Default for PingOpts {
    fn default() -> Self {
        PingOpts {
            hop_limit: None,
            payload_len: 56,
            timeout: Duration::from_secs(3),
            ident: next_ident(),
            seq: 1,
            src: None,
            scope_id: 0,
        }
    }
}

/// Which ICMPv6 error came back for our echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpErrorKind {
    DestinationUnreachable { code: u8 },
    PacketTooBig { mtu: u32 },
    TimeExceeded { code: u8 },
    Other { ty: u8, code: u8 },
}

/// Result of one echo request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOutcome {
    /// Echo reply with our ident+seq.
    Reply { from: Ipv6Addr, rtt: Duration },
    /// ICMPv6 error quoting our echo request.
    Error { from: Ipv6Addr, kind: IcmpErrorKind },
    /// The local kernel refused to send it unfragmented (`EMSGSIZE`); `mtu`
    /// is the path MTU it knows for the destination, if readable.
    LocalTooBig { mtu: Option<u32> },
    /// Nothing matching arrived before the timeout.
    Timeout,
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's path MTU towards `dst`, read via a connected UDP socket
/// (connecting UDP sends nothing).
fn path_mtu(dst: Ipv6Addr, scope_id: u32) -> Option<u32> {
    let s = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)).ok()?;
    s.connect(SocketAddrV6::new(dst, 9, 0, scope_id)).ok()?;
    let mtu = getsockopt_int(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_MTU).ok()?;
    u32::try_from(mtu).ok()
}

/// Sends one ICMPv6 echo request and waits for the matching reply or error.
///
/// Uses a raw ICMPv6 socket (the kernel fills in the checksum) with
/// `IPV6_DONTFRAG`, so oversize probes leave whole and provoke Packet Too Big
/// instead of being fragmented locally. The socket is not connected because
/// that would filter out errors sent by routers on the path.
pub fn ping6(dst: Ipv6Addr, opts: PingOpts) -> Result<PingOutcome, NetnsError> {
    if opts.payload_len > MAX_PAYLOAD {
        return Err(NetnsError::Invalid(format!(
            "ping payload {} > {MAX_PAYLOAD}",
            opts.payload_len
        )));
    }
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(|e| NetnsError::io("open raw ICMPv6 socket", e))?;
    if let Some(h) = opts.hop_limit {
        sock.set_unicast_hops_v6(h)
            .and_then(|_| sock.set_multicast_hops_v6(h))
            .map_err(|e| NetnsError::io(format!("set hop limit {h}"), e))?;
    }
    setsockopt_int(sock.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
        .map_err(|e| NetnsError::io("set IPV6_DONTFRAG", e))?;
    if let Some(src) = opts.src {
        sock.bind(&SocketAddrV6::new(src, 0, 0, opts.scope_id).into())
            .map_err(|e| NetnsError::io(format!("bind ping source {src}"), e))?;
    }
    // A raw socket is still a datagram fd: std's UdpSocket gives us safe
    // send_to/recv_from with timeouts (port 0 = "use the socket's protocol").
    let sock: UdpSocket = sock.into();

    let mut pkt = Vec::with_capacity(8 + opts.payload_len);
    pkt.extend_from_slice(&[ICMP6_ECHO_REQUEST, 0, 0, 0]);
    pkt.extend_from_slice(&opts.ident.to_be_bytes());
    pkt.extend_from_slice(&opts.seq.to_be_bytes());
    pkt.extend((0..opts.payload_len).map(|i| i as u8));

    let target = SocketAddrV6::new(dst, 0, 0, opts.scope_id);
    let start = Instant::now();
    if let Err(e) = sock.send_to(&pkt, target) {
        if e.raw_os_error() == Some(libc::EMSGSIZE) {
            return Ok(PingOutcome::LocalTooBig {
                mtu: path_mtu(dst, opts.scope_id),
            });
        }
        return Err(NetnsError::io(format!("send echo request to {dst}"), e));
    }

    let deadline = start
        .checked_add(opts.timeout)
        .unwrap_or_else(|| deadline_after(opts.timeout));
    // Errors quote up to 1280 bytes; replies echo our whole payload.
    let mut buf = vec![0u8; (opts.payload_len + 8).max(2048)];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(PingOutcome::Timeout);
        }
        sock.set_read_timeout(Some(deadline - now))
            .map_err(|e| NetnsError::io("set ping read timeout", e))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(NetnsError::io("receive ICMPv6", e)),
        };
        let from = match from {
            SocketAddr::V6(a) => *a.ip(),
            SocketAddr::V4(_) => continue,
        };
        let rtt = start.elapsed();
        if let Some(outcome) = classify(&buf[..n], from, rtt, dst, opts.ident, opts.seq) {
            return Ok(outcome);
        }
    }
}

/// Interprets one received ICMPv6 message; `None` when it isn't about our probe.
fn classify(
    msg: &[u8],
    from: Ipv6Addr,
    rtt: Duration,
    dst: Ipv6Addr,
    ident: u16,
    seq: u16,
) -> Option<PingOutcome> {
    if msg.len() < 8 {
        return None;
    }
    let (ty, code) = (msg[0], msg[1]);
    let echo_ids = |m: &[u8]| {
        (
            u16::from_be_bytes([m[4], m[5]]),
            u16::from_be_bytes([m[6], m[7]]),
        )
    };
    match ty {
        ICMP6_ECHO_REPLY => {
            (echo_ids(msg) == (ident, seq)).then_some(PingOutcome::Reply { from, rtt })
        }
        ICMP6_DST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED | ICMP6_PARAM_PROB => {
            let (qdst, qid, qseq) = quoted_echo(&msg[8..])?;
            if qdst != dst || (qid, qseq) != (ident, seq) {
                return None;
            }
            let kind = match ty {
                ICMP6_DST_UNREACH => IcmpErrorKind::DestinationUnreachable { code },
                ICMP6_PACKET_TOO_BIG => IcmpErrorKind::PacketTooBig {
                    mtu: u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
                },
                ICMP6_TIME_EXCEEDED => IcmpErrorKind::TimeExceeded { code },
                _ => IcmpErrorKind::Other { ty, code },
            };
            Some(PingOutcome::Error { from, kind })
        }
        _ => None,
    }
}

/// From the packet quoted in an ICMPv6 error: (destination, echo ident, seq)
/// if it is an echo request, skipping IPv6 extension headers.
fn quoted_echo(ip: &[u8]) -> Option<(Ipv6Addr, u16, u16)> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let dst_bytes: [u8; 16] = ip[24..40].try_into().ok()?;
    let mut next = ip[6];
    let mut off = 40usize;
    loop {
        match next {
            NEXT_HEADER_ICMPV6 => break,
            // Hop-by-hop, routing, destination options: length in 8-octet units.
            0 | 43 | 60 => {
                let h = ip.get(off..off + 2)?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            // Fragment header: only the first fragment carries the ICMP header.
            44 => {
                let h = ip.get(off..off + 8)?;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = h[0];
                off += 8;
            }
            _ => return None,
        }
    }
    let icmp = ip.get(off..off + 8)?;
    if icmp[0] != ICMP6_ECHO_REQUEST {
        return None;
    }
    Some((
        Ipv6Addr::from(dst_bytes),
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

/// Summary of [`ping_many`].
#[derive(Debug, Clone, Default)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub rtts: Vec<Duration>,
    /// ICMPv6 errors quoting our probes, with the reporting router.
    pub errors: Vec<(Ipv6Addr, IcmpErrorKind)>,
    /// Probes that could not be sent (socket errors, local EMSGSIZE).
    pub local_failures: Vec<String>,
}

impl PingStats {
    pub fn min(&self) -> Option<Duration> {
        self.rtts.iter().min().copied()
    }
    pub fn max(&self) -> Option<Duration> {
        self.rtts.iter().max().copied()
    }
    pub fn avg(&self) -> Option<Duration> {
        let n = u32::try_from(self.rtts.len()).ok().filter(|n| *n > 0)?;
        Some(self.rtts.iter().sum::<Duration>() / n)
    }
    /// Median RTT (lower middle for even counts).
    pub fn p50(&self) -> Option<Duration> {
        let mut v = self.rtts.clone();
        v.sort();
        v.get(v.len().checked_sub(1)? / 2).copied()
    }
    /// Fraction of sent probes without a reply (0.0 when none were sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - f64::from(self.received) / f64::from(self.sent)
        }
    }
}

/// Sends `count` probes `interval` apart (seq = `opts.seq`, `opts.seq+1`, ...).
///
/// Each probe waits up to `opts.timeout`. Note the kernel rate-limits most
/// ICMPv6 errors (about one per second per destination after a small burst).
pub fn ping_many(dst: Ipv6Addr, count: u32, interval: Duration, opts: PingOpts) -> PingStats {
    let mut stats = PingStats::default();
    for i in 0..count {
        let started = Instant::now();
        let o = PingOpts {
            seq: opts.seq.wrapping_add(i as u16),
            ..opts.clone()
        };
        stats.sent += 1;
        match ping6(dst, o) {
            Ok(PingOutcome::Reply { rtt, .. }) => {
                stats.received += 1;
                stats.rtts.push(rtt);
            }
            Ok(PingOutcome::Error { from, kind }) => stats.errors.push((from, kind)),
            Ok(PingOutcome::LocalTooBig { mtu }) => stats
                .local_failures
                .push(format!("message too long for local path MTU {mtu:?}")),
            Ok(PingOutcome::Timeout) => {}
            Err(e) => stats.local_failures.push(e.to_string()),
        }
        if i + 1 < count {
            if let Some(rest) = interval.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    stats
}

/// What a [`TcpSink`] received.
#[derive(Debug, Clone)]
pub struct SinkReport {
    pub peer: SocketAddr,
    pub bytes: u64,
    pub sha256: [u8; 32],
    /// From accept to EOF.
    pub elapsed: Duration,
}

/// What [`tcp_send`] sent.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub local: SocketAddr,
    pub bytes: u64,
    pub sha256: [u8; 32],
    /// From connect until the peer closed.
    pub elapsed: Duration,
}

/// A listening TCP socket that accepts one connection and hashes it to EOF.
///
/// Binds in the calling thread's namespace; see [`spawn_sink`] for the usual
/// "sink in namespace B, sender in namespace A" arrangement.
#[derive(Debug)]
pub struct TcpSink {
    listener: TcpListener,
}

impl TcpSink {
    /// Binds (IPv6 only, SO_REUSEADDR) and listens; port 0 picks a free port.
    pub fn bind(addr: SocketAddrV6) -> Result<TcpSink, NetnsError> {
        let ctx = |e| NetnsError::io(format!("bind TCP sink on {addr}"), e);
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).map_err(ctx)?;
        s.set_only_v6(true).map_err(ctx)?;
        s.set_reuse_address(true).map_err(ctx)?;
        s.bind(&addr.into()).map_err(ctx)?;
        s.listen(16).map_err(ctx)?;
        Ok(TcpSink { listener: s.into() })
    }

    pub fn local_addr(&self) -> Result<SocketAddrV6, NetnsError> {
        match self.listener.local_addr() {
            Ok(SocketAddr::V6(a)) => Ok(a),
            Ok(SocketAddr::V4(a)) => Err(NetnsError::Invalid(format!("sink bound to IPv4 {a}"))),
            Err(e) => Err(NetnsError::io("sink local address", e)),
        }
    }

    /// Accepts one connection and reads it to EOF, all within `timeout`.
    pub fn accept_one(self, timeout: Duration) -> Result<SinkReport, NetnsError> {
        let deadline = deadline_after(timeout);
        self.listener
            .set_nonblocking(true)
            .map_err(|e| NetnsError::io("sink set nonblocking", e))?;
        let (mut stream, peer) = loop {
            match self.listener.accept() {
                Ok(c) => break c,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(NetnsError::Timeout("TCP sink: no connection".into()));
                    }
                    std::thread::sleep(left.min(Duration::from_millis(5)));
                }
                Err(e) => return Err(NetnsError::io("sink accept", e)),
            }
        };
        let start = Instant::now();
        stream
            .set_nonblocking(false)
            .map_err(|e| NetnsError::io("sink set blocking", e))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NetnsError::Timeout(format!(
                    "TCP sink: {bytes} bytes from {peer} before deadline"
                )));
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| NetnsError::io("sink set read timeout", e))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    bytes += n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(NetnsError::io(format!("sink read from {peer}"), e)),
            }
        }
        let elapsed = start.elapsed();
        // Dropping the stream closes it, which the sender waits for.
        drop(stream);
        Ok(SinkReport {
            peer,
            bytes,
            sha256: hasher.finalize().into(),
            elapsed,
        })
    }
}

/// Deterministic byte stream (SplitMix64) so sender and checker agree
/// without storing the data.
struct Pattern {
    state: u64,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern { state: seed }
    }

    /// Fills `buf`; `buf.len()` must be a multiple of 8 except for the
    /// stream's final chunk, so chunking never changes the stream.
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let b = z.to_le_bytes();
            word.copy_from_slice(&b[..word.len()]);
        }
    }
}

/// SHA-256 of the first `bytes` bytes of the stream [`tcp_send`] sends for `seed`.
pub fn pattern_sha256(bytes: u64, seed: u64) -> [u8; 32] {
    let mut p = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize().into()
}

/// Connects to `dst`, streams `bytes` of seeded pseudo-random data, shuts
/// down writing and waits for the peer to close, all within `timeout`.
pub fn tcp_send(
    dst: SocketAddrV6,
    bytes: u64,
    seed: u64,
    timeout: Duration,
) -> Result<SendReport, NetnsError> {
    let deadline = deadline_after(timeout);
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V6(dst), timeout)
        .map_err(|e| NetnsError::io(format!("connect to {dst}"), e))?;
    let local = stream
        .local_addr()
        .map_err(|e| NetnsError::io("sender local address", e))?;
    let remaining = |what: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(NetnsError::Timeout(format!("tcp_send to {dst}: {what}")))
        } else {
            Ok(left)
        }
    };

    let mut pattern = Pattern::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        stream
            .set_write_timeout(Some(remaining("writing")?))
            .map_err(|e| NetnsError::io("set write timeout", e))?;
        stream.write_all(&buf[..n]).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => NetnsError::Timeout(format!(
                "tcp_send to {dst}: write stalled after {sent} bytes"
            )),
            _ => NetnsError::io(format!("write to {dst} after {sent} bytes"), e),
        })?;
        hasher.update(&buf[..n]);
        sent += n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| NetnsError::io(format!("shutdown write to {dst}"), e))?;

    // Wait for the sink to close: proves it read everything.
    let mut scratch = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(remaining("waiting for peer close")?))
            .map_err(|e| NetnsError::io("set read timeout", e))?;
        match stream.read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(NetnsError::io(format!("read from {dst}"), e)),
        }
    }
    Ok(SendReport {
        local,
        bytes: sent,
        sha256: hasher.finalize().into(),
        elapsed: start.elapsed(),
    })
}

/// Throughput in Mbit/s (10^6 bits); 0.0 for a zero duration.
pub fn mbit_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    }
}

/// A [`TcpSink`] listening inside a namespace on its own thread.
#[derive(Debug)]
pub struct SinkHandle {
    ns: String,
    local_addr: SocketAddrV6,
    handle: std::thread::JoinHandle<Option<Result<SinkReport, NetnsError>>>,
}

impl SinkHandle {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddrV6 {
        self.local_addr
    }

    /// Waits for the transfer to finish (bounded by the sink's timeout).
    pub fn join(self) -> Result<SinkReport, NetnsError> {
        join_thread(&self.ns, self.handle)?
            .unwrap_or_else(|| Err(NetnsError::Invalid("sink thread never started".into())))
    }
}

/// Starts a sink in namespace `ns_name`; returns once it is listening.
pub fn spawn_sink(
    ns_name: &str,
    addr: SocketAddrV6,
    timeout: Duration,
) -> Result<SinkHandle, NetnsError> {
    check_ns_name(ns_name)?;
    let (tx, rx) = mpsc::channel::<Result<SocketAddrV6, NetnsError>>();
    let ns = ns_name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("sink-{ns_name}"))
        .spawn(move || {
            let setup = enter_netns(&ns)
                .and_then(|_| TcpSink::bind(addr))
                .and_then(|s| s.local_addr().map(|a| (s, a)));
            match setup {
                Ok((sink, local)) => {
                    // If the receiver is gone nobody will connect; the
                    // accept timeout still ends this thread.
                    let _ = tx.send(Ok(local));
                    Some(sink.accept_one(timeout))
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            }
        })
        .map_err(|e| NetnsError::io("spawn sink thread", e))?;
    match rx.recv() {
        Ok(Ok(local_addr)) => Ok(SinkHandle {
            ns: ns_name.to_string(),
            local_addr,
            handle,
        }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        // The thread died before reporting: surface its panic.
        Err(_) => match join_thread(ns_name, handle) {
            Err(e) => Err(e),
            Ok(_) => Err(NetnsError::Invalid("sink thread exited silently".into())),
        },
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pattern_chunking_is_stable() {
        let mut a = vec![0u8; 100];
        Pattern::new(5).fill(&mut a);
        let mut b = vec![0u8; 100];
        let mut p = Pattern::new(5);
        p.fill(&mut b[..64]);
        p.fill(&mut b[64..]);
        assert_eq!(a, b);
        assert_ne!(pattern_sha256(1000, 1), pattern_sha256(1000, 2));
        assert_eq!(pattern_sha256(0, 1), <[u8; 32]>::from(Sha256::digest(b"")));
    }

    fn error_msg(
        ty: u8,
        code: u8,
        word: u32,
        dst: Ipv6Addr,
        ext: &[u8],
        ident: u16,
        seq: u16,
    ) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0];
        m.extend_from_slice(&word.to_be_bytes());
        let mut ip = vec![
            0x60,
            0,
            0,
            0,
            0,
            0,
            if ext.is_empty() { 58 } else { ext[0] },
            1,
        ];
        ip.extend_from_slice(&[0xfd; 16]);
        ip.extend_from_slice(&dst.octets());
        m.extend_from_slice(&ip);
        if !ext.is_empty() {
            m.extend_from_slice(&ext[1..]);
        }
        m.extend_from_slice(&[128, 0, 0, 0]);
        m.extend_from_slice(&ident.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m
    }

    #[test]
    fn classify_messages() {
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let r: Ipv6Addr = "fd00::1".parse().unwrap();
        let rtt = Duration::from_millis(1);
        let reply = [129, 0, 0, 0, 0x12, 0x34, 0, 7];
        assert_eq!(
            classify(&reply, dst, rtt, dst, 0x1234, 7),
            Some(PingOutcome::Reply { from: dst, rtt })
        );
        assert_eq!(classify(&reply, dst, rtt, dst, 0x1234, 8), None);
        // Our own echo request, MLD, router solicitation, garbage: ignored.
        assert_eq!(
            classify(&[128, 0, 0, 0, 0x12, 0x34, 0, 7], dst, rtt, dst, 0x1234, 7),
            None
        );
        assert_eq!(
            classify(&[143, 0, 0, 0, 0, 0, 0, 0], dst, rtt, dst, 1, 1),
            None
        );
        assert_eq!(
            classify(&[133, 0, 0, 0, 0, 0, 0, 0], dst, rtt, dst, 1, 1),
            None
        );
        assert_eq!(classify(&[1, 0], dst, rtt, dst, 1, 1), None);
        assert_eq!(
            classify(&[3, 0, 0, 0, 0, 0, 0, 0, 0x60], dst, rtt, dst, 1, 1),
            None
        );

        let m = error_msg(3, 0, 0, dst, &[], 9, 3);
        assert_eq!(
            classify(&m, r, rtt, dst, 9, 3),
            Some(PingOutcome::Error {
                from: r,
                kind: IcmpErrorKind::TimeExceeded { code: 0 }
            })
        );
        assert_eq!(classify(&m, r, rtt, dst, 9, 4), None);
        assert_eq!(classify(&m, r, rtt, r, 9, 3), None);
        let m = error_msg(2, 0, 1280, dst, &[], 9, 3);
        assert_eq!(
            classify(&m, r, rtt, dst, 9, 3),
            Some(PingOutcome::Error {
                from: r,
                kind: IcmpErrorKind::PacketTooBig { mtu: 1280 }
            })
        );
        // First fragment via a fragment header; later fragments are ignored.
        let frag = [44u8, 58, 0, 0, 1, 0, 0, 0, 42];
        let m = error_msg(1, 3, 0, dst, &frag, 9, 3);
        assert_eq!(
            classify(&m, r, rtt, dst, 9, 3),
            Some(PingOutcome::Error {
                from: r,
                kind: IcmpErrorKind::DestinationUnreachable { code: 3 }
            })
        );
        let frag = [44u8, 58, 0, 0x08, 1, 0, 0, 0, 42];
        assert_eq!(
            classify(&error_msg(1, 3, 0, dst, &frag, 9, 3), r, rtt, dst, 9, 3),
            None
        );
        // Truncated quote.
        let m = error_msg(4, 1, 0, dst, &[], 9, 3);
        assert_eq!(classify(&m[..m.len() - 2], r, rtt, dst, 9, 3), None);
        assert_eq!(
            classify(&m, r, rtt, dst, 9, 3),
            Some(PingOutcome::Error {
                from: r,
                kind: IcmpErrorKind::Other { ty: 4, code: 1 }
            })
        );
    }

    #[test]
    fn stats_helpers() {
        let mut s = PingStats::default();
        assert_eq!(
            (s.min(), s.avg(), s.p50(), s.loss()),
            (None, None, None, 0.0)
        );
        s.sent = 4;
        s.received = 3;
        s.rtts = vec![3, 1, 2]
            .into_iter()
            .map(Duration::from_millis)
            .collect();
        assert_eq!(s.min(), Some(Duration::from_millis(1)));
        assert_eq!(s.max(), Some(Duration::from_millis(3)));
        assert_eq!(s.avg(), Some(Duration::from_millis(2)));
        assert_eq!(s.p50(), Some(Duration::from_millis(2)));
        assert!((s.loss() - 0.25).abs() < 1e-9);
        assert_eq!(mbit_per_s(1_000_000, Duration::from_secs(8)), 1.0);
        assert_eq!(mbit_per_s(5, Duration::ZERO), 0.0);
        let huge = PingOpts {
            payload_len: MAX_PAYLOAD + 1,
            ..Default::default()
        };
        assert!(matches!(
            ping6(Ipv6Addr::LOCALHOST, huge),
            Err(NetnsError::Invalid(_))
        ));
        assert!(spawn_sink("bad\0name", "[::1]:0".parse().unwrap(), Duration::MAX).is_err());
    }
}
