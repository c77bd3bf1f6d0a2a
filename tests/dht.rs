//! DHT slaves in real namespaces: sites configured with one bootstrap peer
//! find each other, a dead site is routed around, a moved prefix is found at
//! its new site, and poisoned entries never attract a packet.

mod common;

use on6::demo::measure_pair;
use on6::demo::overlay::MOBILE_HOST;
use on6::netns::{self, IcmpErrorKind, PingOpts, PingOutcome};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn six_sites_with_one_bootstrap_peer_each_reach_every_host() {
    let Some(ov) = common::build("dht_six_sites", common::dht(6)) else {
        return;
    };
    for a in 0..6 {
        for b in 0..6 {
            if a != b {
                common::check(
                    &ov,
                    common::ping_ok(&ov, a, b),
                    &format!("site-{} -> site-{} over the DHT", a + 1, b + 1),
                );
            }
        }
    }
    for (a, b) in [(0, 5), (3, 1)] {
        let r = measure_pair(&ov, a, b, 1, 5_000_000);
        common::check(
            &ov,
            matches!(r.tcp, Ok((_, true, true))),
            &format!("TCP {} -> {}: {:?}", r.from, r.to, r.tcp.err()),
        );
    }
    // Every site resolved through the DHT, none through static configuration.
    let st = ov.status(0).unwrap();
    let resolver = &st["dhts"][0][1]["status"]["resolver"];
    assert!(resolver["hits"].as_u64() >= Some(5), "{resolver}");
    assert!(st["tunnels"].as_array().is_some_and(|t| t.is_empty()));
}

#[test]
fn dead_site_becomes_unreachable_and_others_are_unaffected() {
    let mut opts = common::dht(4);
    opts.idle_timeout_ms = 2000;
    let Some(mut ov) = common::build("dht_dead_site", opts) else {
        return;
    };
    for b in 1..4 {
        assert!(common::ping_ok(&ov, 0, b));
    }
    assert!(ov.kill("site-3"));
    let dst = ov.sites[2].host_addr;
    let ns = ov.sites[0].host_ns.name().to_string();
    let started = Instant::now();
    let unreachable = common::wait_until(Duration::from_secs(30), || {
        let out = netns::in_netns(&ns, move || {
            netns::ping6(
                dst,
                PingOpts {
                    timeout: Duration::from_secs(2),
                    ..PingOpts::default()
                },
            )
        })
        .unwrap()
        .unwrap();
        matches!(
            out,
            PingOutcome::Error {
                kind: IcmpErrorKind::DestinationUnreachable { .. },
                ..
            }
        )
    });
    common::check(
        &ov,
        unreachable,
        "a sender to the dead site gets Destination Unreachable",
    );
    eprintln!(
        "dead site reported unreachable after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (a, b) in [(0, 1), (1, 3), (3, 0)] {
        common::check(
            &ov,
            common::ping_ok(&ov, a, b),
            &format!("site-{} -> site-{} unaffected", a + 1, b + 1),
        );
    }
}

#[test]
fn moved_prefix_is_reached_at_its_new_site() {
    let mut opts = common::dht(3);
    opts.mobile = Some(1);
    let Some(mut ov) = common::build("dht_mobility", opts) else {
        return;
    };
    let ns = ov.sites[0].host_ns.name().to_string();
    let ping = |ns: &str| {
        netns::in_netns(ns, move || {
            netns::ping6(
                MOBILE_HOST,
                PingOpts {
                    timeout: Duration::from_millis(300),
                    ..PingOpts::default()
                },
            )
        })
        .unwrap()
        .unwrap()
    };
    let warm = common::wait_until(Duration::from_secs(10), || {
        matches!(ping(&ns), PingOutcome::Reply { .. })
    });
    common::check(&ov, warm, "site-1 reaches the mobile network at site-2");

    // Ping every 100 ms while the mobile network's gateway dies at site 2 and reattaches at site 3.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let pinger = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let t0 = Instant::now();
            while stop_rx.try_recv().is_err() {
                let ok = matches!(ping(&ns), PingOutcome::Reply { .. });
                log.push((t0.elapsed(), ok));
                std::thread::sleep(Duration::from_millis(100));
            }
            log
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    ov.move_mobile(2, Path::new(env!("CARGO_BIN_EXE_on6")), "info,on6=debug")
        .unwrap();
    let moved = common::wait_until(Duration::from_secs(20), || {
        ov.has_route(2, on6::demo::overlay::MOBILE_PREFIX)
    });
    common::check(&ov, moved, "the mobile gateway attached to site-3");
    std::thread::sleep(Duration::from_secs(8));
    let _ = stop_tx.send(());
    let log = pinger.join().unwrap();
    // The gap: from the last reply before the move to the first reply after it.
    let first_fail = log.iter().position(|(_, ok)| !ok);
    let recovered = first_fail.and_then(|f| log[f..].iter().position(|(_, ok)| *ok).map(|r| r + f));
    let (Some(f), Some(r)) = (first_fail, recovered) else {
        panic!(
            "no interruption or no recovery: {log:?}\n{}",
            ov.logs_tail(30)
        );
    };
    let gap = log[r].0 - log[f.saturating_sub(1)].0;
    eprintln!(
        "mobility: replies stopped for {:.2} s while the prefix moved from site-2 to site-3",
        gap.as_secs_f64()
    );
    assert!(
        log[r..].iter().filter(|(_, ok)| *ok).count() >= log[r..].len() * 9 / 10,
        "replies keep coming after the move"
    );
    common::check(
        &ov,
        gap < Duration::from_secs(8),
        &format!("gap {gap:?} within 8 s (target 5 s)"),
    );
    let st = ov.status(1).unwrap();
    assert!(
        st["dhts"][0][1]["not_mine_sent"].as_u64() >= Some(1)
            || st["dhts"][0][1]["status"]["served"]
                .as_array()
                .is_some_and(|s| s.len() == 1),
        "{}",
        st["dhts"]
    );
}

#[test]
fn poisoned_entries_never_attract_packets() {
    use on6::pki::{self, Credentials, Role};
    use on6::slave::dht::{keys, p2p, record::SignedEntry};
    let Some(ov) = common::build("dht_poisoning", common::dht(3)) else {
        return;
    };
    // A fleet member with a real site certificate for fd6e:0:77::/48 turns rogue.
    let ca_cert = std::fs::read_to_string(ov.dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(ov.dir.join("ca.key")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (pair, _) = pki::issue(
        &ca_cert,
        &ca_key,
        &pki::IssueRequest {
            name: "rogue",
            role: Role::Master,
            prefixes: &["fd6e:0:77::/48".parse().unwrap()],
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::hours(1),
        },
    )
    .unwrap();
    pki::write_file(&ov.dir.join("rogue.pem"), &pair.cert_pem, false).unwrap();
    pki::write_file(&ov.dir.join("rogue.key"), &pair.key_pem, true).unwrap();
    let creds = Credentials::load(
        &ov.dir.join("ca.pem"),
        &ov.dir.join("rogue.pem"),
        &ov.dir.join("rogue.key"),
        None,
    )
    .unwrap();
    let victim_cert = pki::load_certs(&ov.dir.join("site-2.pem"))
        .unwrap()
        .remove(0)
        .to_vec();
    let rogue_ns = netns::Netns::create("on6rogue").unwrap();
    ov.underlay_link(&rogue_ns, "10.77.0.150/24").unwrap();

    let victim: ipnet::Ipv6Net = "fd6e:0:2::/48".parse().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let rogue = {
        let ns = rogue_ns.name().to_string();
        let creds = creds.clone();
        std::thread::spawn(move || {
            common::in_ns_async(&ns, move || async move {
                // Its QUIC listener counts anyone who tries to send it traffic.
                let opts = on6::transport::TransportOptions::default();
                let ep = on6::transport::endpoint(
                    "10.77.0.150:4435".parse().unwrap(),
                    Some(on6::transport::server_config(&creds, &opts).unwrap()),
                    on6::transport::client_config(&creds, &opts).unwrap(),
                )
                .unwrap();
                let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
                let h = hits.clone();
                tokio::spawn(async move {
                    while let Some(inc) = ep.accept().await {
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        drop(inc);
                    }
                });
                let key = keys::keypair_from_pem(creds.key_pem.as_deref().unwrap()).unwrap();
                let cert = creds.chain[0].to_vec();
                let mut node = p2p::P2p::new(
                    keys::libp2p_keypair(key.clone()),
                    cert.clone(),
                    std::sync::Arc::new(|c: &[u8]| {
                        on6::pki::NodeIdentity::from_der(c).map_err(|e| e.to_string())
                    }),
                    "/ip4/10.77.0.150/tcp/4436".parse().unwrap(),
                    Duration::from_secs(300),
                    p2p::KAD_PROTOCOL,
                )
                .unwrap();
                node.dial("/ip4/10.77.0.1/tcp/4436".parse().unwrap());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                while node.peers() == 0 && tokio::time::Instant::now() < deadline {
                    let _ = tokio::time::timeout(Duration::from_millis(200), node.next()).await;
                }
                assert!(
                    node.peers() > 0,
                    "the rogue (a real fleet member) is admitted"
                );
                let expires = p2p::now_unix() + 300;
                let seq = u64::MAX / 2;
                let endpoint = "10.77.0.150:4435".parse().unwrap();
                // (a) site-2's prefix, signed properly, but outside the rogue's certificate.
                let outside =
                    SignedEntry::sign(victim, vec![endpoint], seq, expires, cert.clone(), |m| {
                        key.sign(m)
                    });
                // (b) site-2's own certificate, signature forged with the rogue's key.
                let forged =
                    SignedEntry::sign(victim, vec![endpoint], seq, expires, victim_cert, |m| {
                        key.sign(m)
                    });
                node.publish(p2p::key_for(victim.network()), vec![outside, forged]);
                let until = tokio::time::Instant::now() + Duration::from_secs(600);
                while done_rx.try_recv().is_err() && tokio::time::Instant::now() < until {
                    let _ = tokio::time::timeout(Duration::from_millis(100), node.next()).await;
                }
                hits.load(std::sync::atomic::Ordering::SeqCst)
            })
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    // Fresh resolutions of site-2 from both other sites: they must land at site-2, never at the rogue.
    for a in [0, 2] {
        common::check(
            &ov,
            common::ping_ok(&ov, a, 1),
            &format!("site-{} reaches the real site-2", a + 1),
        );
        let r = measure_pair(&ov, a, 1, 1, 1_000_000);
        common::check(
            &ov,
            matches!(r.tcp, Ok((_, true, true))),
            "TCP to the real site-2 intact",
        );
    }
    let _ = done_tx.send(());
    let rogue_hits = rogue.join().unwrap();
    assert_eq!(rogue_hits, 0, "some site sent traffic to the rogue");
    let mut rejected = std::collections::HashMap::<String, u64>::new();
    for i in 0..3 {
        let st = ov.status(i).unwrap();
        if let Some(m) = st["dhts"][0][1]["status"]["p2p"]["entries_rejected"].as_object() {
            for (k, v) in m {
                *rejected.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    eprintln!("entries rejected across sites: {rejected:?}");
    assert!(
        rejected.get("not_covered").copied().unwrap_or(0) >= 1,
        "{rejected:?}"
    );
    assert!(
        rejected.get("bad_signature").copied().unwrap_or(0) >= 1,
        "{rejected:?}"
    );
}

#[test]
fn two_dht_overlays_side_by_side_own_their_spaces() {
    use on6::demo::overlay::second_host_addr;
    let mut opts = common::dht(3);
    opts.second_dht = true;
    let Some(ov) = common::build("dht_two_overlays", opts) else {
        return;
    };
    for a in 0..3 {
        for b in 0..3 {
            if a == b {
                continue;
            }
            common::check(
                &ov,
                common::ping_ok(&ov, a, b),
                &format!("fd6e space: site-{} -> site-{}", a + 1, b + 1),
            );
            let dst = second_host_addr(b);
            let ok = common::wait_until(Duration::from_secs(10), || {
                let out = netns::in_netns(ov.sites[a].host_ns.name(), move || {
                    netns::ping6(dst, PingOpts::default())
                })
                .unwrap()
                .unwrap();
                matches!(out, PingOutcome::Reply { from, .. } if from == dst)
            });
            common::check(&ov, ok, &format!("fd6f space: site-{} -> {dst}", a + 1));
        }
    }
    let st = ov.status(0).unwrap();
    // Two DHT slaves with different names own different parts of the address space on one master.
    let slaves = st["master"]["slaves"].as_array().unwrap();
    let id_of = |space: &str| {
        slaves
            .iter()
            .find(|s| s["kind"] == "dht" && s["prefixes"][0] == space)
            .map(|s| (s["id"].clone(), s["name"].clone()))
    };
    let (a, b) = (
        id_of("fd6e::/32").expect("dht for fd6e::/32"),
        id_of("fd6f::/32").expect("dht for fd6f::/32"),
    );
    assert_ne!(a, b);
    let dhts = st["dhts"].as_array().unwrap();
    assert_eq!(dhts.len(), 2);
    for d in dhts {
        let status = &d[1];
        assert!(
            status["tx_packets"].as_u64() >= Some(2),
            "{} carried no packets: {status}",
            d[0]
        );
        // Each network holds only its own overlay's entries: one key per site.
        assert_eq!(
            status["status"]["p2p"]["records_held"].as_u64(),
            Some(3),
            "{}: {status}",
            d[0]
        );
    }
}
