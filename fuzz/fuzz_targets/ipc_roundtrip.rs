//! Structure-aware, differential: `Arbitrary` messages of both directions (derived behind
//! mcpd-ipc's `fuzzing` feature) through encode → packets → FrameDecoder → decode must come back
//! identical (compared by re-encoding, since floats may be NaN), or be refused by encode as too
//! large, never silently changed.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcpd_ipc::codec::packets;
use mcpd_ipc::{
    decode, encode, BrokerToWorker, CodecError, FrameDecoder, WorkerToBroker, MAX_FRAME,
};
use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, Arbitrary)]
enum Either {
    B(BrokerToWorker),
    W(WorkerToBroker),
}

fuzz_target!(|e: Either| {
    match e {
        Either::B(m) => roundtrip(&m),
        Either::W(m) => roundtrip(&m),
    }
});

fn roundtrip<T: Serialize + DeserializeOwned + std::fmt::Debug>(m: &T) {
    let frame = match encode(m) {
        Ok(f) => f,
        Err(CodecError::FrameTooLarge { .. }) => return,
        Err(e) => panic!("encode failed: {e}"),
    };
    assert!(frame.len() - 4 <= MAX_FRAME);
    let mut d = FrameDecoder::default();
    for p in packets(&frame) {
        d.push(p).expect("push");
    }
    let payload = d.next_frame().expect("one complete frame");
    assert!(d.is_idle());
    assert_eq!(payload, frame[4..]);
    let back: T = decode(&payload).expect("decode what was encoded");
    assert_eq!(encode(&back).ok().as_deref(), Some(&frame[..]), "{m:?}");
}
