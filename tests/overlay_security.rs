//! The wrong peer is refused and bad input is counted and contained: real
//! QUIC clients inside the namespaces talk to a running site's master and
//! tunnel.

mod common;

use bytes::BytesMut;
use ipnet::Ipv6Net;
use on6::control::{ControlMessage, SlaveKind};
use on6::demo::{measure_pair, overlay::Overlay};
use on6::pki::{self, Credentials, Role};
use on6::slave::{self, SlaveError};
use on6::transport::{self, TransportOptions};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn issue(
    dir: &Path,
    ca_dir: &Path,
    name: &str,
    prefixes: &[&str],
    expired: bool,
) -> (Credentials, String) {
    issue_as(dir, ca_dir, name, Role::Slave, prefixes, expired)
}

fn issue_as(
    dir: &Path,
    ca_dir: &Path,
    name: &str,
    role: Role,
    prefixes: &[&str],
    expired: bool,
) -> (Credentials, String) {
    let ca_cert = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(ca_dir.join("ca.key")).unwrap();
    let prefixes: Vec<Ipv6Net> = prefixes.iter().map(|p| p.parse().unwrap()).collect();
    let now = time::OffsetDateTime::now_utc();
    let (nb, na) = if expired {
        (
            now - time::Duration::hours(3),
            now - time::Duration::hours(1),
        )
    } else {
        (
            now - time::Duration::minutes(5),
            now + time::Duration::hours(1),
        )
    };
    let (pair, serial) = pki::issue(
        &ca_cert,
        &ca_key,
        &pki::IssueRequest {
            name,
            role,
            prefixes: &prefixes,
            not_before: nb,
            not_after: na,
        },
    )
    .unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    pki::write_file(&cert, &pair.cert_pem, false).unwrap();
    pki::write_file(&key, &pair.key_pem, true).unwrap();
    (
        Credentials::load(&ca_dir.join("ca.pem"), &cert, &key, None).unwrap(),
        serial,
    )
}

fn master_of(ov: &Overlay, i: usize) -> SocketAddr {
    SocketAddr::new(ov.sites[i].underlay.into(), on6::demo::overlay::MASTER_PORT)
}

/// Attaches as a gateway slave announcing `prefix`, from site 2's namespace.
fn attach(ov: &Overlay, creds: Credentials, prefix: &str) -> Result<Vec<Ipv6Net>, SlaveError> {
    let addr = master_of(ov, 0);
    let prefix: Ipv6Net = prefix.parse().unwrap();
    common::in_ns_async(ov.sites[1].site_ns.name(), move || async move {
        let fut = async {
            let mut port =
                slave::connect_remote(&creds, &TransportOptions::default(), addr, "site-1").await?;
            let hello = ControlMessage::Hello {
                kind: SlaveKind::Gateway,
                name: creds.identity.name.clone(),
                prefixes: vec![prefix],
                mtu: 1400,
            };
            port.hello(hello).await.map(|(p, _)| p)
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or(Err(SlaveError::MasterGone))
    })
}

fn routes(ov: &Overlay, i: usize) -> Vec<String> {
    let st = ov.status(i).expect("status");
    st["master"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect()
}

fn slave_names(ov: &Overlay, i: usize) -> Vec<String> {
    let st = ov.status(i).expect("status");
    st["master"]["slaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"]["peer"].as_str().unwrap().to_string())
        .collect()
}

/// Dials site 1's tunnel from site 2's namespace; how the connection ended.
fn dial_tunnel(ov: &Overlay, creds: Credentials) -> String {
    let addr = SocketAddr::new(ov.sites[0].underlay.into(), on6::demo::overlay::TUNNEL_PORT);
    common::in_ns_async(ov.sites[1].site_ns.name(), move || async move {
        let client = transport::client_config(&creds, &TransportOptions::default()).unwrap();
        let ep = transport::endpoint("0.0.0.0:0".parse().unwrap(), None, client).unwrap();
        let connecting = ep.connect(addr, "site-1").unwrap();
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Err(_) => "handshake timed out".to_string(),
            Ok(Err(e)) => format!("handshake failed: {e}"),
            Ok(Ok(conn)) => match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await
            {
                Ok(reason) => format!("closed: {reason}"),
                Err(_) => "still open".to_string(),
            },
        }
    })
}

#[test]
fn a_tunnel_refuses_sites_it_has_no_tunnel_to() {
    let Some(ov) = common::build("tunnel_refuses", common::options(2)) else {
        return;
    };
    let dir = ov.dir.join("clients");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        // A site certificate of the fleet, under a name site 1 has no tunnel to.
        (
            "site-9",
            Role::Master,
            "fd6e:0:9::/48",
            "site-9 is not a configured peer",
        ),
        // The configured peer's name on a slave certificate.
        (
            "site-2",
            Role::Slave,
            "fd6e:0:2::/48",
            "not a site certificate",
        ),
        // The peer's name and role, not covering the prefixes site 1 sends it.
        (
            "site-2",
            Role::Master,
            "fd6e:0:2:1::/64",
            "does not cover fd6e:0:2::/48",
        ),
    ];
    for (name, role, prefix, why) in cases {
        let (creds, _) = issue_as(&dir, &ov.dir, name, role, &[prefix], false);
        let ended = dial_tunnel(&ov, creds);
        assert!(ended.contains(why), "{name} ({role}, {prefix}): {ended}");
    }
    // The real tunnel is untouched.
    assert!(common::ping_ok(&ov, 0, 1) && common::ping_ok(&ov, 1, 0));
}

#[test]
fn wrong_peers_are_refused() {
    let Some(ov) = common::build("wrong_peers_are_refused", common::options(2)) else {
        return;
    };
    let dir = ov.dir.join("clients");
    std::fs::create_dir_all(&dir).unwrap();

    // Control: a proper fleet slave attaches and installs its route.
    let (good, _) = issue(&dir, &ov.dir, "good-slave", &["fd6e:0:1:10::/64"], false);
    assert_eq!(
        attach(&ov, good, "fd6e:0:1:10::/64").unwrap(),
        vec!["fd6e:0:1:10::/64".parse::<Ipv6Net>().unwrap()]
    );
    assert!(routes(&ov, 0).contains(&"fd6e:0:1:10::/64".to_string()));

    // A certificate from another CA never completes.
    let rogue_ca = dir.join("rogue");
    std::fs::create_dir_all(&rogue_ca).unwrap();
    let pair = pki::init_ca("rogue", 1).unwrap();
    pki::write_file(&rogue_ca.join("ca.pem"), &pair.cert_pem, false).unwrap();
    pki::write_file(&rogue_ca.join("ca.key"), &pair.key_pem, true).unwrap();
    let (mut rogue, _) = issue(&dir, &rogue_ca, "rogue-slave", &["fd6e:0:1:11::/64"], false);
    // It trusts the fleet CA for the server side; only its own certificate is foreign.
    rogue.ca = pki::load_certs(&ov.dir.join("ca.pem")).unwrap().remove(0);
    let err = attach(&ov, rogue, "fd6e:0:1:11::/64").unwrap_err();
    eprintln!("other CA: {err}");
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("unknown ca"),
        "{err}"
    );

    // An expired certificate never completes.
    let (expired, _) = issue(&dir, &ov.dir, "expired-slave", &["fd6e:0:1:12::/64"], true);
    let err = attach(&ov, expired, "fd6e:0:1:12::/64").unwrap_err();
    eprintln!("expired: {err}");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");

    // A revoked certificate never completes (the site re-reads its list without a restart).
    let (revoked, serial) = issue(&dir, &ov.dir, "revoked-slave", &["fd6e:0:1:13::/64"], false);
    let list = ov.dir.join("revoked.txt");
    let mut text = std::fs::read_to_string(&list).unwrap();
    text.push_str(&format!("{serial}  # revoked-slave\n"));
    std::fs::write(&list, text).unwrap();
    let err = attach(&ov, revoked, "fd6e:0:1:13::/64").unwrap_err();
    eprintln!("revoked: {err}");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");

    // A fleet slave announcing outside its certificate is told which prefix, and installs nothing.
    let (outside, _) = issue(&dir, &ov.dir, "outside-slave", &["fd6e:0:1:14::/64"], false);
    match attach(&ov, outside, "fd6e:0:9::/48") {
        Err(SlaveError::Refused { prefix, reason }) => {
            assert_eq!(prefix, "fd6e:0:9::/48");
            assert!(reason.contains("outside"), "{reason}");
        }
        other => panic!("expected a refusal naming the prefix, got {other:?}"),
    }

    let names = slave_names(&ov, 0);
    for refused in ["rogue-slave", "expired-slave", "revoked-slave"] {
        assert!(
            !names.contains(&refused.to_string()),
            "{refused} got a session: {names:?}"
        );
    }
    let r = routes(&ov, 0);
    for p in [
        "fd6e:0:1:11::/64",
        "fd6e:0:1:12::/64",
        "fd6e:0:1:13::/64",
        "fd6e:0:9::/48",
    ] {
        assert!(!r.contains(&p.to_string()), "{p} installed: {r:?}");
    }
    let st = ov.status(0).unwrap();
    assert!(
        st["remote"]["handshakes_failed"].as_u64() >= Some(3),
        "{}",
        st["remote"]
    );
    assert!(
        st["master"]["stats"]["drops"]["refused_announce"].as_u64() >= Some(1),
        "{}",
        st["master"]["stats"]
    );
}

/// Writes raw bytes on a fresh control stream and returns the master's answer.
async fn raw_control(creds: Credentials, addr: SocketAddr, bytes: Vec<u8>) -> String {
    let opts = TransportOptions::default();
    let ep = transport::endpoint(
        "0.0.0.0:0".parse().unwrap(),
        None,
        transport::client_config(&creds, &opts).unwrap(),
    )
    .unwrap();
    let conn = ep.connect(addr, "site-1").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes).await.unwrap();
    let answer = match tokio::time::timeout(
        Duration::from_secs(5),
        transport::read_control(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(ControlMessage::Error { reason }))) => reason,
        other => format!("no error frame: {other:?}"),
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(
        closed.is_ok(),
        "the master closes a session that sent garbage"
    );
    answer
}

#[test]
fn malformed_input_is_counted_and_contained() {
    let Some(ov) = common::build("malformed_input", common::options(3)) else {
        return;
    };
    let dir = ov.dir.join("clients");
    std::fs::create_dir_all(&dir).unwrap();
    let (creds, _) = issue(&dir, &ov.dir, "noisy-slave", &["fd6e:0:1:20::/64"], false);
    let addr = master_of(&ov, 0);
    let before = ov.status(0).unwrap();
    let malformed_before = before["master"]["stats"]["drops"]["malformed"]
        .as_u64()
        .unwrap_or(0);

    std::thread::scope(|s| {
        // A transfer between two other sites' hosts runs throughout.
        let transfer = s.spawn(|| measure_pair(&ov, 1, 2, 1, 20_000_000));

        let c = creds.clone();
        let answers = common::in_ns_async(ov.sites[1].site_ns.name(), move || async move {
            // A valid session that then sends garbage datagrams.
            let mut port = slave::connect_remote(&c, &TransportOptions::default(), addr, "site-1")
                .await
                .unwrap();
            let hello = ControlMessage::Hello {
                kind: SlaveKind::Gateway,
                name: "noisy".into(),
                prefixes: vec!["fd6e:0:1:20::/64".parse().unwrap()],
                mtu: 1400,
            };
            port.hello(hello).await.unwrap();
            let mut garbage: Vec<Vec<u8>> =
                vec![vec![0xde, 0xad, 0xbe, 0xef], vec![0x60; 20], vec![0x45; 60]];
            let mut wrong_len = vec![0u8; 60];
            wrong_len[0] = 0x60;
            wrong_len[5] = 200; // payload length says 200, 20 bytes follow
            garbage.push(wrong_len);
            for _ in 0..25 {
                for g in &garbage {
                    port.up.packet(BytesMut::from(&g[..])).unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;

            let mut answers = Vec::new();
            answers.push(raw_control(c.clone(), addr, vec![0, 0, 0, 2, 9, 1]).await);
            answers.push(raw_control(c.clone(), addr, vec![0, 0, 0, 2, 1, 200]).await);
            answers.push(raw_control(c.clone(), addr, vec![0xff, 0xff, 0xff, 0xff, 1, 1]).await);
            // A Hello cut short inside its name.
            answers.push(raw_control(c.clone(), addr, vec![0, 0, 0, 6, 1, 1, 1, 0, 9, b'x']).await);
            answers
        });
        eprintln!("master answers: {answers:#?}");
        assert!(
            answers[0].contains("unsupported control protocol version 9"),
            "{}",
            answers[0]
        );
        assert!(
            answers[1].contains("unknown control message type 200"),
            "{}",
            answers[1]
        );
        assert!(answers[2].contains("exceeds"), "{}", answers[2]);
        assert!(answers[3].contains("malformed"), "{}", answers[3]);

        let r = transfer.join().unwrap();
        match r.tcp {
            Ok((_, intact, own)) => common::check(
                &ov,
                intact && own,
                "the concurrent transfer between sites 2 and 3 arrived intact",
            ),
            Err(e) => common::check(&ov, false, &format!("concurrent transfer failed: {e}")),
        }
    });

    let st = ov.status(0).expect("site-1 still answers");
    let malformed = st["master"]["stats"]["drops"]["malformed"]
        .as_u64()
        .unwrap_or(0)
        - malformed_before;
    assert!(
        malformed >= 100,
        "malformed datagrams counted: {malformed}; {}",
        st["master"]["stats"]
    );
    assert!(
        st["remote"]["control_errors"].as_u64() >= Some(4),
        "{}",
        st["remote"]
    );
    // Every pair still works afterwards.
    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 1)] {
        let r = measure_pair(&ov, a, b, 2, 1);
        common::check(
            &ov,
            r.pings_received >= 1,
            &format!("{} -> {} after the garbage", r.from, r.to),
        );
    }
}
