//! Loss hiding on a DHT path, in a test binary of its own: it measures how
//! much of a flow arrives, and on two cores another overlay test running
//! beside it starved a debug-build site long enough (over 100 ms) to
//! overflow its TUN queue of 500 packets, which says nothing about on6.

mod common;

use on6::demo::measure_pair;

#[test]
fn wire_loss_is_hidden_on_dht_paths_too() {
    let Some(ov) = common::build("dht_wire_loss", common::dht(2)) else {
        return;
    };
    // Resolve and connect first: the loss is about the data path.
    common::check(
        &ov,
        common::ping_ok(&ov, 0, 1),
        "site-1 -> site-2 over the DHT",
    );
    common::wire_loss(&ov, 5);
    common::check_udp_loss_hidden(&ov, 5, "DHT path");
    let r = measure_pair(&ov, 0, 1, 0, 10_000_000);
    common::check(
        &ov,
        matches!(r.tcp, Ok((_, true, true))),
        &format!("TCP through 5 % loss over the DHT path: {:?}", r.tcp.err()),
    );
    let st = ov.status(1).unwrap();
    let d = &st["dhts"][0][1];
    assert!(d["arq_recovered"].as_u64() > Some(100), "{d}");
    assert!(
        d["hold_held"].as_u64() > Some(0),
        "no TCP packet waited in order: {d}"
    );
}
