//! Unit tests that need crate internals (test hooks).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use serde_json::json;

fn jcs(v: &Value) -> String {
    String::from_utf8(record::canonical(v)).unwrap()
}

#[test]
fn jcs_rfc8785_example() {
    // RFC 8785 section 3.2.2 input.
    let input = r#"{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    let v: Value = serde_json::from_str(input).unwrap();
    assert_eq!(
        jcs(&v),
        "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
         \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
    );
}

#[test]
fn jcs_rfc8785_sorting() {
    // RFC 8785 section 3.2.3: keys sorted by UTF-16 code units.
    let input = r#"{
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;
    let v: Value = serde_json::from_str(input).unwrap();
    let out = jcs(&v);
    let order: Vec<&str> = [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O",
        "Euro Sign",
        "Emoji",
        "Hebrew Letter",
    ]
    .to_vec();
    let pos: Vec<usize> = order.iter().map(|s| out.find(s).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(out.starts_with("{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\""));
}

#[test]
fn jcs_rfc8785_numbers() {
    // RFC 8785 appendix B (IEEE 754 bit pattern -> canonical text).
    let cases: [(u64, &str); 13] = [
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0x433fffffffffffff, "9007199254740991"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555555, "333333333.3333333"),
    ];
    for (bits, want) in cases {
        let v = json!(f64::from_bits(bits));
        assert_eq!(jcs(&v), want, "{bits:#x}");
    }
    assert_eq!(
        jcs(&json!({"b": 1, "a": [1.0, -0.0, "x"]})),
        r#"{"a":[1,0,"x"],"b":1}"#
    );
}

#[test]
fn args_digest_is_canonical() {
    let a: Value = serde_json::from_str(r#"{"b": 1.0, "a": "x"}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"a":"x","b":1}"#).unwrap();
    assert_eq!(args_digest(&a), args_digest(&b));
    assert_eq!(args_digest(&a).len(), 64);
    // sha256("{}")
    assert_eq!(
        args_digest(&json!({})),
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
}

#[test]
fn preview_redacts_and_bounds() {
    let long = "x".repeat(100);
    let v = json!({
        "path": "/tmp/a",
        "api_key": "sk-123",
        "Authorization": "Bearer abc",
        "nested": {"password": "hunter2", "list": (0..40).collect::<Vec<_>>(), "text": long},
        "deep": [[[[[[[[["bottom"]]]]]]]]],
    });
    let p = redacted_preview(&v);
    assert_eq!(p["path"], "/tmp/a");
    assert_eq!(p["api_key"], "[redacted]");
    assert_eq!(p["Authorization"], "[redacted]");
    assert_eq!(p["nested"]["password"], "[redacted]");
    let list = p["nested"]["list"].as_array().unwrap();
    assert_eq!(list.len(), 17);
    assert_eq!(list[16], "[+24 items]");
    let t = p["nested"]["text"].as_str().unwrap();
    assert!(
        t.starts_with(&"x".repeat(32)) && t.ends_with("...[+68 chars]"),
        "{t}"
    );
    assert!(p.to_string().contains("[nested]"));
    assert!(!p.to_string().contains("hunter2") && !p.to_string().contains("sk-123"));
    // total size bound
    let big: Value = (0..100)
        .map(|i| json!({"k": i, "v": [i, i, i, i]}))
        .collect();
    assert!(redacted_preview(&big).to_string().len() < 4096);
}

fn cfg(dir: &std::path::Path) -> AuditConfig {
    AuditConfig::new(dir.join("audit.log"))
}

fn fields(i: usize) -> Map<String, Value> {
    let Value::Object(m) = json!({"principal": "alice", "i": i}) else {
        unreachable!()
    };
    m
}

#[test]
fn group_commit_one_sync_for_a_burst() {
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(cfg(d.path())).unwrap();
    let syncs_before = log.sync_count();
    // Hold the writer while 32 appends queue up.
    let gate = log.inner.state.gate.lock().unwrap();
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let log = log.clone();
            std::thread::spawn(move || log.append_blocking("test.event", fields(i)).unwrap().seq)
        })
        .collect();
    // Wait until all 32 are queued (31 in the channel + 1 taken by the blocked writer) — we
    // cannot observe the channel length, so give the threads time.
    std::thread::sleep(Duration::from_millis(300));
    drop(gate);
    let mut seqs: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=32).collect::<Vec<u64>>());
    let syncs = log.sync_count() - syncs_before;
    assert!(syncs <= 2, "32 appends took {syncs} fdatasyncs");
    log.close();
    let r = verify(&[d.path().join("audit.log")], None);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 33);
}

/// The metrics hook: the queue depth counts appends the writer has not processed (and is back to
/// zero once they are written), and the observer hears of every fdatasync.
#[test]
fn the_queue_depth_and_every_sync_are_reported() {
    static SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn observe(_: Duration) {
        SYNCS.fetch_add(1, Ordering::Relaxed);
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.mode = SyncMode::Strict;
    let log = AuditLog::open(c).unwrap();
    assert!(log.on_sync(observe));
    assert!(!log.on_sync(observe), "set once");
    assert_eq!(log.queued(), 0);
    let before = log.sync_count();
    let gate = log.inner.state.gate.lock().unwrap();
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let log = log.clone();
            std::thread::spawn(move || log.append_blocking("test.event", fields(i)).unwrap())
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.queued() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "queued {}",
            log.queued()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(log.queued(), 5, "held back by the writer");
    drop(gate);
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(log.queued(), 0);
    let syncs = log.sync_count() - before;
    assert!(syncs >= 1);
    assert_eq!(SYNCS.load(Ordering::Relaxed), syncs, "every sync observed");
}

#[test]
fn short_write_is_rolled_back_and_fails_closed() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("audit.log");
    let log = AuditLog::open(cfg(d.path())).unwrap();
    for i in 0..3 {
        log.append_blocking("e", fields(i)).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    *log.inner.state.inject_short_write.lock().unwrap() = Some(17);
    let err = log.append_blocking("e", fields(9)).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(!log.is_healthy());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "partial record left behind"
    );
    assert!(log.append_blocking("e", fields(10)).is_err());
    log.close();
    let r = verify(&[path], None);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 4);
}

#[test]
fn fail_open_drops_records() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.fail_open = true;
    let log = AuditLog::open(c).unwrap();
    *log.inner.state.inject_short_write.lock().unwrap() = Some(0);
    let r = log.append_blocking("e", fields(1)).unwrap();
    assert_eq!(r.seq, DROPPED_SEQ);
    assert!(!log.is_healthy());
    assert_eq!(
        log.append_blocking("e", fields(2)).unwrap().seq,
        DROPPED_SEQ
    );
    assert_eq!(log.dropped_count(), 2);
    log.close();
    assert!(verify(&[d.path().join("audit.log")], None).is_ok());
}

#[test]
fn handle_is_send_sync_clone_debug() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    assert_traits::<AuditLog>();
    fn assert_future_send<F: std::future::Future + Send>(_: F) {}
    let d = tempfile::tempdir().unwrap();
    let log = AuditLog::open(cfg(d.path())).unwrap();
    assert_future_send(log.append("x", Map::new()));
    assert!(format!("{log:?}").contains("healthy: true"));
}

/// Found by the `audit_chain` fuzz target: JCS writes numbers as doubles, so in a record with
/// the integer 3084805214953730574 the last digits could be changed (…564 is the same double)
/// and the record still verified. `verify` now refuses integers beyond ±(2^53 - 1) as
/// malformed, naming that record; the writer never produces them (they are written as text).
#[test]
fn verify_refuses_integers_the_hash_does_not_bind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut m = Map::new();
    m.insert("big".into(), 3_084_805_214_953_730_574_u64.into());
    m.insert("schema_version".into(), SCHEMA_VERSION.into());
    m.insert("seq".into(), 0.into());
    m.insert("ts".into(), "2026-01-01T00:00:00.000000Z".into());
    m.insert("id".into(), "u".into());
    m.insert("event".into(), "session.opened".into());
    m.insert("prev".into(), record::GENESIS.into());
    let hash = record_hash(&m);
    m.insert("hash".into(), hash.into());
    let line = serde_json::to_string(&m).unwrap();
    assert!(line.contains("3084805214953730574"));
    let forged = line.replace("3084805214953730574", "3084805214953730564");
    for text in [line, forged] {
        std::fs::write(&path, format!("{text}\n")).unwrap();
        let r = verify(std::slice::from_ref(&path), None);
        let f = r.failure.expect("refused");
        assert_eq!(
            (f.line, f.kind),
            (1, FailureKind::Malformed),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("integer beyond"), "{}", f.detail);
    }
}

/// An append writes a batch on its own thread only up to `INLINE_MAX` records: a larger one
/// (hundreds of sessions at once) would hold the runtime thread, and is the writer thread's.
/// The test holds the writer, so the writer thread (which takes the queue only while holding
/// it) cannot take these batches meanwhile.
#[test]
fn appenders_leave_batches_over_the_inline_bound_to_the_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut cfg = AuditConfig::new(&path);
    cfg.mode = SyncMode::Batch {
        interval: std::time::Duration::from_millis(50),
    };
    let log = AuditLog::open(cfg).unwrap();
    let queue_some = |n: usize| -> Vec<oneshot::Receiver<Result<Receipt, AuditError>>> {
        (0..n)
            .map(|i| {
                let f = json!({"i": i}).as_object().unwrap().clone();
                match log.submit("tool.call", f) {
                    // A kick dropped here may wake the writer thread: it then waits for the
                    // writer, which the test holds.
                    Submitted::Queued(rx, _kick) => rx,
                    Submitted::Done(r) => panic!("not queued: {r:?}"),
                }
            })
            .collect()
    };
    let answered = |rxs: Vec<oneshot::Receiver<Result<Receipt, AuditError>>>| {
        rxs.into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap().seq)
            .collect::<Vec<u64>>()
    };

    let w = log.inner.writer.lock().unwrap();
    let big = queue_some(writer::INLINE_MAX + 1);
    let mut w = w;
    assert_eq!(w.write_here(&log.inner.queue), None, "over the bound");
    assert_eq!(
        log.inner.queue.len(),
        writer::INLINE_MAX + 1,
        "all left queued"
    );
    drop(w);
    let seqs = answered(big);
    assert_eq!(
        seqs,
        (1..=writer::INLINE_MAX as u64 + 1).collect::<Vec<_>>()
    );
    assert_eq!(
        log.written_by_appenders(),
        0,
        "the writer thread wrote them"
    );

    let mut w = log.inner.writer.lock().unwrap();
    let small = queue_some(writer::INLINE_MAX);
    assert_eq!(w.write_here(&log.inner.queue), Some(writer::INLINE_MAX));
    drop(w);
    let n = writer::INLINE_MAX as u64;
    assert_eq!(answered(small), (n + 2..=2 * n + 1).collect::<Vec<_>>());
    assert_eq!(
        log.written_by_appenders(),
        n,
        "written by the append, in order"
    );
    log.close();
    let r = verify(std::slice::from_ref(&path), None);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, 2 * n + 2, "log.opened and every append");
}
