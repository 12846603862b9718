//! The receiver of the http-worker example: the endpoint topiq POSTs each `emails.send`
//! message to. It answers 200 (sent), 400 for a message without `to` (no retry can fix it:
//! straight to the DLQ), and 503 for `"to": "flaky@example.com"` (retried, then dead-lettered).
//!
//! `cargo run -p http-worker` listens on 127.0.0.1:9000 (`HTTP_WORKER_LISTEN` changes it).

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address =
        std::env::var("HTTP_WORKER_LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("http-worker: POST http://{address}/emails");
    let app = Router::new().route("/emails", post(send_email));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// One delivery: the envelope (`id`, `topic`, `data`, `attempt`, `max_attempts`,
/// `enqueued_at`, ...) as the body, the trace context as headers.
async fn send_email(headers: HeaderMap, body: String) -> (StatusCode, String) {
    let Ok(envelope) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the body is not JSON".into());
    };
    let traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    println!(
        "message {} attempt {}/{} traceparent {traceparent}: {}",
        envelope["id"], envelope["attempt"], envelope["max_attempts"], envelope["data"]
    );
    match envelope["data"]["to"].as_str() {
        None => (
            StatusCode::BAD_REQUEST,
            "no recipient: `to` is missing".into(),
        ),
        Some("flaky@example.com") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the mail server is down".into(),
        ),
        Some(to) => (StatusCode::OK, format!("sent to {to}")),
    }
}
