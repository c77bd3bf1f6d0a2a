//! A UDP relay that impairs what passes through it: each [`Pipe`] joins two
//! endpoints that talk to the relay instead of to each other, and each
//! direction of each pipe runs its own seeded [`Impairment`].

use super::{Config, Impairment};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// One relayed path between endpoints A and B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipe {
    /// Where A sends: the relay's stand-in for B.
    pub a_listen: SocketAddr,
    /// Where B sends: the relay's stand-in for A.
    pub b_listen: SocketAddr,
    /// B's real address.
    pub b_peer: SocketAddr,
    /// A's real address; `None` learns it from the latest packet A sent (a
    /// client on an ephemeral port).
    pub a_peer: Option<SocketAddr>,
}

/// Bound sockets, ready to relay.
pub struct Relay {
    pipes: Vec<(Pipe, Arc<UdpSocket>, Arc<UdpSocket>)>,
}

/// Socket buffers of 4 MiB: the default 208 KiB overflows at Gbit/s rates,
/// and the relay must add only the losses it is configured with.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn bind(addr: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let sock = std::net::UdpSocket::bind(addr)?;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt on a socket we own, with a pointer to a live int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            // Without CAP_NET_ADMIN: the capped size is still better than the default.
            let s = socket2::SockRef::from(&sock);
            s.set_recv_buffer_size(SOCKET_BUFFER as usize)?;
            s.set_send_buffer_size(SOCKET_BUFFER as usize)?;
        }
    }
    sock.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(sock)?))
}

impl Relay {
    /// Binds every pipe's two sockets (inside a tokio runtime).
    pub fn bind(pipes: &[Pipe]) -> io::Result<Relay> {
        let pipes = pipes
            .iter()
            .map(|p| Ok((*p, bind(p.a_listen)?, bind(p.b_listen)?)))
            .collect::<io::Result<_>>()?;
        Ok(Relay { pipes })
    }

    /// Relays until `shutdown` completes or a socket fails. Direction `k`
    /// (A to B of pipe i is 2i, B to A is 2i+1) uses seed `cfg.seed + k`.
    /// A new configuration applies at once, without rebinding: endpoints
    /// never see the relay's ports closed between two settings.
    pub async fn run(
        self,
        cfg: watch::Receiver<Config>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let origin = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (pipe, a_sock, b_sock)) in self.pipes.into_iter().enumerate() {
            let a_peer = Arc::new(Mutex::new(pipe.a_peer));
            let k = 2 * i as u64;
            tasks.spawn(forward(
                a_sock.clone(),
                b_sock.clone(),
                Dest::Fixed(pipe.b_peer),
                Some(a_peer.clone()).filter(|_| pipe.a_peer.is_none()),
                (cfg.clone(), k),
                origin,
            ));
            tasks.spawn(forward(
                b_sock,
                a_sock,
                Dest::Learned(a_peer),
                None,
                (cfg.clone(), k + 1),
                origin,
            ));
        }
        tokio::select! {
            () = shutdown => Ok(()),
            Some(done) = tasks.join_next() => done.map_err(io::Error::other)?,
        }
    }
}

enum Dest {
    Fixed(SocketAddr),
    Learned(Arc<Mutex<Option<SocketAddr>>>),
}

impl Dest {
    fn get(&self) -> Option<SocketAddr> {
        match self {
            Dest::Fixed(a) => Some(*a),
            Dest::Learned(a) => a.lock().ok().and_then(|a| *a),
        }
    }
}

/// One direction: packets read from `rx` leave by `tx` once the impairment releases them.
async fn forward(
    rx: Arc<UdpSocket>,
    tx: Arc<UdpSocket>,
    to: Dest,
    learn: Option<Arc<Mutex<Option<SocketAddr>>>>,
    (mut cfg, k): (watch::Receiver<Config>, u64),
    origin: Instant,
) -> io::Result<()> {
    // Each direction draws its own random numbers.
    let seeded = |c: Config| Config {
        seed: c.seed.wrapping_add(k),
        ..c
    };
    let mut imp = Impairment::<Vec<u8>>::new(seeded(*cfg.borrow_and_update()));
    let mut buf = vec![0u8; 65_536];
    loop {
        let due = imp.next_release().map(|d| origin + d);
        tokio::select! {
            got = rx.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    if let Some(Ok(mut a)) = learn.as_ref().map(|l| l.lock()) {
                        *a = Some(from);
                    }
                    imp.push(origin.elapsed(), buf[..n].to_vec());
                }
                // ICMP errors from an earlier send surface here: the path is lossy anyway.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {}
                Err(e) => return Err(e),
            },
            () = crate::transport::sleep_until(due) => {}
            changed = cfg.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                imp.reconfigure(seeded(*cfg.borrow_and_update()));
            }
        }
        let now = origin.elapsed();
        while let Some(packet) = imp.pop_due(now) {
            send(&tx, &to, &packet).await;
        }
    }
}

async fn send(tx: &UdpSocket, to: &Dest, packet: &[u8]) {
    if let Some(dst) = to.get() {
        // A failed send is one more lost packet, as on a real path.
        let _ = tx.send_to(packet, dst).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::GilbertElliott;
    use std::time::Duration;

    #[tokio::test]
    async fn relays_both_ways_with_delay_and_learns_the_client() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let free = || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .unwrap()
        };
        let pipe = Pipe {
            a_listen: free(),
            b_listen: free(),
            b_peer: server.local_addr().unwrap(),
            a_peer: None,
        };
        let cfg = Config {
            delay: Duration::from_millis(30),
            loss: GilbertElliott::none(),
            ..Config::transparent(3)
        };
        let relay = Relay::bind(&[pipe]).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (_set, cfg) = watch::channel(cfg);
        let task = tokio::spawn(relay.run(cfg, async {
            let _ = stopped.await;
        }));
        let start = Instant::now();
        client.send_to(b"ping", pipe.a_listen).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], pipe.b_listen));
        assert!(start.elapsed() >= Duration::from_millis(30));
        server.send_to(b"pong", from).await.unwrap();
        let (n, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], pipe.a_listen));
        assert!(start.elapsed() >= Duration::from_millis(60));
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
