//! Real multi-site overlays in network namespaces: hosts behind each site's
//! gateway reach each other over QUIC tunnels, byte for byte, with their own
//! addresses.

mod common;

use on6::demo::measure_pair;
use on6::netns::{self, IcmpErrorKind, PingOpts, PingOutcome};
use std::time::Duration;

const MB: u64 = 1_000_000;

fn all_pairs_ping(ov: &on6::demo::overlay::Overlay) {
    for a in 0..ov.sites.len() {
        for b in 0..ov.sites.len() {
            if a != b {
                let r = measure_pair(ov, a, b, 3, 1);
                common::check(
                    ov,
                    r.pings_received >= 2,
                    &format!(
                        "{} -> {}: {}/3 echo replies",
                        r.from, r.to, r.pings_received
                    ),
                );
            }
        }
    }
}

fn transfer(ov: &on6::demo::overlay::Overlay, a: usize, b: usize, bytes: u64) {
    let r = measure_pair(ov, a, b, 1, bytes);
    match r.tcp {
        Ok((mbps, intact, own_source)) => {
            eprintln!(
                "{} -> {}: {} MB at {mbps:.0} Mbit/s",
                r.from,
                r.to,
                bytes / MB
            );
            common::check(ov, intact, "TCP data arrived intact (length and SHA-256)");
            common::check(
                ov,
                own_source,
                "the receiver saw the sender's own IPv6 address",
            );
        }
        Err(e) => common::check(ov, false, &format!("TCP transfer failed: {e}")),
    }
}

#[test]
fn two_sites_echo_and_50mb_tcp() {
    let Some(ov) = common::build("two_sites_echo_and_50mb_tcp", common::options(2)) else {
        return;
    };
    all_pairs_ping(&ov);
    transfer(&ov, 0, 1, 50 * MB);
}

#[test]
fn three_sites_every_pair() {
    let Some(ov) = common::build("three_sites_every_pair", common::options(3)) else {
        return;
    };
    all_pairs_ping(&ov);
    transfer(&ov, 2, 0, 50 * MB);
    transfer(&ov, 1, 2, 5 * MB);
}

#[test]
fn remote_gateway_behind_nat() {
    let mut opts = common::options(2);
    opts.remote_gateways = vec![1];
    let Some(ov) = common::build("remote_gateway_behind_nat", opts) else {
        return;
    };
    all_pairs_ping(&ov);
    transfer(&ov, 0, 1, 5 * MB);
    transfer(&ov, 1, 0, 5 * MB);
    // The master saw its gateway as a remote session, arriving from the NAT's address.
    let st = ov.status(1).expect("status of site-2");
    let slaves = st["master"]["slaves"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gw = slaves
        .iter()
        .find(|s| s["kind"] == "gateway")
        .expect("a gateway slave");
    assert_eq!(gw["session"]["remote"], true, "{gw}");
    assert_eq!(gw["session"]["peer"], "site-2-gw", "{gw}");
}

#[test]
fn hop_limit_exhausted_gives_time_exceeded_from_the_right_master() {
    let Some(ov) = common::build("hop_limit_time_exceeded", common::options(2)) else {
        return;
    };
    all_pairs_ping(&ov);
    let dst = ov.sites[1].host_addr;
    // Host -> site kernel (-1) -> master A: hop limit 2 arrives as 1 and dies at master A.
    let at_a = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping6(
            dst,
            PingOpts {
                hop_limit: Some(2),
                ..PingOpts::default()
            },
        )
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        at_a,
        PingOutcome::Error {
            from: ov.sites[0].router,
            kind: IcmpErrorKind::TimeExceeded { code: 0 }
        }
    );
    // One more hop: it crosses the tunnel and dies at master B.
    let at_b = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping6(
            dst,
            PingOpts {
                hop_limit: Some(3),
                ..PingOpts::default()
            },
        )
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        at_b,
        PingOutcome::Error {
            from: ov.sites[1].router,
            kind: IcmpErrorKind::TimeExceeded { code: 0 }
        }
    );
    let st = ov.status(1).unwrap();
    assert!(
        st["master"]["stats"]["drops"]["hop_limit"].as_u64() >= Some(1),
        "{}",
        st["master"]["stats"]
    );
}

#[test]
fn packet_too_big_and_tcp_mss_adapts() {
    let mut opts = common::options(2);
    // Site 1's TUN takes 1500-byte packets; the overlay between sites carries 1400.
    opts.gateway_mtu = vec![(0, 1500)];
    let Some(ov) = common::build("packet_too_big", opts) else {
        return;
    };
    all_pairs_ping(&ov);
    // An address in site 2 that no TCP test uses, so the host's PMTU cache for it starts clean.
    let other: std::net::Ipv6Addr = "fd6e:0:2:1::99".parse().unwrap();
    let big = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping6(
            other,
            PingOpts {
                payload_len: 1440,
                ..PingOpts::default()
            },
        )
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        big,
        PingOutcome::Error {
            from: ov.sites[0].router,
            kind: IcmpErrorKind::PacketTooBig { mtu: 1400 }
        }
    );
    // A TCP flow starting with 1440-byte segments learns the path MTU and completes.
    transfer(&ov, 0, 1, 10 * MB);
    let st = ov.status(0).unwrap();
    assert!(
        st["master"]["stats"]["drops"]["too_big"].as_u64() >= Some(2),
        "{}",
        st["master"]["stats"]
    );
}

#[test]
fn killed_slave_routes_go_and_senders_get_unreachable() {
    let mut opts = common::options(2);
    opts.remote_gateways = vec![1];
    opts.idle_timeout_ms = 2000;
    let Some(mut ov) = common::build("killed_slave", opts) else {
        return;
    };
    all_pairs_ping(&ov);
    let prefix = ov.sites[1].prefix.to_string();
    let has_route = |ov: &on6::demo::overlay::Overlay| {
        ov.status(1).is_some_and(|st| {
            st["master"]["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r[0] == prefix.as_str()))
        })
    };
    assert!(has_route(&ov));
    assert!(ov.kill("site-2-gw"));
    let killed = std::time::Instant::now();
    // Bound: the idle timeout (2 s) plus scheduling slack.
    let gone = common::wait_until(Duration::from_secs(8), || !has_route(&ov));
    common::check(
        &ov,
        gone,
        "site-2's gateway routes withdrawn within 8 s of the kill",
    );
    eprintln!(
        "routes withdrawn {:.1} s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    let dst = ov.sites[1].host_addr;
    let out = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping6(dst, PingOpts::default())
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        out,
        PingOutcome::Error {
            from: ov.sites[1].router,
            kind: IcmpErrorKind::DestinationUnreachable { code: 0 }
        }
    );
}

#[test]
fn site_answers_echo_at_its_router_address() {
    let Some(ov) = common::build("router_echo", common::options(2)) else {
        return;
    };
    let router = ov.sites[1].router;
    let out = netns::in_netns(ov.sites[0].host_ns.name(), move || {
        netns::ping6(router, PingOpts::default())
    })
    .unwrap()
    .unwrap();
    assert!(
        matches!(out, PingOutcome::Reply { from, .. } if from == router),
        "{out:?}"
    );
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Every on6 process of the overlay peaked under 64 MiB.
fn check_peak_rss(ov: &on6::demo::overlay::Overlay, when: &str) {
    for pid in ov.pids() {
        let peak = peak_rss_mib(pid);
        eprintln!("on6 process {pid}: peak RSS {peak:.1} MiB");
        common::check(
            ov,
            peak > 0.0 && peak < 64.0,
            &format!("on6 process {pid} peaked at {peak:.1} MiB {when} (bound 64 MiB)"),
        );
    }
}

#[test]
fn udp_flood_above_capacity_is_dropped_in_bounded_memory_and_other_flows_survive() {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Instant;
    let test = "udp_flood_above_capacity_is_dropped_in_bounded_memory_and_other_flows_survive";
    let Some(ov) = common::build(test, common::options(2)) else {
        return;
    };
    let dst = SocketAddr::new(ov.sites[1].host_addr.into(), 9999);
    let flood = Duration::from_secs(5);

    let rx_ns = ov.sites[1].host_ns.name().to_string();
    let receiver = std::thread::spawn(move || {
        netns::in_netns(&rx_ns, move || {
            let sock = UdpSocket::bind(dst).expect("bind receiver");
            sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while sock.recv(&mut buf).is_ok() {
                n += 1;
            }
            n
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let ns = ov.sites[0].host_ns.name().to_string();
            std::thread::spawn(move || {
                netns::in_netns(&ns, move || {
                    let sock = UdpSocket::bind("[::]:0").expect("bind sender");
                    let payload = [0x5au8; 1300];
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while start.elapsed() < flood {
                        if sock.send_to(&payload, dst).is_ok() {
                            sent += 1;
                        }
                    }
                    sent
                })
            })
        })
        .collect();
    let sent: u64 = senders
        .into_iter()
        .map(|s| s.join().expect("sender thread").unwrap_or(0))
        .sum();
    let received = receiver
        .join()
        .expect("receiver thread")
        .expect("receiver namespace");
    eprintln!(
        "flood: {sent} datagrams offered in {flood:?}, {received} delivered ({:.0} %)",
        received as f64 * 100.0 / sent.max(1) as f64
    );
    common::check(&ov, received > 0, "the flood's datagrams reached site 2");
    check_peak_rss(&ov, "under the flood");
    // The overload is over: the overlay carries other flows as before.
    all_pairs_ping(&ov);
    transfer(&ov, 0, 1, 5 * MB);
}

#[test]
fn five_percent_wire_loss_is_hidden_from_udp_and_tcp_is_held_in_order() {
    let test = "five_percent_wire_loss_is_hidden_from_udp_and_tcp_is_held_in_order";
    let Some(ov) = common::build(test, common::options(2)) else {
        return;
    };
    common::wire_loss(&ov, 5);
    common::check_udp_loss_hidden(&ov, 5, "tunnel");
    let held = |ov: &on6::demo::overlay::Overlay| {
        ov.status(1)
            .and_then(|st| st["tunnels"][0][1][0]["stats"]["hold_held"].as_u64())
            .unwrap_or(0)
    };
    common::check(
        &ov,
        held(&ov) == 0,
        "UDP datagrams must never wait in order",
    );
    // TCP through the same loss: the data arrives intact, packets behind a
    // hole waited for it at the receiving site, and holding stayed bounded.
    transfer(&ov, 0, 1, 50 * MB);
    let held = held(&ov);
    eprintln!("5 % wire loss: {held} TCP packets held in order behind a hole");
    common::check(&ov, held > 0, "no TCP packet was held behind a hole");
    check_peak_rss(&ov, "through 5 % loss");
}
