//! HTTP functions: a function declared in `config.yaml` as an endpoint, called with a POST of
//! the message's envelope.
//!
//! The request carries the trigger's name in `topiq-trigger`, so the function can report its
//! run's progress (`queue.run_progress` with the envelope's `id` and that trigger). A 2xx
//! answer acknowledges the message; its body, when it is JSON (`application/json`, up to
//! 64 KiB), is kept as the run's result. A cancelled run's request is abandoned. 408, 429, 5xx, a timeout or a connection that
//! cannot be made are retryable failures (a `Retry-After` answer sets the next delay); any
//! other answer (4xx, or a 3xx: redirects are not followed) is a non-retryable failure that
//! sends the message straight to the DLQ, with the status and the start of the body as the
//! error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use topiq::config::HttpFunctionSettings;
use topiq::{Handler, HandlerError, Message};

/// How much of a failed answer's body goes into the error.
const BODY_EXCERPT: usize = 512;

/// The header naming the trigger whose run the request is (`queue.run_progress` takes it).
pub const TRIGGER_HEADER: &str = "topiq-trigger";

/// The largest 2xx JSON body kept as the run's result; a larger one is not kept.
pub(crate) const MAX_RESULT_BYTES: usize = 64 * 1024;

/// One HTTP function: its settings and a pooled client.
pub(crate) struct HttpFunction {
    settings: Arc<HttpFunctionSettings>,
    client: reqwest::Client,
}

impl HttpFunction {
    pub(crate) fn new(settings: HttpFunctionSettings) -> Result<Self, reqwest::Error> {
        crate::install_tls_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("topiq/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.timeout)
            .build()?;
        Ok(Self {
            settings: Arc::new(settings),
            client,
        })
    }
}

impl Handler for HttpFunction {
    fn call(&self, message: Message) -> BoxFuture<'static, Result<Option<Value>, HandlerError>> {
        let settings = Arc::clone(&self.settings);
        let client = self.client.clone();
        Box::pin(async move { deliver(&client, &settings, &message).await })
    }
}

async fn deliver(
    client: &reqwest::Client,
    settings: &HttpFunctionSettings,
    message: &Message,
) -> Result<Option<Value>, HandlerError> {
    // `emails.send: POST http://127.0.0.1:9000`: the function and where it went, no secret.
    let endpoint = format!("{}: POST {}", settings.name, settings.endpoint());
    let body = serde_json::to_vec(message.envelope())
        .map_err(|err| HandlerError::non_retryable(format!("cannot encode the envelope: {err}")))?;
    let mut request = client
        .post(settings.url.clone())
        .headers(settings.headers.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The run is the message id (in the body) on this trigger: what `queue.run_progress` needs.
    if let Ok(trigger) = HeaderValue::from_str(message.trigger().as_str()) {
        request = request.header(TRIGGER_HEADER, trigger);
    }
    for (name, value) in [
        ("traceparent", &message.traceparent),
        ("baggage", &message.baggage),
    ] {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            request = request.header(name, value);
        }
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|err| transport_failure(&endpoint, settings.timeout, err))?;
    let status = response.status();
    if status.is_success() {
        return Ok(result_of(response).await);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    let excerpt = body_excerpt(response).await;
    let text = format!("{endpoint} answered {status}{excerpt}");
    if is_retryable(status) {
        let error = HandlerError::retryable(text);
        Err(match retry_after {
            Some(delay) => error.retry_after(delay),
            None => error,
        })
    } else if status.is_redirection() {
        Err(HandlerError::non_retryable(format!(
            "{text} (redirects are not followed: configure the final URL)"
        )))
    } else {
        Err(HandlerError::non_retryable(text))
    }
}

/// 408, 429 and every 5xx are worth retrying; any other failure answer is not.
fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// A request that got no answer: always retryable. The error names the endpoint without
/// credentials or query (reqwest's own message would hold the whole URL).
fn transport_failure(endpoint: &str, timeout: Duration, err: reqwest::Error) -> HandlerError {
    if err.is_timeout() {
        return HandlerError::retryable(format!("{endpoint}: no answer within {timeout:?}"));
    }
    // reqwest's Display stops at its own layer; the cause (such as "Connection refused")
    // is in the source chain.
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let mut text = format!("{endpoint}: {}", err.without_url());
    for cause in causes {
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    HandlerError::retryable(text)
}

/// The most of a successful answer's body read to reuse its connection; a longer one closes it.
const DRAIN_LIMIT: usize = 64 * 1024;

/// A 2xx answer's JSON body (up to [`MAX_RESULT_BYTES`]), which the run keeps as its
/// result; read to its end (up to a bound) so the connection goes back to the pool.
async fn result_of(mut response: reqwest::Response) -> Option<Value> {
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !is_json {
        drain(response).await;
        return None;
    }
    let mut body = Vec::new();
    while body.len() <= MAX_RESULT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return serde_json::from_slice(&body).ok(),
            Err(_) => return None,
        }
    }
    drain(response).await;
    None
}

async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read <= DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => return,
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `: <start of the body>` of a failed answer, or nothing when it is empty or unreadable.
async fn body_excerpt(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < BODY_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let truncated = bytes.len() > BODY_EXCERPT;
    bytes.truncate(BODY_EXCERPT);
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else if truncated {
        format!(": {text}…")
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 409, 422] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let delay = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(delay > Duration::from_secs(100) && delay <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
