//! Integration tests for mcpd-audit: chain, tampering, rotation, recovery, group commit,
//! checkpoints, journald, fail closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcpd_audit::{
    discover_files, generate_key, query, read_records, record_hash, verify, verify_with_head,
    verify_without_head, AuditConfig, AuditLog, FailureKind, Query, SyncMode, VerifyReport,
};
use serde_json::{json, Map, Value};

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn log_path(d: &Path) -> PathBuf {
    d.join("audit.log")
}

/// A closed log with `log.opened` + `n` tool calls (seq 0..=n).
fn make_log(d: &Path, n: usize) -> PathBuf {
    let p = log_path(d);
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    for i in 0..n {
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        log.append_blocking("tool.call", fields(json!({"principal": who, "i": i})))
            .unwrap();
    }
    log.close();
    p
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.join("\n") + "\n").unwrap();
}

fn parse(line: &str) -> Map<String, Value> {
    serde_json::from_str(line).unwrap()
}

fn rehash(mut m: Map<String, Value>) -> String {
    let h = record_hash(&m);
    m.insert("hash".into(), h.into());
    serde_json::to_string(&m).unwrap()
}

fn expect_failure(r: &VerifyReport, kind: FailureKind, line: u64, seq: Option<u64>) {
    let f = r
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected {kind:?}, verify passed: {r}"));
    assert_eq!((f.kind, f.line, f.seq), (kind, line, seq), "{r}");
}

#[test]
fn chain_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let recs = read_records(std::slice::from_ref(&p)).unwrap();
    assert_eq!(recs.len(), 11);
    assert_eq!(recs[0]["event"], "log.opened");
    assert_eq!(recs[0]["prev"], "0".repeat(64));
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64);
        assert_eq!(r["schema_version"], 1);
        assert_eq!(r["id"].as_str().unwrap().len(), 32);
        let ts = r["ts"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        let m = r.as_object().unwrap();
        assert_eq!(record_hash(m), r["hash"].as_str().unwrap());
        if i > 0 {
            assert_eq!(r["prev"], recs[i - 1]["hash"]);
        }
    }
    assert_eq!(recs[3]["principal"], "alice");
    assert_eq!(recs[4]["principal"], "bob");
    assert_eq!(recs[3]["i"], 2);
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let r = verify(&[p], None);
    assert!(r.is_ok(), "{r}");
    assert_eq!((r.records, r.files, r.last_seq), (11, 1, Some(10)));
}

#[test]
fn envelope_fields_win() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    let r = log
        .append_blocking(
            "x",
            fields(json!({"seq": 999, "hash": "no", "event": "fake", "ok": 1})),
        )
        .unwrap();
    log.close();
    let recs = read_records(std::slice::from_ref(&p)).unwrap();
    assert_eq!(recs[1]["seq"], r.seq);
    assert_eq!(recs[1]["event"], "x");
    assert_eq!(recs[1]["ok"], 1);
    assert!(verify(&[p], None).is_ok());
}

#[test]
fn tamper_modify_field() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    assert!(l[4].contains("\"bob\""));
    l[4] = l[4].replace("\"bob\"", "\"mallory\"");
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Modified, 5, Some(4));
}

#[test]
fn tamper_delete_middle_line() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    l.remove(5); // seq 5
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Deleted, 6, Some(6));
}

#[test]
fn tamper_delete_first_line() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 5);
    let mut l = lines(&p);
    l.remove(0);
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Deleted, 1, Some(1));
}

#[test]
fn tamper_swap_lines() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    l.swap(5, 6);
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Reordered, 6, Some(6));
}

#[test]
fn tamper_move_line_backwards() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    let x = l.remove(2);
    l.insert(8, x); // ... 7, 8, 2, 9 ...
    write_lines(&p, &l);
    let r = verify(&[p], None);
    // seq 3 now directly follows seq 1: the gap is filled later by seq 2 -> not Deleted.
    let f = r.failure.unwrap();
    assert!(
        matches!(f.kind, FailureKind::Inserted | FailureKind::Reordered),
        "{f:?}"
    );
    assert_eq!(f.line, 3);
}

#[test]
fn tamper_insert_forged_line() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    // A forged record that claims seq 6 and chains from seq 5, with a valid own hash.
    let prev = parse(&l[5]);
    let mut forged = parse(&l[6]);
    forged.insert("principal".into(), "root".into());
    forged.insert("prev".into(), prev["hash"].clone());
    l.insert(6, rehash(forged));
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Inserted, 7, Some(6));
}

#[test]
fn tamper_insert_stray_line() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    let mut forged = parse(&l[3]);
    forged.insert("seq".into(), 500.into());
    forged.insert("prev".into(), "ab".repeat(32).into());
    l.insert(4, rehash(forged));
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Inserted, 5, Some(500));
}

#[test]
fn tamper_rehashed_modification_breaks_next_link() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let mut l = lines(&p);
    let mut m = parse(&l[4]);
    m.insert("principal".into(), "mallory".into());
    l[4] = rehash(m);
    write_lines(&p, &l);
    expect_failure(&verify(&[p], None), FailureKind::Inserted, 6, Some(5));
}

#[test]
fn malformed_line() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 5);
    let mut l = lines(&p);
    l[2] = "not json".into();
    write_lines(&p, &l);
    expect_failure(
        &verify(std::slice::from_ref(&p), None),
        FailureKind::Malformed,
        3,
        None,
    );
    let mut l = lines(&p);
    let mut m = parse(&l[3]);
    m.remove("ts");
    l[3] = rehash(m);
    l[2] = lines(&make_log(tempfile::tempdir().unwrap().path(), 5))[2].clone();
    write_lines(&p, &l);
    let r = verify(&[p], None);
    assert!(r.failure.is_some());
}

fn keys(d: &Path) -> (PathBuf, PathBuf) {
    let (sk, pk) = (d.join("ck.pem"), d.join("ck.pub.pem"));
    generate_key(&sk, &pk).unwrap();
    (sk, pk)
}

/// A closed log with checkpoints every 5 records.
fn make_signed_log(d: &Path, n: usize) -> (PathBuf, PathBuf) {
    let (sk, pk) = keys(d);
    let p = log_path(d);
    let mut c = AuditConfig::new(&p);
    c.checkpoint_key = Some(sk);
    c.checkpoint_every = 5;
    let log = AuditLog::open(c).unwrap();
    for i in 0..n {
        log.append_blocking("tool.call", fields(json!({"principal": "alice", "i": i})))
            .unwrap();
    }
    log.close();
    (p, pk)
}

#[test]
fn checkpoints_verify_and_head_file() {
    let d = tempfile::tempdir().unwrap();
    let (p, pk) = make_signed_log(d.path(), 22);
    let recs = read_records(std::slice::from_ref(&p)).unwrap();
    let cps: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "log.checkpoint")
        .collect();
    // One after `log.opened`, then (22 calls) after 5, 10, 15, 20 of them, + one on close.
    assert_eq!(cps.len(), 6);
    assert_eq!(recs[1]["event"], "log.checkpoint");
    let last = recs.last().unwrap();
    assert_eq!(last["event"], "log.checkpoint");
    let head: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("audit.log.head")).unwrap())
            .unwrap();
    assert_eq!(head["checkpoint_seq"], last["seq"]);
    assert_eq!(head["covers_seq"], last["covers_seq"]);
    assert_eq!(head["sig"], last["sig"]);
    let r = verify(std::slice::from_ref(&p), Some(&pk));
    assert!(r.is_ok(), "{r}");
    assert!(r.head_checked);
    assert_eq!(r.checkpoints_verified, 7); // 6 records + head
                                           // Without the key it still verifies, with a warning.
    let r = verify(&[p], None);
    assert!(r.is_ok() && !r.warnings.is_empty(), "{r}");
}

#[test]
fn tamper_truncate_tail_detected_with_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let (p, pk) = make_signed_log(d.path(), 22);
    let mut l = lines(&p);
    let n = l.len();
    l.truncate(n - 4);
    write_lines(&p, &l);
    expect_failure(
        &verify(std::slice::from_ref(&p), Some(&pk)),
        FailureKind::Truncated,
        n as u64 - 3,
        Some(n as u64 - 4),
    );
    // Only removing the final checkpoint record is detected as well.
    let d2 = tempfile::tempdir().unwrap();
    let (p2, pk2) = make_signed_log(d2.path(), 7);
    let mut l2 = lines(&p2);
    l2.pop();
    write_lines(&p2, &l2);
    assert_eq!(
        verify(&[p2], Some(&pk2)).failure.unwrap().kind,
        FailureKind::Truncated
    );
    // Without a key, a cut-off tail is NOT detectable (documented).
    assert!(verify(&[p], None).is_ok());
}

#[test]
fn tamper_flip_checkpoint_signature() {
    let d = tempfile::tempdir().unwrap();
    let (p, pk) = make_signed_log(d.path(), 12);
    let mut l = lines(&p);
    let idx = l
        .iter()
        .position(|x| x.contains("\"log.checkpoint\""))
        .unwrap();
    let mut m = parse(&l[idx]);
    let sig = m["sig"].as_str().unwrap().to_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    m.insert("sig".into(), flipped.into());
    l[idx] = rehash(m);
    write_lines(&p, &l);
    expect_failure(
        &verify(std::slice::from_ref(&p), Some(&pk)),
        FailureKind::BadSignature,
        idx as u64 + 1,
        Some(idx as u64),
    );
    // A different key does not verify either.
    let other = tempfile::tempdir().unwrap();
    let (_, pk2) = keys(other.path());
    let d2 = tempfile::tempdir().unwrap();
    let (p2, _) = make_signed_log(d2.path(), 6);
    assert_eq!(
        verify(&[p2], Some(&pk2)).failure.unwrap().kind,
        FailureKind::BadSignature
    );
}

#[test]
fn tamper_head_file_signature() {
    let d = tempfile::tempdir().unwrap();
    let (p, pk) = make_signed_log(d.path(), 6);
    let hp = d.path().join("audit.log.head");
    let mut head: Value = serde_json::from_str(&std::fs::read_to_string(&hp).unwrap()).unwrap();
    head["covers_seq"] = json!(head["covers_seq"].as_u64().unwrap() + 100);
    std::fs::write(&hp, head.to_string()).unwrap();
    let r = verify(&[p], Some(&pk));
    assert_eq!(r.failure.unwrap().kind, FailureKind::BadSignature);
}

#[test]
fn rotation_continues_chain_any_order() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let mut c = AuditConfig::new(&p);
    c.rotate_bytes = Some(2000);
    let log = AuditLog::open(c.clone()).unwrap();
    for i in 0..60 {
        log.append_blocking("tool.call", fields(json!({"principal": "alice", "i": i})))
            .unwrap();
    }
    log.close();
    let files = discover_files(&p).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files.last().unwrap(), &p);
    // Every later file starts with log.rotated chained to the previous file's last record.
    for w in files.windows(2) {
        let prev_last = parse(lines(&w[0]).last().unwrap());
        let first = parse(&lines(&w[1])[0]);
        assert_eq!(first["event"], "log.rotated");
        assert_eq!(first["prev"], prev_last["hash"]);
        assert_eq!(
            first["seq"].as_u64().unwrap(),
            prev_last["seq"].as_u64().unwrap() + 1
        );
        let name = w[0].file_name().unwrap().to_str().unwrap();
        assert_eq!(
            name,
            format!("audit.log.{:020}", prev_last["seq"].as_u64().unwrap())
        );
    }
    let mut shuffled = files.clone();
    shuffled.reverse();
    shuffled.swap(0, 1);
    let r = verify(&shuffled, None);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.files, files.len());
    let recs = read_records(&shuffled).unwrap();
    assert!(recs
        .windows(2)
        .all(|w| w[1]["seq"].as_u64() == w[0]["seq"].as_u64().map(|s| s + 1)));
    // Dropping a middle file is a deletion.
    let mut missing = files.clone();
    missing.remove(1);
    assert_eq!(
        verify(&missing, None).failure.unwrap().kind,
        FailureKind::Deleted
    );
    // Only the newest files (older ones pruned): verifies with a warning.
    let r = verify(&files[2..], None);
    assert!(r.is_ok() && !r.warnings.is_empty(), "{r}");
    // Reopen after rotation continues.
    let log = AuditLog::open(c).unwrap();
    let next = log.append_blocking("x", Map::new()).unwrap().seq;
    log.close();
    assert_eq!(next, recs.last().unwrap()["seq"].as_u64().unwrap() + 2);
    assert!(verify(&discover_files(&p).unwrap(), None).is_ok());
}

#[test]
fn crash_after_rotation_continues_from_rotated_file() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 5);
    let rotated = d.path().join(format!("audit.log.{:020}", 5));
    std::fs::rename(&p, &rotated).unwrap(); // as if we crashed before log.rotated was written
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    log.close();
    let l = lines(&p);
    assert_eq!(parse(&l[0])["event"], "log.rotated");
    assert_eq!(parse(&l[0])["seq"], 6);
    assert!(verify(&discover_files(&p).unwrap(), None).is_ok());
}

#[test]
fn reopen_continues_seq() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 3);
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    let r = log.append_blocking("again", Map::new()).unwrap();
    log.close();
    assert_eq!(r.seq, 5); // 0 opened, 1..3 calls, 4 opened(resumed), 5
    let recs = read_records(std::slice::from_ref(&p)).unwrap();
    assert_eq!(recs[4]["event"], "log.opened");
    assert_eq!(recs[4]["resumed"], true);
    assert!(verify(&[p], None).is_ok());
}

#[test]
fn partial_last_line_is_truncated_and_recorded() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 3);
    let good_len = std::fs::metadata(&p).unwrap().len();
    let torn = b"{\"schema_version\":1,\"seq\":4,\"ts\":\"2025";
    let mut data = std::fs::read(&p).unwrap();
    data.extend_from_slice(torn);
    std::fs::write(&p, &data).unwrap();
    // A torn tail is a warning for verify, not a failure.
    let r = verify(std::slice::from_ref(&p), None);
    assert!(r.is_ok(), "{r}");
    assert!(r.warnings.iter().any(|w| w.contains("incomplete")), "{r}");
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    log.close();
    let recs = read_records(std::slice::from_ref(&p)).unwrap();
    assert_eq!(recs[4]["event"], "log.recovered");
    assert_eq!(recs[4]["truncated_bytes"], torn.len() as u64);
    assert_eq!(recs[4]["seq"], 4);
    assert_eq!(recs[5]["event"], "log.opened");
    assert!(std::fs::metadata(&p).unwrap().len() > good_len);
    let r = verify(&[p], None);
    assert!(
        r.is_ok() && r.warnings.iter().all(|w| !w.contains("incomplete")),
        "{r}"
    );
}

#[test]
fn unreadable_last_record_refuses_to_open() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 2);
    let mut l = lines(&p);
    l.push("garbage".into());
    write_lines(&p, &l);
    let before = std::fs::read(&p).unwrap();
    assert!(AuditLog::open(AuditConfig::new(&p)).is_err());
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

#[test]
fn group_commit_threads_strict() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    let syncs0 = log.sync_count();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
    let hs: Vec<_> = (0..32)
        .map(|i| {
            let (log, b) = (log.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                log.append_blocking("t", fields(json!({"i": i})))
                    .unwrap()
                    .seq
            })
        })
        .collect();
    let mut seqs: Vec<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=32).collect::<Vec<_>>());
    let syncs = log.sync_count() - syncs0;
    eprintln!("32 concurrent strict appends: {syncs} fdatasync calls");
    assert!((1..32).contains(&syncs), "{syncs}");
    log.close();
    assert!(verify(&[p], None).is_ok());
}

#[test]
fn group_commit_async_tasks() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let seqs = appends_from_tasks(&log, &rt, 64, 1, 0);
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    assert!(log.sync_count() < 65);
    log.close();
    assert!(verify(&[p], None).is_ok());
}

#[test]
fn batch_mode_syncs_periodically_and_on_close() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(batch_cfg(&p)).unwrap();
    let s0 = log.sync_count();
    for i in 0..100 {
        log.append_blocking("b", fields(json!({"i": i}))).unwrap();
    }
    // Written (visible) before any sync is required.
    assert_eq!(read_records(std::slice::from_ref(&p)).unwrap().len(), 101);
    std::thread::sleep(Duration::from_millis(150));
    let s1 = log.sync_count();
    assert!(s1 > s0 && s1 - s0 < 10, "{s0} {s1}");
    log.append_blocking("b", Map::new()).unwrap();
    log.close();
    assert!(log.sync_count() > s1);
    assert!(log.append_blocking("late", Map::new()).is_err());
    assert!(verify(&[p], None).is_ok());
}

#[test]
fn query_filters() {
    let d = tempfile::tempdir().unwrap();
    let p = make_log(d.path(), 10);
    let files = discover_files(&p).unwrap();
    let all = query(&files, &Query::default()).unwrap();
    assert_eq!(all.len(), 11);
    let bob = query(
        &files,
        &Query {
            principal: Some("bob".into()),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(bob.len(), 5);
    let last2 = query(
        &files,
        &Query {
            principal: Some("alice".into()),
            limit: Some(2),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(
        last2
            .iter()
            .map(|r| r["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![6, 8]
    );
    let ts5 = all[5]["ts"].as_str().unwrap().to_owned();
    let since = query(
        &files,
        &Query {
            since: Some(ts5),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(since.first().unwrap()["seq"], 5);
    // `until` is inclusive, and composes with `since`.
    let until = query(
        &files,
        &Query {
            until: Some(all[5]["ts"].as_str().unwrap().to_owned()),
            ..Query::default()
        },
    )
    .unwrap();
    let (t3, t5) = (
        all[3]["ts"].as_str().unwrap(),
        all[5]["ts"].as_str().unwrap(),
    );
    let seqs = |v: &[serde_json::Value], f: &dyn Fn(&str) -> bool| -> Vec<u64> {
        v.iter()
            .filter(|r| f(r["ts"].as_str().unwrap()))
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    // (Records written within one microsecond share a timestamp: compare with the log.)
    assert_eq!(seqs(&until, &|_| true), seqs(&all, &|t| t <= t5));
    assert!(seqs(&until, &|_| true).contains(&5));
    let window = query(
        &files,
        &Query {
            since: Some(all[3]["ts"].as_str().unwrap().to_owned()),
            until: Some(all[5]["ts"].as_str().unwrap().to_owned()),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(
        seqs(&window, &|_| true),
        seqs(&all, &|t| t >= t3 && t <= t5)
    );
    assert!([3, 4, 5]
        .iter()
        .all(|n| seqs(&window, &|_| true).contains(n)));
    let future = query(
        &files,
        &Query {
            since: Some("9999".into()),
            ..Query::default()
        },
    )
    .unwrap();
    assert!(future.is_empty());
    let past = query(
        &files,
        &Query {
            since: Some("2000-01-01".into()),
            ..Query::default()
        },
    );
    assert_eq!(past.unwrap().len(), 11);
    let ev = query(
        &files,
        &Query {
            event: Some("log.opened".into()),
            ..Query::default()
        },
    );
    assert_eq!(ev.unwrap().len(), 1);
}

#[test]
fn journald_forwarding() {
    use std::os::unix::net::UnixDatagram;
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("journal.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let p = log_path(d.path());
    let mut c = AuditConfig::new(&p);
    c.journald_socket = Some(sock_path);
    let log = AuditLog::open(c).unwrap();
    log.append_blocking(
        "tool.denied",
        fields(json!({"principal": "eve", "note": "a\nb"})),
    )
    .unwrap();
    log.close();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        let n = sock.recv(&mut buf).unwrap();
        got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    assert!(got[0].contains("MCPD_EVENT=log.opened\n") && got[0].contains("MCPD_SEQ=0\n"));
    assert!(got[0].contains("PRIORITY=5\n"));
    let g = &got[1];
    assert!(
        g.contains("MCPD_EVENT=tool.denied\n") && g.contains("MCPD_SEQ=1\n"),
        "{g}"
    );
    assert!(g.contains("PRIORITY=4\n") && g.contains("SYSLOG_IDENTIFIER=mcpd-audit\n"));
    let mid = g
        .lines()
        .find_map(|l| l.strip_prefix("MESSAGE_ID="))
        .unwrap();
    assert_eq!(mid.len(), 32);
    assert!(mid.bytes().all(|b| b.is_ascii_hexdigit()));
    let rec = g
        .lines()
        .find_map(|l| l.strip_prefix("MCPD_RECORD="))
        .unwrap();
    let rec: Value = serde_json::from_str(rec).unwrap();
    assert_eq!(rec, read_records(std::slice::from_ref(&p)).unwrap()[1]);
    // A missing socket never blocks or fails the log.
    let mut c = AuditConfig::new(d.path().join("other.log"));
    c.journald_socket = Some(d.path().join("nope.sock"));
    let log = AuditLog::open(c).unwrap();
    log.append_blocking("x", Map::new()).unwrap();
    assert!(log.is_healthy());
    log.close();
}

use mcpd_e2e::require;

/// Fill a tiny tmpfs so that write(2) fails with ENOSPC mid-record.
#[test]
fn fail_closed_on_full_disk() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !require(ok, "a tmpfs mount", "mounting needs root") {
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Umount(mnt.clone());
    let p = mnt.join("audit.log");
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    let filler = "y".repeat(700);
    let mut err = None;
    let mut written = 0;
    for i in 0..1000 {
        match log.append_blocking("fill", fields(json!({"i": i, "pad": filler}))) {
            Ok(_) => written += 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("tmpfs never filled up");
    eprintln!("after {written} records: {err}");
    assert!(!log.is_healthy());
    assert!(log.append_blocking("later", Map::new()).is_err());
    log.close();
    let data = std::fs::read(&p).unwrap();
    assert_eq!(data.last(), Some(&b'\n'), "partial record left in the file");
    let r = verify(std::slice::from_ref(&p), None);
    assert!(r.is_ok(), "{r}");
    assert!(r.warnings.iter().all(|w| !w.contains("incomplete")));
    assert_eq!(r.records, written + 1);
}

/// Several brokers (socket-activated sessions) append to one log: each `AuditLog` holds its
/// own open file description, so they contend on the file lock exactly as separate processes
/// would. The chain must stay one valid chain across their interleaved batches and rotations.
#[test]
fn several_writers_share_one_chain_across_rotations() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let writers: Vec<AuditLog> = (0..3)
        .map(|_| {
            let mut cfg = batch_cfg(&p);
            cfg.rotate_bytes = Some(16 * 1024);
            AuditLog::open(cfg).unwrap()
        })
        .collect();
    let per_thread = 150;
    std::thread::scope(|s| {
        for (w, log) in writers.iter().enumerate() {
            for t in 0..2 {
                s.spawn(move || {
                    for i in 0..per_thread {
                        log.append_blocking(
                            "tool.call",
                            fields(
                                json!({"writer": w, "thread": t, "i": i, "pad": "x".repeat(64)}),
                            ),
                        )
                        .unwrap();
                    }
                });
            }
        }
    });
    for w in &writers {
        w.close();
    }
    let files = discover_files(&p).unwrap();
    assert!(files.len() >= 3, "rotation happened: {files:?}");
    let r = verify(&files, None);
    assert!(r.is_ok(), "{r}");
    let recs = read_records(&files).unwrap();
    let calls = recs.iter().filter(|r| r["event"] == "tool.call").count();
    assert_eq!(
        calls,
        3 * 2 * per_thread,
        "every append is in the log exactly once"
    );
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one consecutive sequence"
    );
    // every file after the first starts with log.rotated
    for f in &files[1..] {
        let first: Value = serde_json::from_str(lines(f).first().unwrap()).unwrap();
        assert_eq!(first["event"], "log.rotated", "{}", f.display());
    }
}

/// A signed log opened twice: the head file as it was after the first session, and the log.
fn signed_log_two_sessions(d: &Path) -> (PathBuf, PathBuf, String) {
    let (p, pk) = make_signed_log(d, 7);
    let hp = d.join("audit.log.head");
    let old_head = std::fs::read_to_string(&hp).unwrap();
    let mut c = AuditConfig::new(&p);
    c.checkpoint_key = Some(d.join("ck.pem"));
    c.checkpoint_every = 5;
    let log = AuditLog::open(c).unwrap();
    for i in 0..12 {
        log.append_blocking("tool.call", fields(json!({"principal": "bob", "i": i})))
            .unwrap();
    }
    log.close();
    assert_ne!(std::fs::read_to_string(&hp).unwrap(), old_head);
    (p, pk, old_head)
}

#[test]
fn with_a_key_a_missing_head_file_fails_verification() {
    let d = tempfile::tempdir().unwrap();
    let (p, pk) = make_signed_log(d.path(), 9);
    assert!(verify(std::slice::from_ref(&p), Some(&pk)).is_ok());
    let hp = d.path().join("audit.log.head");
    std::fs::remove_file(&hp).unwrap();
    let r = verify(std::slice::from_ref(&p), Some(&pk));
    let f = r.failure.as_ref().unwrap_or_else(|| panic!("passed: {r}"));
    assert_eq!(f.kind, FailureKind::HeadMissing, "{r}");
    assert_eq!(f.file, hp);
    let text = r.to_string();
    assert!(
        text.contains("BROKEN: head file missing") && text.contains("cannot be detected"),
        "{text}"
    );
    // The chain itself was walked first: its records are counted.
    assert_eq!(r.records, lines(&p).len() as u64);
    // Removing the head *and* cutting the tail at a checkpoint is the attack this catches.
    let mut l = lines(&p);
    let cut = l
        .iter()
        .rposition(|x| x.contains("\"log.checkpoint\""))
        .unwrap();
    l.truncate(cut - 1);
    let last_ck = l
        .iter()
        .rposition(|x| x.contains("\"log.checkpoint\""))
        .unwrap();
    l.truncate(last_ck + 1);
    write_lines(&p, &l);
    assert_eq!(
        verify(std::slice::from_ref(&p), Some(&pk))
            .failure
            .unwrap()
            .kind,
        FailureKind::HeadMissing
    );
    // Knowingly without a head: the chain and signatures pass, loudly incomplete.
    let r = verify_without_head(std::slice::from_ref(&p), &pk);
    assert!(r.is_ok() && r.head_skipped && !r.head_checked, "{r}");
    assert!(r.to_string().contains("HEAD FILE NOT CHECKED"), "{r}");
    assert!(r.warnings.iter().any(|w| w.contains("NOT checked")), "{r}");
    // Without a key nothing can be said about the head: a warning, as before.
    let r = verify(&[p], None);
    assert!(r.is_ok() && !r.warnings.is_empty(), "{r}");
}

#[test]
fn a_head_file_older_than_the_last_checkpoint_fails_verification() {
    let d = tempfile::tempdir().unwrap();
    let (p, pk, old_head) = signed_log_two_sessions(d.path());
    let hp = d.path().join("audit.log.head");
    let r = verify(std::slice::from_ref(&p), Some(&pk));
    assert!(r.is_ok() && r.head_checked, "{r}");
    // The log cut at a later checkpoint than the old head's, the old head restored.
    let full = lines(&p);
    let old: Value = serde_json::from_str(&old_head).unwrap();
    let old_seq = old["checkpoint_seq"].as_u64().unwrap();
    let cut = full
        .iter()
        .position(|x| {
            let m = parse(x);
            m["event"] == "log.checkpoint" && m["seq"].as_u64().unwrap() > old_seq
        })
        .unwrap();
    assert!(cut + 3 < full.len(), "a real tail is cut");
    write_lines(&p, &full[..=cut]);
    std::fs::write(&hp, &old_head).unwrap();
    let r = verify(std::slice::from_ref(&p), Some(&pk));
    let f = r.failure.as_ref().unwrap_or_else(|| panic!("passed: {r}"));
    assert_eq!(
        (f.kind, f.seq, &f.file),
        (FailureKind::HeadStale, Some(old_seq), &hp),
        "{r}"
    );
    assert!(r.to_string().contains("BROKEN: head file stale"), "{r}");
    // The whole log with the old head is stale too (the head was rolled back).
    write_lines(&p, &full);
    assert_eq!(
        verify(std::slice::from_ref(&p), Some(&pk))
            .failure
            .unwrap()
            .kind,
        FailureKind::HeadStale
    );
    // A copy of the current head kept elsewhere verifies the log (--head FILE).
    let copy = d.path().join("elsewhere.head");
    let r = verify_with_head(std::slice::from_ref(&p), Some(&pk), Some(&copy));
    assert_eq!(r.failure.unwrap().kind, FailureKind::HeadMissing);
    std::fs::write(&copy, &old_head).unwrap();
    let r = verify_with_head(std::slice::from_ref(&p), Some(&pk), Some(&copy));
    assert_eq!(r.failure.unwrap().kind, FailureKind::HeadStale);
}

#[test]
fn a_keyed_log_has_a_signed_head_from_its_first_start() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = keys(d.path());
    let p = log_path(d.path());
    let mut c = AuditConfig::new(&p);
    c.checkpoint_key = Some(sk);
    let log = AuditLog::open(c).unwrap();
    // Not closed: a broker killed right after its start still leaves a head that verifies.
    let hp = d.path().join("audit.log.head");
    let head: Value = serde_json::from_str(&std::fs::read_to_string(&hp).unwrap()).unwrap();
    assert_eq!(
        (head["covers_seq"].as_u64(), head["checkpoint_seq"].as_u64()),
        (Some(0), Some(1))
    );
    let r = verify(std::slice::from_ref(&p), Some(&pk));
    assert!(r.is_ok() && r.head_checked, "{r}");
    drop(log);
}

#[test]
fn a_keyed_log_cut_below_its_head_is_not_continued() {
    let d = tempfile::tempdir().unwrap();
    let (p, _pk) = make_signed_log(d.path(), 9);
    let mut c = AuditConfig::new(&p);
    c.checkpoint_key = Some(d.path().join("ck.pem"));
    let before = lines(&p);
    // Cut the final checkpoint: the head names a record that is gone.
    write_lines(&p, &before[..before.len() - 3]);
    let e = AuditLog::open(c.clone()).unwrap_err().to_string();
    assert!(
        e.contains("head file") && e.contains("cut off or replaced") && e.contains("ends at seq"),
        "{e}"
    );
    assert_eq!(lines(&p).len(), before.len() - 3, "nothing was appended");
    // Replace the last record (same seq, re-hashed content): refused too.
    let mut l = before.clone();
    let mut m = parse(l.last().unwrap());
    m.insert("covers_seq".into(), json!(0));
    l.pop();
    l.push(rehash(m));
    write_lines(&p, &l);
    let e = AuditLog::open(c.clone()).unwrap_err().to_string();
    assert!(e.contains("different record"), "{e}");
    // An emptied log next to its head: refused.
    write_lines(&p, &[]);
    std::fs::write(&p, "").unwrap();
    let e = AuditLog::open(c.clone()).unwrap_err().to_string();
    assert!(e.contains("is empty"), "{e}");
    // The intact log continues.
    write_lines(&p, &before);
    AuditLog::open(c).unwrap().close();
}

#[test]
fn symlinks_at_the_log_path_or_its_directory_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    // A link at the log path (dangling: the log would be created through it).
    let target = elsewhere.join("stolen.log");
    let p = log_path(d.path());
    std::os::unix::fs::symlink(&target, &p).unwrap();
    let e = AuditLog::open(AuditConfig::new(&p))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a symbolic link: refused"), "{e}");
    assert!(!target.exists());
    // A link to an existing file.
    std::fs::write(&target, "").unwrap();
    let e = AuditLog::open(AuditConfig::new(&p))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a symbolic link: refused"), "{e}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
    // A link in place of the log's directory.
    let dirlink = d.path().join("logdir");
    std::os::unix::fs::symlink(&elsewhere, &dirlink).unwrap();
    let e = AuditLog::open(AuditConfig::new(dirlink.join("audit.log")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("audit directory") && e.contains("symbolic link"),
        "{e}"
    );
    assert!(!elsewhere.join("audit.log").exists());
    // A link at the head file's temporary name is not written through either.
    let (sk, _) = keys(d.path());
    let real = d.path().join("real.log");
    let tmp_target = elsewhere.join("head-stolen");
    std::os::unix::fs::symlink(&tmp_target, d.path().join("real.log.head.tmp")).unwrap();
    let mut c = AuditConfig::new(&real);
    c.checkpoint_key = Some(sk);
    let log = AuditLog::open(c).unwrap();
    log.close();
    assert!(!tmp_target.exists());
}

#[test]
fn records_cut_off_the_open_log_are_not_chained_over() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    for i in 0..6 {
        log.append_blocking("tool.call", fields(json!({"i": i})))
            .unwrap();
    }
    let before = lines(&p);
    // Something else cuts the last three records while the broker runs.
    write_lines(&p, &before[..before.len() - 3]);
    let e = log
        .append_blocking("tool.call", fields(json!({"i": 6})))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("records were cut off it while it was open") && e.contains("seq 6 was written"),
        "{e}"
    );
    assert!(!log.is_healthy());
    log.close();
    // Nothing was appended over the cut.
    assert_eq!(lines(&p).len(), before.len() - 3);
}

#[test]
fn a_timed_checkpoint_covers_a_quiet_tail() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = keys(d.path());
    let p = log_path(d.path());
    let mut c = AuditConfig::new(&p);
    c.checkpoint_key = Some(sk);
    c.checkpoint_every = 1000;
    c.checkpoint_interval = Some(Duration::from_millis(150));
    c.mode = SyncMode::Batch {
        interval: Duration::from_secs(3600),
    };
    let log = AuditLog::open(c).unwrap();
    let seq = log
        .append_blocking("tool.call", fields(json!({"i": 0})))
        .unwrap()
        .seq;
    let hp = d.path().join("audit.log.head");
    let covered = || {
        std::fs::read_to_string(&hp)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|h| h["covers_seq"].as_u64())
    };
    let t0 = std::time::Instant::now();
    while covered() != Some(seq) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no timed checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not closed (as after a crash): the head covers the quiet tail and the log verifies.
    let r = verify(std::slice::from_ref(&p), Some(&pk));
    assert!(r.is_ok() && r.head_checked, "{r}");
    // Nothing new, no new checkpoint.
    let n = lines(&p).len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(lines(&p).len(), n);
    log.close();
}

/// A batch-mode log, its interval 50 ms.
fn batch_cfg(p: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(p);
    c.mode = SyncMode::Batch {
        interval: Duration::from_millis(50),
    };
    c
}

/// `tasks` tasks on `rt`, each appending `each` records in turn (with `pad` bytes of padding),
/// as sessions do; their seqs, sorted.
fn appends_from_tasks(
    log: &AuditLog,
    rt: &tokio::runtime::Runtime,
    tasks: usize,
    each: usize,
    pad: usize,
) -> Vec<u64> {
    let mut seqs = rt.block_on(async {
        let ts: Vec<_> = (0..tasks)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..each {
                        let f = fields(json!({"task": t, "i": i, "pad": "x".repeat(pad)}));
                        seqs.push(log.append("tool.call", f).await.unwrap().seq);
                    }
                    seqs
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in ts {
            out.extend(t.await.unwrap());
        }
        out
    });
    seqs.sort_unstable();
    seqs
}

/// `n` appends from 10 tasks of a one-thread runtime (the broker's stdio runtime; its HTTP
/// runtime is one thread per CPU but one), each appending `n / 10` in turn; their seqs, sorted.
fn appends_on_one_thread(log: &AuditLog, n: usize, pad: usize) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    appends_from_tasks(log, &rt, 10, n / 10, pad)
}

/// In batch mode the append that opens a batch writes it on its own thread (no hand-off to the
/// writer thread and back): every record is there once, in one chain, and the sync that the
/// mode owes still happens, on the writer thread, without any further append to wake it.
#[test]
fn batch_mode_appends_write_their_batches_themselves_and_the_sync_still_follows() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(batch_cfg(&p)).unwrap();
    let s0 = log.sync_count();
    // A batch opened while the writer thread is still busy with the previous one is its to
    // take, and under load the two can keep in step for a whole wave: up to 50 waves.
    let mut n = 0;
    for _ in 0..50 {
        let seqs = appends_on_one_thread(&log, 200, 0);
        assert_eq!(seqs, (n + 1..=n + 200).collect::<Vec<u64>>());
        n += 200;
        if log.written_by_appenders() > 0 {
            break;
        }
    }
    assert!(
        log.written_by_appenders() > 0,
        "no batch was written by its appenders"
    );
    let n = usize::try_from(n).unwrap();
    // Written before any sync (the mode's promise), then synced within the interval: the
    // appenders woke the writer thread for it.
    assert_eq!(read_records(std::slice::from_ref(&p)).unwrap().len(), n + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.sync_count() == s0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the batch-mode sync never came"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(log.queued(), 0);
    log.close();
    let r = verify(&[p], None);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.records, n as u64 + 1, "log.opened and every call");
}

/// Strict mode never writes on the appender's thread: its fdatasync would block the runtime.
#[test]
fn strict_mode_appends_leave_every_batch_to_the_writer_thread() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(AuditConfig::new(&p)).unwrap();
    let seqs = appends_on_one_thread(&log, 50, 0);
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    assert_eq!(log.written_by_appenders(), 0);
    log.close();
    assert!(verify(&[p], None).is_ok());
}

/// Batches written by their appenders never sign a checkpoint or rotate the file themselves
/// (both sync): they leave them to the writer thread, which still signs every
/// `checkpoint_every` records (a little later when a batch crosses the count) and rotates.
#[test]
fn checkpoints_and_rotations_due_after_appender_written_batches_still_happen() {
    let d = tempfile::tempdir().unwrap();
    let (sk, pk) = keys(d.path());
    let p = log_path(d.path());
    let mut c = batch_cfg(&p);
    c.checkpoint_key = Some(sk);
    c.checkpoint_every = 10;
    c.rotate_bytes = Some(16 * 1024);
    let log = AuditLog::open(c).unwrap();
    let mut all = Vec::new();
    // At least 6 waves; more (up to 50) if the writer thread took every batch so far.
    for wave in 0..50 {
        all.extend(appends_on_one_thread(&log, 50, 100));
        if wave >= 5 && log.written_by_appenders() > 0 {
            break;
        }
    }
    assert!(log.written_by_appenders() > 0);
    log.close();
    let files = discover_files(&p).unwrap();
    assert!(files.len() >= 3, "the log rotated: {files:?}");
    let r = verify_with_head(&files, Some(&pk), None);
    assert!(r.is_ok(), "{r}");
    let recs = read_records(&files).unwrap();
    let calls = recs.iter().filter(|r| r["event"] == "tool.call").count();
    assert_eq!(calls, all.len(), "every append is in the log exactly once");
    // No run of records goes unsigned for more than `checkpoint_every` and one batch (at most
    // one append per task: 10), besides a file's `log.rotated`.
    let mut since = 0;
    let mut longest = 0;
    for r in &recs {
        if r["event"] == "log.checkpoint" {
            since = 0;
        } else {
            since += 1;
            longest = longest.max(since);
        }
    }
    assert!(
        longest <= 10 + 10 + 1,
        "{longest} records in a row without a checkpoint"
    );
}

/// A file lock held by another broker sharing the log (flock is per open file, so a second
/// open of the path stands in for it) never blocks the appender's thread: the batch goes to the
/// writer thread, which waits for the lock, while the runtime keeps running.
#[test]
fn another_processs_file_lock_never_blocks_the_appenders_thread() {
    let d = tempfile::tempdir().unwrap();
    let p = log_path(d.path());
    let log = AuditLog::open(batch_cfg(&p)).unwrap();
    let other = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    other.lock().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut append = Box::pin(log.append("tool.call", fields(json!({"i": 1}))));
        // The runtime's one thread is free: the timer fires while the append waits.
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut append).await;
        assert!(waited.is_err(), "written through another process's lock");
        drop(other);
        assert_eq!(append.await.unwrap().seq, 1);
    });
    assert_eq!(log.written_by_appenders(), 0);
    // With the lock free again, batches are written by their appenders again (those that
    // find the writer thread busy, with a sync say, are still handed to it).
    for _ in 0..50 {
        appends_on_one_thread(&log, 100, 0);
        if log.written_by_appenders() > 0 {
            break;
        }
    }
    assert!(log.written_by_appenders() > 0);
    log.close();
    assert!(verify(&[p], None).is_ok());
}
