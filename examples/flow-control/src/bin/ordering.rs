//! Per-key order: payments of three customers are enqueued interleaved; the ledger trigger
//! keeps each customer's payments in the order they were enqueued (one at a time per
//! customer), while different customers run side by side. The first payment of `bob` fails
//! once: his later payments wait for its retry instead of overtaking it.
//!
//! Run with `cargo run -p flow-control --bin ordering`.

use std::collections::BTreeMap;

use serde_json::json;
use topiq::{Config, Functions, HandlerError, Message, QueueModule};

const CONFIG: &str = "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      topics:
        payments: { partitions: 4 }
triggers:
  ledger:
    type: queue
    function: ledger.apply
    config:
      topic: payments
      ordering_key: data.customer
      concurrency: 4
      retry: { backoff: fixed, delay: 100ms, max_attempts: 3 }
";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Enqueues the payments; returns each customer's payments in the order applied.
async fn run() -> Result<BTreeMap<String, Vec<u64>>, BoxError> {
    let (sender, mut applied) = tokio::sync::mpsc::unbounded_channel();
    let mut functions = Functions::new();
    functions.register("ledger.apply", move |message: Message| {
        let sender = sender.clone();
        async move {
            let customer = message.data()["customer"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let n = message.data()["n"].as_u64().unwrap_or_default();
            if customer == "bob" && n == 0 && message.attempt == 1 {
                println!("  {customer} #{n}: the bank is slow, retrying");
                return Err(HandlerError::retryable("bank timeout"));
            }
            println!("  {customer} #{n} applied (attempt {})", message.attempt);
            let _ = sender.send((customer, n));
            Ok(())
        }
    });
    let config = Config::from_yaml(CONFIG, "ordering example")?;
    let module = QueueModule::new(config, functions).await?;
    for n in 0..3 {
        for customer in ["alice", "bob", "carol"] {
            let args = json!({"topic": "payments", "data": {"customer": customer, "n": n}});
            module.call("queue.enqueue", args).await?;
        }
    }
    let workers = module.start_workers();
    let mut by_customer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..9 {
        let Some((customer, n)) = applied.recv().await else {
            break;
        };
        by_customer.entry(customer).or_default().push(n);
    }
    workers.shutdown().await;
    module.close().await;
    Ok(by_customer)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for (customer, order) in run().await? {
        println!("{customer}: {order:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        let by_customer = super::run().await.expect("runs");
        for customer in ["alice", "bob", "carol"] {
            assert_eq!(by_customer[customer], [0, 1, 2], "{by_customer:?}");
        }
    }
}
