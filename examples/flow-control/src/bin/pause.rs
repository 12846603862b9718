//! Pausing a trigger: while `send-email` is paused, messages accumulate and nothing is
//! handled; once resumed, every one is handled, none on a later attempt.
//!
//! Run with `cargo run -p flow-control --bin pause`.

use std::time::Duration;

use serde_json::json;
use topiq::{Config, Functions, Message, QueueModule};

const CONFIG: &str = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
triggers:
  send-email:
    type: queue
    function: emails.send
    config:
      topic: emails.send
";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Pauses, enqueues five, resumes; returns what was handled while paused and after.
async fn run() -> Result<(usize, usize), BoxError> {
    let (sender, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let mut functions = Functions::new();
    functions.register("emails.send", move |message: Message| {
        let sender = sender.clone();
        async move {
            println!(
                "  sent to {} (attempt {})",
                message.data()["to"],
                message.attempt
            );
            let _ = sender.send(());
            Ok(())
        }
    });
    let module = QueueModule::new(Config::from_yaml(CONFIG, "pause example")?, functions).await?;
    let workers = module.start_workers();
    module
        .call("queue.trigger_pause", json!({"trigger": "send-email"}))
        .await?;
    for n in 0..5 {
        let data = json!({"to": format!("user{n}@example.com")});
        module
            .call(
                "queue.enqueue",
                json!({"topic": "emails.send", "data": data}),
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = module.call("queue.stats", json!({})).await?;
    let row = &stats["triggers"][0];
    println!("paused: {}, waiting: {}", row["paused"], row["waiting"]);
    let while_paused = std::iter::from_fn(|| handled.try_recv().ok()).count();
    module
        .call("queue.trigger_resume", json!({"trigger": "send-email"}))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = std::iter::from_fn(|| handled.try_recv().ok()).count();
    workers.shutdown().await;
    module.close().await;
    Ok((while_paused, after))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (while_paused, after) = run().await?;
    println!("handled while paused: {while_paused}; after resuming: {after}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        assert_eq!(super::run().await.expect("runs"), (0, 5));
    }
}
