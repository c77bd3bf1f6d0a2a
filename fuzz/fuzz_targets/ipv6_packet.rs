//! Feeds arbitrary bytes to the IPv6/ICMPv6 parsers and builders; any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = on6::packet::Ipv6Packet::new_checked(data) {
        let mut out = Vec::new();
        let _ = on6::packet::build_error(
            on6::packet::IcmpError::TimeExceeded { code: 0 },
            "fd00::1".parse().unwrap(),
            &p,
            &mut out,
        );
        let _ = on6::packet::build_echo_reply(&p, &mut out);
    }
    let _ = on6::packet::parse_icmpv6(data);
});
