//! Feeds arbitrary bytes to the tunnel datagram parser and the ARQ receiver; any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use on6::transport::arq::{ArqReceiver, ArqSender, Frame, ReceiverConfig, SenderConfig};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut rx = ArqReceiver::new(ReceiverConfig::default());
    let mut tx = ArqSender::new(SenderConfig::default());
    for _ in 0..4 {
        tx.sent(bytes::Bytes::from_static(b"x"), now);
    }
    for chunk in data.chunks(16) {
        match Frame::parse(chunk) {
            Ok(Frame::Data { seq, .. }) => {
                rx.on_data(seq);
            }
            Ok(Frame::Nack(ranges)) => {
                let mut out = Vec::new();
                tx.on_nack(&ranges, now, &mut out);
            }
            Err(_) => {}
        }
        let _ = rx.poll_nack(now, Duration::from_millis(1));
    }
});
