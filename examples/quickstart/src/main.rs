//! topiq quickstart on the in-memory adapter: publish email jobs, handle them with retries,
//! watch one fail into the dead-letter queue, fix the cause and redrive it.
//!
//! Run with `cargo run -p quickstart`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use topiq_adapter::{
    Adapter, ConsumeOptions, Delivery, DlqQuery, DlqSelection, Failure, FailureKind, NewMessage,
    SubscriptionKey, SubscriptionSpec, TopicName, TopicSpec, TriggerName,
};
use topiq_memory::BuiltinQueueAdapter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application's handler: sending to a `.invalid` address fails until the domain is fixed.
fn send_email(delivery: &Delivery, domain_fixed: bool) -> Result<(), String> {
    let to = delivery.envelope().data["to"].as_str().unwrap_or_default();
    if to.ends_with(".invalid") && !domain_fixed {
        return Err(format!("cannot resolve the domain of {to}"));
    }
    Ok(())
}

/// Handles deliveries until `count` were settled: ack on success, retry with a short fixed
/// delay, dead-letter on the last attempt.
async fn run_worker(
    subscription: &mut topiq_adapter::Subscription,
    count: usize,
    domain_fixed: bool,
) -> Result<(), BoxError> {
    let mut settled = 0;
    while settled < count {
        let Some(delivery) = subscription.next().await else {
            break;
        };
        let delivery = delivery?;
        let envelope = delivery.envelope().clone();
        match send_email(&delivery, domain_fixed) {
            Ok(()) => {
                println!(
                    "  sent     {} (attempt {})",
                    envelope.data, envelope.attempt
                );
                delivery.ack().await?;
                settled += 1;
            }
            Err(error) if envelope.is_last_attempt() => {
                println!("  failed   {} for good: {error}", envelope.data);
                delivery
                    .dead_letter(Failure::new(FailureKind::RetriesExhausted, error))
                    .await?;
                settled += 1;
            }
            Err(error) => {
                println!(
                    "  retrying {} (attempt {} of {}): {error}",
                    envelope.data, envelope.attempt, envelope.max_attempts
                );
                delivery.nack(Duration::from_millis(200)).await?;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let queue = BuiltinQueueAdapter::new();
    let topic = TopicName::new("emails.send")?;
    let key = SubscriptionKey::new(topic.clone(), TriggerName::new("send-email")?);

    queue.declare_topic(TopicSpec::new(topic.clone())).await?;
    let mut policy = SubscriptionSpec::new(key.clone());
    policy.max_attempts = 3;
    queue.declare_subscription(policy).await?;

    println!("enqueue three emails (one to a domain that does not resolve):");
    for to in ["ada@example.com", "bob@example.invalid", "cy@example.com"] {
        let receipt = queue
            .publish(
                &topic,
                NewMessage::new(json!({ "to": to })).idempotency_key(to),
            )
            .await?;
        println!("  queued   {to} as {}", receipt.message_id);
    }
    let duplicate = queue
        .publish(
            &topic,
            NewMessage::new(json!({ "to": "ada@example.com" })).idempotency_key("ada@example.com"),
        )
        .await?;
    println!(
        "  the same idempotency key again returns {} (duplicate: {})",
        duplicate.message_id, duplicate.duplicate
    );

    println!("handle them, 3 attempts each:");
    let mut subscription = queue.consume(&key, ConsumeOptions { prefetch: 4 }).await?;
    run_worker(&mut subscription, 3, false).await?;

    let page = queue.dlq_list(DlqQuery::new(topic.clone())).await?;
    println!(
        "dead-letter queue of {topic}: {} record(s)",
        page.records.len()
    );
    for record in &page.records {
        println!(
            "  {} on {} after {} attempts: {}",
            record.id, record.trigger, record.attempts, record.error.message
        );
    }

    println!("fix the domain and redrive:");
    let redriven = queue
        .dlq_redrive(&topic, Some(&key.trigger), DlqSelection::All)
        .await?;
    println!("  redriven {redriven}");
    run_worker(&mut subscription, redriven as usize, true).await?;

    let stats = queue.stats(&key).await?;
    println!(
        "done: waiting {}, in flight {}, dead-lettered {}",
        stats.waiting, stats.in_flight, stats.dead_lettered
    );
    queue.close().await?;
    Ok(())
}
