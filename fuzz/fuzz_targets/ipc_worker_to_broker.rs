//! Bytes from a (compromised) worker, as the broker reads them: packets reassembled by the
//! `FrameDecoder`, decoded as `WorkerToBroker`, then run through the broker's validators of
//! worker messages (tool descriptors, results, change notifications, client requests).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpd::fuzzing::{change_ok, client_request_ok, result_json, validate_tools};
use mcpd_ipc::{decode, encode, FrameDecoder, WorkerToBroker};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode::<WorkerToBroker>(data) {
        check(m);
    }
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let mut d = FrameDecoder::new(if k & 1 == 0 { 1 << 16 } else { 1 << 24 });
    for packet in rest.chunks(usize::from(k).max(1)) {
        if d.push(packet).is_err() {
            return;
        }
        while let Some(frame) = d.next_frame() {
            if let Ok(m) = decode::<WorkerToBroker>(&frame) {
                check(m);
            }
        }
    }
    let _ = d.finish();
});

fn check(m: WorkerToBroker) {
    let frame = encode(&m).expect("a decoded message encodes");
    let again: WorkerToBroker = decode(&frame[4..]).expect("and decodes again");
    assert_eq!(encode(&again).ok(), Some(frame));
    match m {
        WorkerToBroker::Ready { tools, .. } => {
            let n = tools.len();
            let kept = validate_tools(tools);
            assert!(kept.len() <= n);
            let mut names: Vec<&str> = kept.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), kept.len(), "duplicate tool names kept");
        }
        WorkerToBroker::Result { result, .. } => {
            if let Some(v) = result_json(result) {
                assert!(v.is_object());
                assert!(serde_json::to_string(&v).is_ok());
            }
        }
        WorkerToBroker::Changed { change } => {
            let _ = change_ok(&change);
        }
        WorkerToBroker::ClientRequest { request, .. } => {
            let _ = client_request_ok(&request);
        }
        _ => {}
    }
}
