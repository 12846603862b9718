//! Priorities: ten routine reports are waiting when an urgent one is enqueued at priority 2;
//! the urgent one is handled next, and the routine ones still get their turn.
//!
//! Run with `cargo run -p flow-control --bin priority`.

use serde_json::json;
use topiq::{Config, Functions, Message, QueueModule};

const CONFIG: &str = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        reports.generate: { priority_levels: 3 }
triggers:
  reports:
    type: queue
    function: reports.generate
    config:
      topic: reports.generate
";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Enqueues the backlog and the urgent report; returns the reports in the order handled.
async fn run() -> Result<Vec<String>, BoxError> {
    let (sender, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let mut functions = Functions::new();
    functions.register("reports.generate", move |message: Message| {
        let sender = sender.clone();
        async move {
            let name = message.data()["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            println!("  generating {name}");
            let _ = sender.send(name);
            Ok(())
        }
    });
    let config = Config::from_yaml(CONFIG, "priority example")?;
    let module = QueueModule::new(config, functions).await?;
    for n in 0..10 {
        let data = json!({"name": format!("routine-{n}")});
        let args = json!({"topic": "reports.generate", "data": data});
        module.call("queue.enqueue", args).await?;
    }
    let urgent = json!({"topic": "reports.generate", "data": {"name": "urgent"}, "priority": 2});
    module.call("queue.enqueue", urgent).await?;
    let workers = module.start_workers();
    let mut order = Vec::new();
    while order.len() < 11 {
        match handled.recv().await {
            Some(name) => order.push(name),
            None => break,
        }
    }
    workers.shutdown().await;
    module.close().await;
    Ok(order)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let order = run().await?;
    println!("order: {}", order.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        let order = super::run().await.expect("runs");
        assert_eq!(order.len(), 11);
        assert_eq!(order[0], "urgent", "{order:?}");
    }
}
