//! The outbox on a real disk: what was committed comes back after a reopen, acknowledged
//! records stay gone, a torn or damaged tail is cut and reported, hostile files lose
//! nothing that was whole, and the log is compacted.

use edge_outbox::{OutboxStore, Recovery};
use node_core::outbox::{Class, Outbox, Record};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const BUDGET: u64 = 1 << 20;

fn open(dir: &Path) -> (OutboxStore, Outbox, Recovery) {
    OutboxStore::open(dir, BUDGET).expect("open")
}

fn log(dir: &Path) -> std::path::PathBuf {
    dir.join("outbox").join("log")
}

fn records(outbox: &Outbox) -> Vec<Record> {
    outbox.records().cloned().collect()
}

#[test]
fn committed_records_and_acknowledgements_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, recovery) = open(dir.path());
    assert_eq!(recovery, Recovery::default());
    let a = store
        .push(&mut outbox, Class::Event, "", 1_000, b"exited 1".to_vec())
        .expect("push");
    let b = store
        .push(
            &mut outbox,
            Class::Status,
            "till",
            2_000,
            b"running".to_vec(),
        )
        .expect("push");
    let c = store
        .push(&mut outbox, Class::Metric, "cpu", 3_000, b"0.25".to_vec())
        .expect("push");
    store.ack(&mut outbox, [b]).expect("ack");
    store.commit().expect("commit");
    let before = records(&outbox);
    drop(store);

    let (mut store, mut reopened, recovery) = open(dir.path());
    assert_eq!(recovery.records, 2);
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(records(&reopened), before);
    assert_eq!(
        records(&reopened).iter().map(|r| r.seq).collect::<Vec<_>>(),
        [a, c]
    );
    assert_eq!(reopened.used(), outbox.used());
    let d = store
        .push(&mut reopened, Class::Event, "", 4_000, Vec::new())
        .expect("push");
    assert_eq!(d, c + 1, "numbering goes on");

    let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("outbox")), 0o700);
    assert_eq!(mode(&log(dir.path())), 0o600);
}

#[test]
fn numbering_goes_on_after_everything_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, _) = open(dir.path());
    let a = store
        .push(&mut outbox, Class::Event, "", 1, Vec::new())
        .expect("push");
    store.ack(&mut outbox, [a]).expect("ack");
    store.commit().expect("commit");
    drop(store);
    let (_, reopened, _) = open(dir.path());
    assert!(reopened.is_empty());
    assert_eq!(
        reopened.next_seq(),
        a + 1,
        "a sequence number is never given twice"
    );
}

#[test]
fn a_torn_tail_is_cut_and_what_came_before_stays() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, _) = open(dir.path());
    for at in 0..3 {
        store
            .push(&mut outbox, Class::Event, "", at, vec![1; 40])
            .expect("push");
    }
    store.commit().expect("commit");
    let whole = fs::metadata(log(dir.path())).expect("meta").len();
    let before = records(&outbox);
    drop(store);
    // A crash in the middle of the next write: its head and part of its body.
    let mut file = OpenOptions::new()
        .append(true)
        .open(log(dir.path()))
        .expect("log");
    file.write_all(&[60, 0, 0, 0, 1, 2, 3, 4, 9, 9])
        .expect("torn");
    drop(file);

    let (mut store, mut reopened, recovery) = open(dir.path());
    assert_eq!(recovery.torn_bytes, 10);
    assert_eq!(records(&reopened), before);
    assert_eq!(fs::metadata(log(dir.path())).expect("meta").len(), whole);
    // And the log takes new entries where the whole ones end.
    store
        .push(&mut reopened, Class::Event, "", 9, Vec::new())
        .expect("push");
    store.commit().expect("commit");
    drop(store);
    let (_, again, recovery) = open(dir.path());
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(again.len(), 4);
}

#[test]
fn damaged_and_hostile_bytes_cost_only_what_follows_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, _) = open(dir.path());
    for at in 0..4 {
        store
            .push(&mut outbox, Class::Event, "", at, vec![2; 30])
            .expect("push");
    }
    store.commit().expect("commit");
    drop(store);
    let path = log(dir.path());
    let mut bytes = fs::read(&path).expect("read");
    let entry = bytes.len() / 4;
    // A flipped bit in the third entry's body: its checksum fails.
    bytes[2 * entry + 20] ^= 0x40;
    fs::write(&path, &bytes).expect("write");
    let (_, outbox, recovery) = open(dir.path());
    assert_eq!(outbox.len(), 2, "the two entries before the damage");
    assert_eq!(recovery.torn_bytes, (2 * entry) as u64);

    for hostile in [
        // A length of 4 GiB: never allocated.
        vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        // Not ours at all.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A well-framed body that does not decode.
        {
            let body = [9u8; 12];
            let digest = ring::digest::digest(&ring::digest::SHA256, &body);
            let mut framed = (body.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&digest.as_ref()[..4]);
            framed.extend_from_slice(&body);
            framed
        },
        Vec::new(),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        fs::create_dir_all(dir.path().join("outbox")).expect("dir");
        fs::write(log(dir.path()), &hostile).expect("write");
        let (mut store, mut outbox, recovery) = open(dir.path());
        assert!(outbox.is_empty());
        assert_eq!(recovery.torn_bytes, hostile.len() as u64);
        store
            .push(&mut outbox, Class::Event, "", 1, Vec::new())
            .expect("the outbox works after it");
    }
}

#[test]
fn the_log_is_compacted_once_it_far_outgrows_what_it_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, _) = open(dir.path());
    let keep = store
        .push(&mut outbox, Class::Status, "till", 1, vec![5; 100])
        .expect("push");
    for at in 0..3_000 {
        let seq = store
            .push(&mut outbox, Class::Event, "", at, vec![3; 200])
            .expect("push");
        store.ack(&mut outbox, [seq]).expect("ack");
    }
    let grown = store.log_bytes();
    assert!(grown > 256 * 1024, "{grown}");
    store.commit_and_compact(&outbox).expect("commit");
    assert!(store.log_bytes() < 1024, "{}", store.log_bytes());
    assert_eq!(
        fs::metadata(log(dir.path())).expect("meta").len(),
        store.log_bytes()
    );
    let next = outbox.next_seq();
    drop(store);
    let (_, reopened, recovery) = open(dir.path());
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(
        reopened.records().map(|r| r.seq).collect::<Vec<_>>(),
        [keep]
    );
    assert_eq!(reopened.next_seq(), next, "numbering survives compaction");
}

#[test]
fn what_was_shed_and_the_gaps_come_back_too() {
    let dir = tempfile::tempdir().expect("tmp");
    // Room for a few records only.
    let (mut store, mut outbox, _) = OutboxStore::open(dir.path(), 400).expect("open");
    for at in 0..10 {
        store
            .push(&mut outbox, Class::Event, "", at, vec![4; 60])
            .expect("push");
    }
    store.commit().expect("commit");
    let (shed, gaps, kept) = (outbox.shed(), outbox.gaps().to_vec(), records(&outbox));
    assert!(shed.events_dropped > 0);
    drop(store);
    let (_, reopened, _) = OutboxStore::open(dir.path(), 400).expect("open");
    assert_eq!(reopened.shed(), shed);
    assert_eq!(reopened.gaps(), gaps);
    assert_eq!(records(&reopened), kept);

    // Reopened with a smaller budget: it sheds, and says so on disk too.
    let (_, smaller, _) = OutboxStore::open(dir.path(), 200).expect("open");
    assert!(smaller.used() <= 200);
    let after = records(&smaller);
    let (_, again, _) = OutboxStore::open(dir.path(), 200).expect("open");
    assert_eq!(records(&again), after);
}

#[test]
fn a_new_log_is_fresh_until_placed_after_what_the_orchestrator_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, _) = open(dir.path());
    assert!(store.is_fresh(), "a log made anew numbers from scratch");
    for body in [b"a", b"b", b"c"] {
        store
            .push(&mut outbox, Class::Event, "", 1_000, body.to_vec())
            .expect("push");
    }
    store.commit().expect("commit");
    // The orchestrator holds numbers up to 2 from a life before this log: all three move.
    assert!(store.number_after(&mut outbox, Some(2)).expect("moved"));
    assert!(!store.is_fresh());
    let seqs: Vec<u64> = records(&outbox).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    drop(store);
    // Durable: the reopened log is placed, with the new numbers.
    let (mut store, mut outbox, _) = open(dir.path());
    assert!(!store.is_fresh());
    let seqs: Vec<u64> = records(&outbox).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    // Placed now: the same answer again moves nothing.
    assert!(!store.number_after(&mut outbox, Some(2)).expect("nothing"));
    // A fresh log the orchestrator knows nothing of is placed as it is.
    let other = tempfile::tempdir().expect("tmp");
    let (mut store, mut outbox, _) = open(other.path());
    assert!(!store.number_after(&mut outbox, None).expect("nothing"));
    drop(store);
    assert!(!open(other.path()).0.is_fresh());
}
