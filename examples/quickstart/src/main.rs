//! topiq quickstart: runs the top-level `config.yaml` on the in-memory adapter with one
//! application function, `emails.send`. One email goes to a domain that does not resolve: it
//! is retried, dead-lettered (and published to `emails.failed`, where `builtin.log` picks it
//! up), then redriven once the domain is "fixed". Its run shows that whole history; then a
//! delivered email's run is replayed.
//!
//! Run with `cargo run -p quickstart` (optionally `-- path/to/config.yaml`). With `--serve`,
//! the module then keeps running with its HTTP API and the console (`console:` in the config)
//! until Ctrl-C: open <http://127.0.0.1:7720/console> to see what the walk-through left.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use topiq::{Config, Functions, HandlerError, Message, QueueModule};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application's handler: an address on a `.invalid` domain fails until the DNS is fixed.
fn register_send_email(functions: &mut Functions, dns_fixed: Arc<AtomicBool>) {
    functions.register("emails.send", move |message: Message| {
        let dns_fixed = Arc::clone(&dns_fixed);
        async move {
            let to = message.data()["to"].as_str().unwrap_or_default().to_owned();
            if to.ends_with(".invalid") && !dns_fixed.load(Ordering::SeqCst) {
                println!(
                    "  ✗ {to}: attempt {} of {} failed",
                    message.attempt, message.max_attempts
                );
                return Err(HandlerError::retryable(format!(
                    "cannot resolve the domain of {to}"
                )));
            }
            println!("  ✓ sent to {to} (attempt {})", message.attempt);
            Ok(())
        }
    });
}

/// Polls `call` until `done` says its result is final, for up to 10 seconds.
async fn wait_for(
    module: &QueueModule,
    call: &str,
    args: Value,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, BoxError> {
    for _ in 0..100 {
        let result = module.call(call, args.clone()).await?;
        if done(&result) {
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{call} did not reach the expected state within 10s").into())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,topiq=info")),
        )
        .init();
    let serve = std::env::args().skip(1).any(|arg| arg == "--serve");
    let path = std::env::args_os()
        .skip(1)
        .find(|arg| arg != "--serve")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config.yaml"),
            PathBuf::from,
        );
    let config = Config::load(&path)?;
    let dns_fixed = Arc::new(AtomicBool::new(false));
    let mut functions = Functions::with_builtins();
    register_send_email(&mut functions, Arc::clone(&dns_fixed));
    let module = QueueModule::new(config, functions).await?;
    let workers = module.start_workers();

    let ids = enqueue_emails(&module).await?;
    show_dead_letters(&module).await?;
    println!("fix the DNS and redrive:");
    dns_fixed.store(true, Ordering::SeqCst);
    let dlq = json!({"topic": "emails.send", "trigger": "send-email"});
    let redriven = module.call("queue.redrive_dlq", dlq).await?;
    println!("  {redriven}");
    wait_for(
        &module,
        "queue.stats",
        json!({"topic": "emails.send"}),
        |stats| {
            stats["triggers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|row| row["trigger"] == "send-email" && row["succeeded"] == 3)
        },
    )
    .await?;
    print_stats(&module).await?;
    print_run(&module, &ids[1]).await?;
    replay(&module, &ids[0]).await?;
    workers.shutdown().await;
    if serve {
        return serve_until_interrupted(module).await;
    }
    module.close().await;
    Ok(())
}

/// Runs the module's triggers with its HTTP API and console until Ctrl-C.
async fn serve_until_interrupted(module: QueueModule) -> Result<(), BoxError> {
    let api = topiq_server::ApiServer::bind(module.clone(), &module.config().api).await?;
    let address = api.local_addr()?;
    println!(
        "serving the HTTP API on http://{address} and the console on http://{address}/console; Ctrl-C stops"
    );
    module
        .run_beside(topiq::shutdown_signal(), |stop| api.serve(stop))
        .await?;
    Ok(())
}

/// Three emails, one to a domain that does not resolve; then one key again. Returns the
/// three message ids.
async fn enqueue_emails(module: &QueueModule) -> Result<Vec<String>, BoxError> {
    let mut ids = Vec::new();
    println!("enqueue three emails, one high priority, one to a domain that does not resolve:");
    for (to, priority) in [
        ("ada@example.com", "high"),
        ("bob@example.invalid", "normal"),
        ("cy@example.com", "normal"),
    ] {
        let result = module
            .call(
                "queue.enqueue",
                json!({"topic": "emails.send", "data": {"to": to, "priority": priority}, "idempotency_key": to}),
            )
            .await?;
        println!("  queued {to}: {result}");
        ids.push(text(&result["message_id"]).to_owned());
    }
    let again = module
        .call(
            "queue.enqueue",
            json!({"topic": "emails.send", "data": {"to": "ada@example.com"}, "idempotency_key": "ada@example.com"}),
        )
        .await?;
    println!("  the same idempotency key again: {again}");
    Ok(ids)
}

/// The run of message `id` on `send-email`: every state it went through and every attempt.
async fn print_run(module: &QueueModule, id: &str) -> Result<(), BoxError> {
    let args = json!({"id": id, "trigger": "send-email"});
    let runs = module.call("queue.run_get", args).await?;
    let run = &runs["runs"][0];
    println!(
        "the run of {} on send-email: {}",
        text(&run["data"]["to"]),
        text(&run["state"])
    );
    let states: Vec<&str> = run["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|transition| text(&transition["state"]))
        .collect();
    println!("  history: {}", states.join(" → "));
    for attempt in run["attempts"].as_array().into_iter().flatten() {
        let error = attempt["error"]["message"]
            .as_str()
            .map(|message| format!(": {message}"))
            .unwrap_or_default();
        println!(
            "  attempt {} {}{error}",
            attempt["number"],
            text(&attempt["outcome"])
        );
    }
    Ok(())
}

/// Replays the run of message `id`: the same email once more, to `send-email` only.
async fn replay(module: &QueueModule, id: &str) -> Result<(), BoxError> {
    println!("replay the run of the first email:");
    let replayed = module
        .call(
            "queue.run_replay",
            json!({"id": id, "trigger": "send-email"}),
        )
        .await?;
    let new_id = text(&replayed["message_id"]).to_owned();
    let args = json!({"id": new_id, "trigger": "send-email"});
    let run = wait_for(module, "queue.run_get", args, |runs| {
        runs["runs"][0]["state"] == "succeeded"
    })
    .await?;
    println!(
        "  {new_id} (replay of {}): {}",
        text(&run["runs"][0]["replay_of"]),
        text(&run["runs"][0]["state"])
    );
    Ok(())
}

/// Waits for the failing email to reach the DLQ, and lists it.
async fn show_dead_letters(module: &QueueModule) -> Result<(), BoxError> {
    let dlq = json!({"topic": "emails.send", "trigger": "send-email"});
    wait_for(module, "queue.dlq_count", dlq.clone(), |r| r["count"] == 1).await?;
    let listed = module.call("queue.dlq_list", dlq).await?;
    println!("dead-letter queue of send-email:");
    for record in listed["messages"].as_array().into_iter().flatten() {
        println!(
            "  {} after {} attempts: {}",
            text(&record["data"]["to"]),
            record["attempts"],
            text(&record["error"]["message"])
        );
    }
    Ok(())
}

async fn print_stats(module: &QueueModule) -> Result<(), BoxError> {
    println!("stats:");
    let stats = module.call("queue.stats", json!({})).await?;
    for row in stats["triggers"].as_array().into_iter().flatten() {
        println!(
            "  {}/{}: succeeded {}, failed {}, filtered {}, dead-lettered {}, in DLQ now {}, waiting {}",
            text(&row["topic"]),
            text(&row["trigger"]),
            row["succeeded"],
            row["failed"],
            row["filtered"],
            row["dead_lettered"],
            row["dlq"],
            row["waiting"]
        );
    }
    Ok(())
}
