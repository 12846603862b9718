//! Schedules: a heartbeat every second from `schedules:` in the config, and a report made at
//! run time with `queue.schedule_create` (a cron expression in a time zone), fired once now.
//! Each handler sees which schedule and tick its message is for.
//!
//! Run with `cargo run -p flow-control --bin schedules`.

use std::time::Duration;

use serde_json::json;
use topiq::{Config, Functions, Message, QueueModule};

const CONFIG: &str = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
schedules:
  heartbeat:
    every: 1s
    topic: health.ping
triggers:
  ping:
    type: queue
    function: ping
    config:
      topic: health.ping
";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the example for `seconds`; returns how many messages the schedules enqueued.
async fn run(seconds: u64) -> Result<usize, BoxError> {
    let (sender, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let mut functions = Functions::new();
    functions.register("ping", move |message: Message| {
        let sender = sender.clone();
        async move {
            if let Some((schedule, tick)) = message.schedule_tick() {
                println!("  {schedule} fired for {tick}: {}", message.data());
                let _ = sender.send(schedule.to_owned());
            }
            Ok(())
        }
    });
    let config = Config::from_yaml(CONFIG, "schedules example")?;
    let module = QueueModule::new(config, functions).await?;
    let report = json!({
        "name": "nightly-report", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
        "topic": "health.ping", "data": {"kind": "nightly"}, "catch_up": "last",
    });
    let created = module.call("queue.schedule_create", report).await?;
    println!(
        "nightly-report next fires at {}",
        created["schedule"]["next_tick"]
    );
    module
        .call("queue.schedule_fire", json!({"name": "nightly-report"}))
        .await?;
    let workers = module.start_workers();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    workers.shutdown().await;
    module.close().await;
    let mut count = 0;
    while handled.try_recv().is_ok() {
        count += 1;
    }
    Ok(count)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let count = run(5).await?;
    println!("{count} scheduled messages handled");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        let count = super::run(3).await.expect("runs");
        assert!((3..=5).contains(&count), "{count}");
    }
}
