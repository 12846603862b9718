//! The checks every runs store passes, run by each store's tests over a real database.
//!
//! Each check names its own topic and message ids, so all of them can share one database.
//! `stores` holds two handles to the same data (two instances sharing a store).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod control;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::json;
use topiq_adapter::{MessageId, Timestamp, TopicName, TriggerName};

use crate::SharedStore;
use crate::event::{Change, Next, Origin, RunEvent};
use crate::model::{AttemptOutcome, Run, RunError, RunKey, RunState};
use crate::store::{Retention, RunQuery};

/// Two handles to one store's data.
pub type Stores = [SharedStore; 2];

/// A check of the suite.
pub type Check = fn(Stores) -> BoxFuture<'static, ()>;

/// Every check, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("a_run_begins_when_enqueued", |s| {
        Box::pin(a_run_begins_when_enqueued(s))
    }),
    ("attempts_record_errors_retries_and_the_result", |s| {
        Box::pin(attempts_record_errors_retries_and_the_result(s))
    }),
    ("events_in_any_order_end_in_the_same_run", |s| {
        Box::pin(events_in_any_order_end_in_the_same_run(s))
    }),
    ("cancel_stops_a_waiting_run_and_marks_a_running_one", |s| {
        Box::pin(cancel_stops_a_waiting_run_and_marks_a_running_one(s))
    }),
    ("a_redrive_reopens_a_dead_lettered_run", |s| {
        Box::pin(a_redrive_reopens_a_dead_lettered_run(s))
    }),
    ("listing_filters_and_pages_newest_first", |s| {
        Box::pin(listing_filters_and_pages_newest_first(s))
    }),
    ("the_sweep_keeps_what_retention_keeps", |s| {
        Box::pin(the_sweep_keeps_what_retention_keeps(s))
    }),
    ("concurrent_instances_lose_no_event", |s| {
        Box::pin(concurrent_instances_lose_no_event(s))
    }),
    ("a_pause_is_seen_by_every_instance_until_resumed", |s| {
        Box::pin(control::a_pause_is_seen_by_every_instance_until_resumed(s))
    }),
    (
        "a_schedule_keeps_its_pause_and_tick_when_declared_again",
        |s| Box::pin(control::a_schedule_keeps_its_pause_and_tick_when_declared_again(s)),
    ),
    ("a_schedules_last_tick_only_moves_forward", |s| {
        Box::pin(control::a_schedules_last_tick_only_moves_forward(s))
    }),
];

/// Runs every check, printing each name first.
pub async fn run_all(stores: Stores) {
    for (name, check) in CHECKS {
        eprintln!("runs conformance: {name}");
        check(stores.clone()).await;
    }
}

pub(crate) fn topic() -> TopicName {
    // A UUIDv7's tail is random (its head is the time, shared within a millisecond).
    let unique = MessageId::generate().to_string().replace('-', "");
    TopicName::new(format!("c{}.jobs", &unique[unique.len() - 20..])).unwrap()
}

pub(crate) fn trigger(name: &str) -> TriggerName {
    TriggerName::new(name).unwrap()
}

pub(crate) fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).unwrap()
}

pub(crate) fn origin(topic: &TopicName, enqueued: i64) -> Origin {
    Origin {
        topic: topic.clone(),
        data: Arc::new(json!({"n": enqueued})),
        enqueued_at: at(enqueued),
        run_at: None,
        replay_of: None,
        idempotency_key: None,
    }
}

pub(crate) fn event(key: &RunKey, second: i64, change: Change) -> RunEvent {
    RunEvent {
        key: key.clone(),
        at: at(second),
        change,
    }
}

pub(crate) fn started(key: &RunKey, topic: &TopicName, second: i64, attempt: u32) -> RunEvent {
    let change = Change::Started {
        origin: origin(topic, 0),
        attempt,
        instance: "host:1".into(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    event(key, second, change)
}

pub(crate) fn finished(
    key: &RunKey,
    second: i64,
    attempt: u32,
    outcome: AttemptOutcome,
    next: Next,
) -> RunEvent {
    let error = (outcome != AttemptOutcome::Succeeded).then(|| RunError {
        kind: "handler_error".into(),
        message: format!("attempt {attempt} failed: SMTP timeout"),
    });
    let change = Change::Finished {
        attempt,
        outcome,
        error,
        next,
    };
    event(key, second, change)
}

async fn one(stores: &Stores, key: &RunKey) -> Run {
    let runs = stores[0]
        .get(&key.message_id, Some(&key.trigger))
        .await
        .expect("get");
    assert_eq!(runs.len(), 1, "one run for {key}: {runs:?}");
    runs.into_iter().next().unwrap()
}

fn states(run: &Run) -> Vec<RunState> {
    run.transitions
        .iter()
        .map(|transition| transition.state)
        .collect()
}

async fn a_run_begins_when_enqueued(stores: Stores) {
    let topic = topic();
    let id = MessageId::generate();
    let now = RunKey::new(id.clone(), trigger("mailer"));
    let later = RunKey::new(id.clone(), trigger("audit"));
    let mut delayed = origin(&topic, 0);
    delayed.run_at = Some(at(60));
    let events = [
        event(&now, 0, Change::Enqueued(origin(&topic, 0))),
        event(&later, 0, Change::Enqueued(delayed)),
    ];
    let applied = stores[0].apply(&events).await.expect("apply");
    assert_eq!(applied.len(), 2);
    let run = one(&stores, &now).await;
    assert_eq!((run.state, &run.topic), (RunState::Queued, &topic));
    assert_eq!(run.data, json!({"n": 0}));
    assert_eq!(one(&stores, &later).await.state, RunState::Delayed);
    let both = stores[1].get(&id, None).await.expect("get both");
    assert_eq!(both.len(), 2, "a message on two triggers has two runs");
    let nothing = stores[0]
        .get(&MessageId::generate(), None)
        .await
        .expect("get");
    assert!(nothing.is_empty());
}

async fn attempts_record_errors_retries_and_the_result(stores: Stores) {
    let topic = topic();
    let key = RunKey::new(MessageId::generate(), trigger("mailer"));
    let events = [
        event(&key, 0, Change::Enqueued(origin(&topic, 0))),
        started(&key, &topic, 1, 1),
        event(&key, 2, Change::Progress(json!({"sent": 1}))),
        finished(
            &key,
            3,
            1,
            AttemptOutcome::Failed,
            Next::Retry { at: at(5) },
        ),
    ];
    stores[0].apply(&events).await.expect("apply");
    let run = one(&stores, &key).await;
    assert_eq!(run.state, RunState::Retrying);
    assert_eq!(run.retry_at, Some(at(5)));
    assert_eq!(run.progress, Some(json!({"sent": 1})));
    let events = [
        started(&key, &topic, 5, 2),
        finished(
            &key,
            7,
            2,
            AttemptOutcome::Succeeded,
            Next::Succeeded {
                result: Some(json!({"delivered": true})),
            },
        ),
    ];
    stores[1].apply(&events).await.expect("apply");
    let run = one(&stores, &key).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.result, Some(json!({"delivered": true})));
    assert_eq!(run.finished_at, Some(at(7)));
    assert_eq!(run.attempts.len(), 2);
    let first = &run.attempts[0];
    assert_eq!(
        (first.number, first.outcome),
        (1, Some(AttemptOutcome::Failed))
    );
    assert_eq!(first.duration_ms, Some(2000));
    assert!(
        first
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("SMTP timeout")
    );
    assert_eq!(&*first.instance, "host:1");
    assert!(first.traceparent.is_some());
    assert_eq!(run.attempts[1].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(
        states(&run),
        [
            RunState::Queued,
            RunState::Running,
            RunState::Retrying,
            RunState::Running,
            RunState::Succeeded
        ]
    );
}

async fn events_in_any_order_end_in_the_same_run(stores: Stores) {
    let topic = topic();
    let key = RunKey::new(MessageId::generate(), trigger("mailer"));
    // The consumer's events reach the store before the enqueuer's; attempt 1's late
    // settlement comes after attempt 2 started elsewhere.
    stores[0]
        .apply(&[started(&key, &topic, 1, 1)])
        .await
        .expect("apply");
    stores[1]
        .apply(&[started(&key, &topic, 9, 2)])
        .await
        .expect("apply");
    let late = finished(
        &key,
        10,
        1,
        AttemptOutcome::LeaseExpired,
        Next::Retry { at: at(11) },
    );
    stores[0].apply(&[late]).await.expect("apply");
    let mut enqueued = origin(&topic, 0);
    enqueued.replay_of = Some(MessageId::from_string("earlier"));
    stores[1]
        .apply(&[event(&key, 0, Change::Enqueued(enqueued))])
        .await
        .expect("apply");
    let run = one(&stores, &key).await;
    assert_eq!(run.state, RunState::Running, "attempt 2 is still running");
    assert_eq!(run.attempts.len(), 2);
    assert_eq!(run.attempts[0].outcome, Some(AttemptOutcome::LeaseExpired));
    assert_eq!(run.replay_of, Some(MessageId::from_string("earlier")));
    let first = &run.transitions[0];
    assert_eq!(
        (first.state, first.at),
        (RunState::Queued, at(0)),
        "queued when its message was enqueued, not when the first event reached the store"
    );
    // The same events again change nothing (a redelivered batch).
    let again = stores[0]
        .apply(&[started(&key, &topic, 9, 2)])
        .await
        .expect("apply");
    assert_eq!(again[0], run);
}

async fn cancel_stops_a_waiting_run_and_marks_a_running_one(stores: Stores) {
    let topic = topic();
    let waiting = RunKey::new(MessageId::generate(), trigger("mailer"));
    let running = RunKey::new(MessageId::generate(), trigger("mailer"));
    let done = RunKey::new(MessageId::generate(), trigger("mailer"));
    let events = [
        event(&waiting, 0, Change::Enqueued(origin(&topic, 0))),
        event(&running, 0, Change::Enqueued(origin(&topic, 0))),
        started(&running, &topic, 1, 1),
        event(&done, 0, Change::Enqueued(origin(&topic, 0))),
        started(&done, &topic, 1, 1),
        finished(
            &done,
            2,
            1,
            AttemptOutcome::Succeeded,
            Next::Succeeded { result: None },
        ),
    ];
    stores[0].apply(&events).await.expect("apply");
    let cancels = [
        event(&waiting, 3, Change::CancelRequested),
        event(&running, 3, Change::CancelRequested),
        event(&done, 3, Change::CancelRequested),
    ];
    let after = stores[1].apply(&cancels).await.expect("apply");
    assert_eq!(
        after[0].state,
        RunState::Cancelled,
        "a waiting run is cancelled at once"
    );
    assert_eq!(
        after[1].state,
        RunState::Running,
        "a running one waits for its handler"
    );
    assert_eq!(after[1].cancel_requested_at, Some(at(3)));
    assert_eq!(
        after[2].state,
        RunState::Succeeded,
        "a finished run stays as it is"
    );
    assert_eq!(after[2].cancel_requested_at, None);
    let mut seen = stores[0].cancels_since(at(3)).await.expect("cancels");
    seen.retain(|key| key == &waiting || key == &running || key == &done);
    seen.sort();
    let mut expected = vec![waiting.clone(), running.clone()];
    expected.sort();
    assert_eq!(seen, expected);
    let stopped = finished(&running, 4, 1, AttemptOutcome::Cancelled, Next::Cancelled);
    stores[0].apply(&[stopped]).await.expect("apply");
    let run = one(&stores, &running).await;
    assert_eq!(run.state, RunState::Cancelled);
    assert_eq!(run.attempts[0].outcome, Some(AttemptOutcome::Cancelled));
}

async fn a_redrive_reopens_a_dead_lettered_run(stores: Stores) {
    let topic = topic();
    let key = RunKey::new(MessageId::generate(), trigger("mailer"));
    let events = [
        started(&key, &topic, 1, 1),
        finished(&key, 2, 1, AttemptOutcome::Failed, Next::DeadLettered),
    ];
    stores[0].apply(&events).await.expect("apply");
    assert_eq!(one(&stores, &key).await.state, RunState::DeadLettered);
    // Redriven: the message comes back at attempt 1.
    let events = [
        started(&key, &topic, 11, 1),
        finished(
            &key,
            12,
            1,
            AttemptOutcome::Succeeded,
            Next::Succeeded { result: None },
        ),
    ];
    stores[1].apply(&events).await.expect("apply");
    let run = one(&stores, &key).await;
    assert_eq!(run.state, RunState::Succeeded);
    assert_eq!(run.laps, 1);
    let laps: Vec<(u32, u32)> = run.attempts.iter().map(|a| (a.lap, a.number)).collect();
    assert_eq!(laps, [(0, 1), (1, 1)]);
}

/// Six runs on two triggers, one a second apart, the odd ones failed.
async fn listed(stores: &Stores, topic: &TopicName) -> Vec<RunKey> {
    let mut keys = Vec::new();
    let mut events = Vec::new();
    for n in 0..6_i64 {
        let name = if n % 2 == 0 { "even" } else { "odd" };
        let key = RunKey::new(MessageId::generate(), trigger(name));
        let mut enqueued = origin(topic, n);
        if n == 2 {
            enqueued.idempotency_key = Some("order-2".into());
        }
        events.push(event(&key, n, Change::Enqueued(enqueued)));
        events.push(started(&key, topic, n, 1));
        if n % 2 == 1 {
            let failure = finished(&key, n, 1, AttemptOutcome::Failed, Next::DeadLettered);
            events.push(failure);
        }
        keys.push(key);
    }
    stores[0].apply(&events).await.expect("apply");
    keys
}

async fn listing_filters_and_pages_newest_first(stores: Stores) {
    let topic = topic();
    let keys = listed(&stores, &topic).await;
    let query = |edit: fn(&mut RunQuery)| {
        let mut query = RunQuery {
            topic: Some(topic.clone()),
            ..RunQuery::default()
        };
        edit(&mut query);
        query
    };
    let ids = |runs: &[Run]| runs.iter().map(Run::key).collect::<Vec<_>>();
    let all = stores[1].list(&query(|_| {})).await.expect("list");
    let newest_first: Vec<RunKey> = keys.iter().rev().cloned().collect();
    assert_eq!(ids(&all.runs), newest_first);
    assert_eq!(all.next_cursor, None);
    let odd = stores[1]
        .list(&query(|q| q.trigger = Some(trigger("odd"))))
        .await
        .unwrap();
    assert_eq!(odd.runs.len(), 3);
    let dead = query(|q| q.state = Some(RunState::DeadLettered));
    assert_eq!(stores[1].list(&dead).await.unwrap().runs.len(), 3);
    let window = query(|q| {
        q.since = Some(at(1));
        q.until = Some(at(3));
    });
    assert_eq!(
        ids(&stores[1].list(&window).await.unwrap().runs),
        [keys[2].clone(), keys[1].clone()]
    );
    let smtp = query(|q| q.error_contains = Some("smtp TIMEOUT".into()));
    assert_eq!(stores[1].list(&smtp).await.unwrap().runs.len(), 3);
    let none = query(|q| q.error_contains = Some("100%_".into()));
    assert!(stores[1].list(&none).await.unwrap().runs.is_empty());
    // An operator's search: a text of the data, an idempotency key, an id.
    let in_data = query(|q| q.contains = Some(r#""N":4"#.into()));
    assert_eq!(
        ids(&stores[1].list(&in_data).await.unwrap().runs),
        [keys[4].clone()]
    );
    let by_key = query(|q| q.contains = Some("ORDER-2".into()));
    let found = stores[1].list(&by_key).await.unwrap().runs;
    assert_eq!(ids(&found), [keys[2].clone()]);
    assert_eq!(found[0].idempotency_key.as_deref(), Some("order-2"));
    let mut by_id = query(|_| {});
    by_id.contains = Some(keys[3].message_id.to_string());
    assert_eq!(
        ids(&stores[1].list(&by_id).await.unwrap().runs),
        [keys[3].clone()]
    );
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let mut page_query = query(|q| q.limit = Some(4));
        page_query.cursor = cursor;
        let page = stores[0].list(&page_query).await.expect("page");
        paged.extend(ids(&page.runs));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, newest_first, "pages cover every run once, in order");
    let bad = query(|q| q.limit = Some(0));
    assert!(stores[0].list(&bad).await.is_err());
}

async fn the_sweep_keeps_what_retention_keeps(stores: Stores) {
    let topic = topic();
    let key = |name: &str| RunKey::new(MessageId::generate(), trigger(name));
    let (old_ok, new_ok, old_failed, waiting) = (key("a"), key("a"), key("a"), key("a"));
    let mut events = Vec::new();
    for (run, second) in [(&old_ok, 10), (&new_ok, 100)] {
        events.push(started(run, &topic, second - 1, 1));
        events.push(finished(
            run,
            second,
            1,
            AttemptOutcome::Succeeded,
            Next::Succeeded { result: None },
        ));
    }
    events.push(started(&old_failed, &topic, 49, 1));
    events.push(finished(
        &old_failed,
        50,
        1,
        AttemptOutcome::Failed,
        Next::DeadLettered,
    ));
    events.push(event(&waiting, 0, Change::Enqueued(origin(&topic, 0))));
    stores[0].apply(&events).await.expect("apply");
    let retention = Retention {
        succeeded_before: at(60),
        failed_before: at(40),
    };
    stores[1].sweep(retention).await.expect("sweep");
    let query = RunQuery {
        topic: Some(topic.clone()),
        ..RunQuery::default()
    };
    let mut kept: Vec<RunKey> = stores[0]
        .list(&query)
        .await
        .unwrap()
        .runs
        .iter()
        .map(Run::key)
        .collect();
    kept.sort();
    let mut expected = vec![new_ok, old_failed, waiting];
    expected.sort();
    assert_eq!(
        kept, expected,
        "only the succeeded run finished before its cutoff is gone"
    );
}

async fn concurrent_instances_lose_no_event(stores: Stores) {
    let topic = topic();
    let key = RunKey::new(MessageId::generate(), trigger("mailer"));
    stores[0]
        .apply(&[event(&key, 0, Change::Enqueued(origin(&topic, 0)))])
        .await
        .expect("apply");
    let tasks: Vec<_> = (1..=16_u32)
        .map(|attempt| {
            let store = stores[attempt as usize % 2].clone();
            let event = started(&key, &topic, i64::from(attempt), attempt);
            tokio::spawn(async move { store.apply(&[event]).await.expect("apply") })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let run = one(&stores, &key).await;
    let numbers: Vec<u32> = run.attempts.iter().map(|attempt| attempt.number).collect();
    assert_eq!(
        numbers,
        (1..=16).collect::<Vec<_>>(),
        "every instance's attempt is kept"
    );
}
