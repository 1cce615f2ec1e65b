//! Bytes from the broker, as the worker reads them: split into packets, reassembled by the
//! `FrameDecoder` with the worker's limits, each frame decoded as a `BrokerToWorker` (the first
//! one, `Confine`, is what the worker trusts to build its sandbox). A decoded message must
//! re-encode to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpd_ipc::{decode, encode, BrokerToWorker, FrameDecoder, SandboxSpec};

fuzz_target!(|data: &[u8]| {
    // A raw payload first (what `recv_blocking` hands to `decode`).
    if let Ok(m) = decode::<BrokerToWorker>(data) {
        roundtrip(&m);
    }
    let _ = decode::<SandboxSpec>(data);
    // Then the same bytes as a packet stream: the first byte picks the packet size.
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let mut d = FrameDecoder::new(if k & 1 == 0 { 1 << 16 } else { 1 << 24 });
    for packet in rest.chunks(usize::from(k).max(1)) {
        if d.push(packet).is_err() {
            return;
        }
        while let Some(frame) = d.next_frame() {
            if let Ok(m) = decode::<BrokerToWorker>(&frame) {
                roundtrip(&m);
            }
        }
    }
    let _ = d.finish();
});

fn roundtrip(m: &BrokerToWorker) {
    let frame = encode(m).expect("a decoded message encodes");
    let again: BrokerToWorker = decode(&frame[4..]).expect("and decodes again");
    // Compare encodings, not values: floats may be NaN.
    assert_eq!(encode(&again).ok(), Some(frame));
}
