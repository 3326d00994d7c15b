//! The outbox's decisions, without a disk or a clock: the drain order, acknowledgements and
//! resends, what gives way when the budget is full, and the uplink's pacing.

use node_core::outbox::{
    Class, Drain, Gap, Outbox, Pacer, PushError, RECORD_OVERHEAD_BYTES, Record, Shed,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// A body of `len` bytes.
fn body(len: usize) -> Vec<u8> {
    vec![7; len]
}

/// What a record with this key and body length costs.
fn cost(key: &str, len: usize) -> u64 {
    RECORD_OVERHEAD_BYTES + key.len() as u64 + len as u64
}

fn push(outbox: &mut Outbox, class: Class, key: &str, at_ms: u64) -> u64 {
    outbox.push(class, key, at_ms, body(68)).expect("fits").seq
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn events_go_first_then_status_then_metrics_each_oldest_first() {
    let mut outbox = Outbox::new(1 << 20, 1);
    let m1 = push(&mut outbox, Class::Metric, "cpu", 1);
    let s1 = push(&mut outbox, Class::Status, "till", 2);
    let e1 = push(&mut outbox, Class::Event, "", 3);
    let m2 = push(&mut outbox, Class::Metric, "cpu", 4);
    let e2 = push(&mut outbox, Class::Event, "", 5);
    assert_eq!(
        seqs(&outbox.next_batch(u64::MAX)),
        [e1, e2, s1, m1, m2],
        "by class, then by age"
    );
    let sent = outbox.records().find(|r| r.seq == e1).expect("e1");
    assert_eq!(sent.at_ms, 3, "a record keeps the time it happened at");
}

#[test]
fn a_batch_holds_its_byte_budget_but_always_one_record() {
    let mut outbox = Outbox::new(1 << 20, 1);
    for at in 0..5 {
        push(&mut outbox, Class::Event, "", at);
    }
    let one = cost("", 68);
    assert_eq!(outbox.next_batch(2 * one).len(), 2);
    assert_eq!(
        outbox.next_batch(1).len(),
        1,
        "at least one, however small the budget"
    );
    assert_eq!(outbox.next_batch(u64::MAX).len(), 2, "the rest");
    assert!(outbox.next_batch(u64::MAX).is_empty(), "all in flight");
    outbox.reconnected();
    assert_eq!(
        outbox.next_batch_of(u64::MAX, 3).len(),
        3,
        "a count bound too"
    );
    assert_eq!(outbox.next_batch_of(u64::MAX, 3).len(), 2);
}

#[test]
fn acknowledged_records_go_and_unacknowledged_ones_are_sent_again_after_a_reconnect() {
    let mut outbox = Outbox::new(1 << 20, 10);
    let a = push(&mut outbox, Class::Event, "", 1);
    let b = push(&mut outbox, Class::Event, "", 2);
    assert_eq!(a, 10, "numbering continues from where the store left off");
    assert_eq!(seqs(&outbox.next_batch(u64::MAX)), [a, b]);
    assert_eq!(outbox.ack([a]), [a]);
    assert_eq!(outbox.ack([a]), Vec::<u64>::new(), "twice changes nothing");
    assert_eq!(
        outbox.ack([999]),
        Vec::<u64>::new(),
        "unknown changes nothing"
    );
    assert!(
        outbox.next_batch(u64::MAX).is_empty(),
        "b is still in flight"
    );
    outbox.reconnected();
    assert_eq!(seqs(&outbox.next_batch(u64::MAX)), [b], "b again, a never");
    assert_eq!(outbox.used(), cost("", 68));
    outbox.ack([b]);
    assert!(outbox.is_empty());
    assert_eq!(outbox.used(), 0);
}

#[test]
fn a_record_sent_and_not_acknowledged_is_awaited_whatever_acknowledgements_said() {
    let mut outbox = Outbox::new(1 << 20, 1);
    let mut drain = Drain::default();
    assert!(!drain.awaiting(&outbox), "nothing sent");
    let a = push(&mut outbox, Class::Event, "", 1);
    let batch = drain.next(&mut outbox, u64::MAX, 100, 8).expect("a batch");
    assert_eq!(seqs(&batch.records), [a]);
    assert!(drain.awaiting(&outbox));
    // An acknowledgement of something else (stored before this session) takes the batch's
    // count, but `a` still waits for its own.
    outbox.ack([999]);
    drain.acked();
    assert_eq!(drain.in_flight(), 0);
    assert!(drain.awaiting(&outbox), "a is still out");
    outbox.ack([a]);
    assert!(!drain.awaiting(&outbox));
    // A lost session: what was out goes again, and nothing is awaited until it does.
    let b = push(&mut outbox, Class::Event, "", 2);
    drain.next(&mut outbox, u64::MAX, 100, 8).expect("b");
    drain.disconnected(&mut outbox);
    assert!(!drain.awaiting(&outbox));
    let again = drain.next(&mut outbox, u64::MAX, 100, 8).expect("b again");
    assert_eq!(seqs(&again.records), [b]);
}

#[test]
fn metrics_are_thinned_where_they_are_densest() {
    let unit = cost("k", 68);
    let mut outbox = Outbox::new(6 * unit, 1);
    // Samples at 0, 10, 11, 12, 30 s; then one more that needs room.
    for at in [0, 10_000, 11_000, 12_000, 30_000] {
        push(&mut outbox, Class::Metric, "k", at);
    }
    push(&mut outbox, Class::Event, "k", 31_000);
    let pushed = outbox
        .push(Class::Event, "k", 32_000, body(68))
        .expect("fits");
    assert_eq!(pushed.removed, [3], "the sample at 11 s, between 10 and 12");
}

#[test]
fn a_full_outbox_thins_metrics_then_coalesces_status_then_drops_the_oldest_events() {
    let unit = cost("k", 68);
    // Room for ten records.
    let mut outbox = Outbox::new(10 * unit, 1);
    let metrics: Vec<u64> = (0..4)
        .map(|t| push(&mut outbox, Class::Metric, "k", t))
        .collect();
    let status: Vec<u64> = (0..3)
        .map(|t| push(&mut outbox, Class::Status, "k", t))
        .collect();
    let events: Vec<u64> = (0..3)
        .map(|t| push(&mut outbox, Class::Event, "k", t))
        .collect();
    assert_eq!(outbox.used(), 10 * unit);

    // 1. Two more events: two metrics give way from the middle, so the first and the last
    //    still span the same time.
    let pushed = outbox.push(Class::Event, "k", 10, body(68)).expect("fits");
    assert_eq!(pushed.removed, [metrics[1]]);
    let pushed = outbox.push(Class::Event, "k", 11, body(68)).expect("fits");
    assert_eq!(pushed.removed, [metrics[2]]);
    assert_eq!(outbox.shed().metrics_downsampled, 2);
    let span: Vec<u64> = outbox
        .records()
        .filter(|r| r.class == Class::Metric)
        .map(|r| r.seq)
        .collect();
    assert_eq!(span, [metrics[0], metrics[3]]);
    // Then the rest of the metrics.
    outbox.push(Class::Event, "k", 12, body(68)).expect("fits");
    outbox.push(Class::Event, "k", 13, body(68)).expect("fits");
    assert_eq!(outbox.waiting(Class::Metric), 0);
    assert_eq!(outbox.shed().metrics_downsampled, 4);
    assert!(outbox.gaps().is_empty(), "no event dropped yet");

    // 2. Then older status of the same key, the newest kept.
    outbox.push(Class::Event, "k", 14, body(68)).expect("fits");
    let pushed = outbox.push(Class::Event, "k", 15, body(68)).expect("fits");
    assert_eq!(pushed.removed, [status[1]]);
    assert_eq!(outbox.shed().status_coalesced, 2);
    let left: Vec<u64> = outbox
        .records()
        .filter(|r| r.class == Class::Status)
        .map(|r| r.seq)
        .collect();
    assert_eq!(left, [status[2]], "the newest status stays");

    // 3. Then events, oldest first, as one gap while no kept event lies between.
    let pushed = outbox.push(Class::Event, "k", 16, body(68)).expect("fits");
    assert_eq!(pushed.removed, [events[0]]);
    outbox.push(Class::Event, "k", 17, body(68)).expect("fits");
    assert_eq!(
        outbox.gaps(),
        [Gap {
            first: events[0],
            last: events[1],
            count: 2,
            first_at_ms: 0,
            last_at_ms: 1,
        }]
    );
    assert_eq!(
        outbox.shed(),
        Shed {
            metrics_downsampled: 4,
            status_coalesced: 2,
            events_dropped: 2,
        }
    );
    assert!(outbox.used() <= outbox.budget());
    outbox.ack_gaps(events[1]);
    assert!(outbox.gaps().is_empty(), "the orchestrator stored the gap");
}

#[test]
fn a_record_larger_than_the_budget_is_refused_and_changes_nothing() {
    let mut outbox = Outbox::new(200, 1);
    push(&mut outbox, Class::Metric, "", 1);
    let before = (outbox.used(), outbox.next_seq(), outbox.len());
    assert_eq!(
        outbox.push(Class::Event, "", 2, body(500)),
        Err(PushError::TooLarge {
            cost: cost("", 500),
            budget: 200
        })
    );
    assert_eq!((outbox.used(), outbox.next_seq(), outbox.len()), before);
}

#[test]
fn the_newest_status_of_each_key_is_never_shed() {
    let unit = cost("a", 68);
    let mut outbox = Outbox::new(2 * unit, 1);
    push(&mut outbox, Class::Status, "a", 1);
    push(&mut outbox, Class::Status, "b", 2);
    assert_eq!(
        outbox.push(Class::Event, "a", 3, body(68)),
        Err(PushError::Full { budget: 2 * unit })
    );
    assert_eq!(outbox.len(), 2);
}

#[test]
fn a_restored_outbox_continues_its_numbering_and_sheds_to_a_smaller_budget() {
    let mut before = Outbox::new(1 << 20, 1);
    for t in 0..4 {
        push(&mut before, Class::Metric, "k", t);
    }
    push(&mut before, Class::Event, "k", 9);
    let records: Vec<Record> = before.records().cloned().collect();
    let unit = cost("k", 68);
    let (after, removed) = Outbox::restore(3 * unit, records, Vec::new(), Shed::default(), 1);
    assert_eq!(after.next_seq(), 6);
    assert_eq!(removed, [2, 3], "metrics from the middle");
    assert_eq!(after.len(), 3);
    assert_eq!(after.shed().metrics_downsampled, 2);
}

#[test]
fn the_pacer_spreads_bytes_over_the_uplinks_budget() {
    let mut pacer = Pacer::new(1000);
    let t = Duration::from_secs(100);
    assert_eq!(pacer.allowance(t), 1000, "a second's worth to start");
    pacer.spent(t, 1500);
    assert_eq!(pacer.allowance(t), 0, "overdrawn");
    assert_eq!(pacer.wait(t, 100), Duration::from_millis(600));
    assert_eq!(pacer.allowance(t + Duration::from_millis(600)), 100);
    assert_eq!(
        pacer.allowance(t + Duration::from_secs(60)),
        1000,
        "never more than a second's worth"
    );
    assert_eq!(
        pacer.wait(t + Duration::from_secs(60), 5000),
        Duration::ZERO
    );
    let mut free = Pacer::new(0);
    free.spent(t, u64::MAX);
    assert_eq!(free.allowance(t), u64::MAX, "0 is no limit");
    assert_eq!(free.wait(t, u64::MAX), Duration::ZERO);
}

#[derive(Debug, Clone)]
enum Op {
    Push { class: Class, key: u8, len: usize },
    Batch { max: u64 },
    Ack { pick: Vec<usize> },
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![Just(Class::Event), Just(Class::Status), Just(Class::Metric)], 0u8..4, 0usize..300)
            .prop_map(|(class, key, len)| Op::Push { class, key, len }),
        1 => (1u64..2000).prop_map(|max| Op::Batch { max }),
        1 => proptest::collection::vec(0usize..64, 0..8).prop_map(|pick| Op::Ack { pick }),
        1 => Just(Op::Reconnect),
    ]
}

proptest! {
    /// Whatever happens: the budget holds, every sequence number is stored, acknowledged or
    /// counted as shed, events go only when nothing else can, and gaps count the dropped
    /// events.
    #[test]
    fn the_outbox_keeps_its_promises(budget in 200u64..4000, ops in proptest::collection::vec(op(), 1..200)) {
        let mut outbox = Outbox::new(budget, 1);
        let mut acked = 0u64;
        for op in ops {
            match op {
                Op::Push { class, key, len } => {
                    let key = format!("k{key}");
                    let shed_before = outbox.shed();
                    match outbox.push(class, &key, 0, body(len)) {
                        Ok(pushed) => {
                            let shed = outbox.shed();
                            if shed.events_dropped > shed_before.events_dropped {
                                // Nothing else was left to shed: no metric but the new one,
                                // one status per key but the new one.
                                let others = outbox.records().filter(|r| r.seq != pushed.seq);
                                let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
                                for r in others {
                                    prop_assert_ne!(r.class, Class::Metric);
                                    if r.class == Class::Status {
                                        *per_key.entry(&r.key).or_default() += 1;
                                    }
                                }
                                prop_assert!(per_key.values().all(|n| *n == 1), "{per_key:?}");
                            }
                        }
                        Err(PushError::TooLarge { cost, .. }) => prop_assert!(cost > budget),
                        Err(PushError::Full { .. }) => {
                            prop_assert!(outbox.records().all(|r| r.class == Class::Status));
                        }
                    }
                }
                Op::Batch { max } => {
                    let batch = outbox.next_batch(max);
                    let classes: Vec<Class> = batch.iter().map(|r| r.class).collect();
                    let mut sorted = classes.clone();
                    sorted.sort();
                    prop_assert_eq!(classes, sorted, "by class");
                }
                Op::Ack { pick } => {
                    let stored: Vec<u64> = outbox.records().map(|r| r.seq).collect();
                    let chosen: Vec<u64> = pick.iter().filter_map(|i| stored.get(*i).copied()).collect();
                    acked += outbox.ack(chosen).len() as u64;
                }
                Op::Reconnect => outbox.reconnected(),
            }
            prop_assert!(outbox.used() <= outbox.budget());
            prop_assert_eq!(outbox.used(), outbox.records().map(Record::cost).sum::<u64>());
            for class in Class::ALL {
                let counted = outbox.records().filter(|r| r.class == class).count();
                prop_assert_eq!(outbox.waiting(class), counted, "{:?} counted as it is held", class);
            }
            let shed = outbox.shed();
            let given = outbox.next_seq() - 1;
            prop_assert_eq!(
                given,
                outbox.len() as u64 + acked + shed.metrics_downsampled + shed.status_coalesced + shed.events_dropped
            );
            prop_assert_eq!(outbox.gaps().iter().map(|g| g.count).sum::<u64>(), shed.events_dropped);
        }
    }
}
