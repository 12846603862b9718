//! The schedule calls on the in-memory adapter and runs store: create (with every check of
//! its input), list with the next tick, fire now, pause, resume and delete; a config's
//! schedule beside one made at run time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use topiq::{Config, Functions, Message, QueueModule};

fn config() -> Config {
    let text = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
triggers:
  pulse:
    type: queue
    function: beat
    config:
      topic: beats
schedules:
  nightly-report:
    cron: \"0 2 * * *\"
    timezone: Europe/Berlin
    topic: beats
";
    Config::from_yaml_with_variables(text, "test.yaml", &HashMap::new())
        .unwrap_or_else(|err| panic!("{err}"))
}

type Beats = Arc<Mutex<Vec<(String, jiff::Timestamp, Value)>>>;

fn functions(beats: &Beats) -> Functions {
    let beats = Arc::clone(beats);
    let mut functions = Functions::new();
    functions.register("beat", move |message: Message| {
        let beats = Arc::clone(&beats);
        async move {
            let (name, tick) = message.schedule_tick().expect("a schedule's message");
            let data = message.data().clone();
            beats.lock().unwrap().push((name.to_owned(), tick, data));
            Ok(())
        }
    });
    functions
}

async fn ok(module: &QueueModule, name: &str, args: Value) -> Value {
    module
        .call(name, args)
        .await
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

async fn code(module: &QueueModule, name: &str, args: Value) -> (String, String) {
    let err = module.call(name, args).await.expect_err("refused");
    (err.code().to_owned(), err.to_string())
}

#[tokio::test]
async fn schedules_are_made_and_steered_by_calls() {
    let beats = Beats::default();
    let module = QueueModule::new(config(), functions(&beats)).await.unwrap();
    let workers = module.start_workers();
    let report =
        json!({"name": "report", "every": "1h", "topic": "beats", "data": {"kind": "hourly"}});
    let created = ok(&module, "queue.schedule_create", report).await;
    let now = jiff::Timestamp::now().as_second();
    let next_hour = jiff::Timestamp::from_second((now / 3600 + 1) * 3600).unwrap();
    assert_eq!(
        created["schedule"]["next_tick"],
        next_hour.to_string(),
        "{created}"
    );
    assert_eq!(created["schedule"]["from_config"], false);

    let listed = ok(&module, "queue.schedule_list", json!({})).await;
    let names: Vec<&str> = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|schedule| schedule["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nightly-report", "report"]);
    assert_eq!(listed["schedules"][0]["from_config"], true);
    assert_eq!(listed["schedules"][0]["timezone"], "Europe/Berlin");

    let fired = ok(&module, "queue.schedule_fire", json!({"name": "report"})).await;
    assert_eq!(fired["duplicate"], false, "{fired}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while beats.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the fired message was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (name, tick, data) = beats.lock().unwrap()[0].clone();
    assert_eq!((name.as_str(), data), ("report", json!({"kind": "hourly"})));
    assert!((jiff::Timestamp::now() - tick).as_secs() < 10, "{tick}");

    ok(&module, "queue.schedule_pause", json!({"name": "report"})).await;
    let listed = ok(&module, "queue.schedule_list", json!({})).await;
    assert_eq!(listed["schedules"][1]["paused"], true);
    assert_eq!(listed["schedules"][1]["next_tick"], Value::Null);
    ok(&module, "queue.schedule_resume", json!({"name": "report"})).await;
    ok(&module, "queue.schedule_delete", json!({"name": "report"})).await;
    let (gone, message) = code(&module, "queue.schedule_pause", json!({"name": "report"})).await;
    assert_eq!(gone, "unknown_schedule", "{message}");
    workers.shutdown().await;
    module.close().await;
}

#[tokio::test]
async fn a_bad_schedule_is_refused_with_what_to_write() {
    let module = QueueModule::new(config(), functions(&Beats::default()))
        .await
        .unwrap();
    let cases = [
        (
            json!({"name": "x", "cron": "*/5 * * *", "topic": "beats"}),
            "invalid_argument",
            "5-field cron",
        ),
        (
            json!({"name": "x", "every": "1s", "cron": "* * * * *", "topic": "beats"}),
            "invalid_argument",
            "exactly one of",
        ),
        (
            json!({"name": "x", "every": "1s", "topic": "nowhere"}),
            "unknown_topic",
            "nowhere",
        ),
        (
            json!({"name": "no spaces", "every": "1s", "topic": "beats"}),
            "invalid_argument",
            "letters, digits",
        ),
        (
            json!({"name": "x", "every": "1s", "topic": "beats", "repeat": 3}),
            "invalid_argument",
            "repeat",
        ),
        (
            json!({"name": "x", "every": "1s", "topic": "beats", "catch_up": "all"}),
            "invalid_argument",
            "all",
        ),
    ];
    for (args, expected, needle) in cases {
        let (found, message) = code(&module, "queue.schedule_create", args.clone()).await;
        assert_eq!(found, expected, "{args}: {message}");
        assert!(message.contains(needle), "{args}: {message}");
    }
    let listed = ok(&module, "queue.schedule_list", json!({})).await;
    assert_eq!(
        listed["schedules"].as_array().unwrap().len(),
        1,
        "nothing half-made"
    );
    module.close().await;
}
