#![no_main]
use libfuzzer_sys::fuzz_target;
use on6::control::ControlMessage;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = ControlMessage::frame_len([data[0], data[1], data[2], data[3]]);
    }
    if let Ok(msg) = ControlMessage::decode(data) {
        // What decodes must re-encode to the same bytes.
        let frame = msg.to_frame();
        assert_eq!(&frame[4..], data);
    }
});
