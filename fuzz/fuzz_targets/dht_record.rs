//! Feeds arbitrary bytes to the DHT record decoder (values come from any
//! Kademlia peer); any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use on6::pki::NodeIdentity;
use on6::slave::dht::record::{decode_value, encode_value, merge};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = decode_value(data) else {
        return;
    };
    // What decodes re-encodes to the same bytes.
    assert_eq!(encode_value(&entries), data);
    for e in &entries {
        let _ = e.verify(0, |cert| NodeIdentity::from_der(cert).map_err(|e| e.to_string()));
    }
    let mut kept = Vec::new();
    merge(&mut kept, entries, 0);
});
