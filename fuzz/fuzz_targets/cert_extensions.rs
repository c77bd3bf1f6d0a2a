#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A whole certificate: the parser and both on6 extension decoders.
    let _ = on6::pki::NodeIdentity::from_der(data);
});
