//! The HTTP API `topiq run` serves: every `queue.*` call as `POST /v1/call/{name}`, the
//! metrics as `GET /metrics` (Prometheus/OpenMetrics text), and the `GET /healthz` and
//! `GET /readyz` probes.
//!
//! A call's body is its JSON arguments (an empty body is `{}`); the answer is its JSON result
//! with 200, or `{"error": {"code", "message"}}` with the status of the code: 400 bad input,
//! 401 a missing or wrong token, 404 an unknown call, topic or trigger, 413 a body or payload
//! too large, 502 the broker refused, 503 the broker is unavailable. When `api.token` is set,
//! every call and `/metrics` need `Authorization: Bearer <token>`; the probes never do.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use topiq::QueueModule;
use topiq::config::{ApiSettings, Secret};
use topiq::{CallError, CallErrorKind};

/// Why the API cannot serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The address is taken or not allowed.
    #[error(
        "cannot listen on {address} (api.listen): {source}; choose another address or stop what uses it"
    )]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Serving stopped on an I/O error.
    #[error("the HTTP API stopped: {0}")]
    Serve(#[source] std::io::Error),
    /// The console (`console.enabled`) cannot start.
    #[error(transparent)]
    Console(#[from] topiq_console::ConsoleError),
}

/// The API, bound to its address and ready to serve.
pub struct ApiServer {
    listener: TcpListener,
    router: Router,
    console: bool,
}

#[derive(Clone)]
struct ApiState {
    module: QueueModule,
    token: Option<Secret>,
}

impl ApiServer {
    /// Binds `settings.listen` (port 0 picks a free port: see [`local_addr`](Self::local_addr)).
    pub async fn bind(module: QueueModule, settings: &ApiSettings) -> Result<Self, ApiError> {
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ApiError::Listen {
                    address: settings.listen,
                    source,
                })?;
        let state = ApiState {
            module,
            token: settings.token.clone(),
        };
        // The token is checked before the body is read, so an unauthorized caller cannot
        // make the server read a large body.
        let calls = Router::new()
            .route("/v1/call/{name}", post(call))
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                refuse_other_sites,
            ));
        let console = state.module.config().console;
        let mut router = Router::new()
            .merge(calls)
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(settings.max_body_bytes))
            .with_state(state.clone());
        if console.enabled {
            let console = topiq_console::Console::new(state.module)?;
            router = router.merge(
                console
                    .router()
                    .layer(DefaultBodyLimit::max(settings.max_body_bytes)),
            );
        }
        Ok(Self {
            listener,
            router,
            console: console.enabled,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, ApiError> {
        self.listener.local_addr().map_err(ApiError::Serve)
    }

    /// Serves until `shutdown` completes, then finishes the requests in progress.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        if let Ok(address) = self.listener.local_addr() {
            tracing::info!(%address, "HTTP API listening");
            if self.console {
                tracing::info!(url = %format!("http://{address}{}", topiq_console::CONSOLE_PATH), "console served");
            }
        }
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ApiError::Serve)
    }
}

/// `{"error": {"code", "message"}}` with `status`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

/// The HTTP status of a kind of call error.
fn status_of(kind: CallErrorKind) -> StatusCode {
    match kind {
        CallErrorKind::BadInput => StatusCode::BAD_REQUEST,
        CallErrorKind::NotFound => StatusCode::NOT_FOUND,
        CallErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        CallErrorKind::Conflict => StatusCode::CONFLICT,
        CallErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        CallErrorKind::BrokerFull => StatusCode::INSUFFICIENT_STORAGE,
        CallErrorKind::BrokerRefused => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Whether `headers` carry the bearer token (the scheme in any case, the token compared in
/// constant time).
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    let Some((scheme, given)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
}

/// Answers 401 to a call without the configured token; lets every call through when the API
/// has none.
async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match &state.token {
        Some(token) if !authorized(request.headers(), token) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs `Authorization: Bearer <token>` with the token of api.token",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        _ => next.run(request).await,
    }
}

/// On an API without a token (loopback only), refuses what a browser page of another site can
/// send: a call from another origin (a form or `fetch` posting across sites), and a call that
/// names the server by a name other than `localhost` (a site whose name was rebound to
/// 127.0.0.1). Tools such as the CLI or curl send neither.
async fn refuse_other_sites(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let tokenless = state.token.is_none();
    if tokenless
        && (!topiq_console::origin::same_origin(headers)
            || !topiq_console::origin::is_local_host(headers))
    {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API has no token (api.token), so it refuses calls from another site's pages and by names other than localhost; set api.token to call it from elsewhere",
        );
    }
    next.run(request).await
}

async fn call(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than api.max_body_bytes",
            );
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("cannot read the request body: {rejection}"),
            );
        }
    };
    let args: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(args) => args,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    format!(
                        "the body is not JSON ({err}); send the call's arguments as a JSON object"
                    ),
                );
            }
        }
    };
    let mut args = args;
    continue_callers_trace(&name, &mut args, &headers);
    let changes_dlq = matches!(name.as_str(), "queue.redrive_dlq" | "queue.dlq_purge");
    match state.module.call(&name, args).await {
        Ok(result) => {
            if changes_dlq {
                tracing::info!(%peer, call = %name, result = %result, "DLQ changed through the HTTP API");
            }
            (StatusCode::OK, axum::Json(result)).into_response()
        }
        Err(err) => call_error(&err),
    }
}

/// The W3C trace context of the HTTP request (`traceparent`, `baggage` headers), given to an
/// enqueue's messages that carry none in the body (body fields win), so the caller's trace
/// continues through the broker to the handlers whether or not topiq exports spans. An
/// invalid `traceparent` is ignored, as W3C Trace Context asks.
fn continue_callers_trace(name: &str, args: &mut Value, headers: &HeaderMap) {
    let traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| is_valid_traceparent(value));
    let baggage = headers
        .get("baggage")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty() && value.len() <= MAX_BAGGAGE_BYTES);
    if traceparent.is_none() && baggage.is_none() {
        return;
    }
    let messages: Vec<&mut Value> = match name {
        "queue.enqueue" => vec![args],
        "queue.enqueue_batch" => match args.get_mut("messages") {
            Some(Value::Array(items)) => items.iter_mut().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    for message in messages {
        let Some(fields) = message.as_object_mut() else {
            continue;
        };
        for (field, value) in [("traceparent", traceparent), ("baggage", baggage)] {
            if let Some(value) = value {
                fields
                    .entry(field)
                    .or_insert_with(|| Value::String(value.to_owned()));
            }
        }
    }
}

/// W3C's limit on a `baggage` header.
const MAX_BAGGAGE_BYTES: usize = 8192;

/// A `traceparent` W3C Trace Context accepts: `version-traceid-parentid-flags` in lowercase
/// hex (2-32-16-2), version not `ff`, ids not all zeros.
fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let not_zero = |part: &str| part.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace_id, parent_id, flags, rest @ ..] => {
            hex(version, 2)
                && *version != "ff"
                && (rest.is_empty() || *version != "00")
                && hex(trace_id, 32)
                && not_zero(trace_id)
                && hex(parent_id, 16)
                && not_zero(parent_id)
                && hex(flags, 2)
        }
        _ => false,
    }
}

fn call_error(err: &CallError) -> Response {
    error(status_of(err.kind()), err.code(), err.to_string())
}

/// Prometheus' scrape: every series as OpenMetrics text, the broker's counts read now.
async fn metrics(State(state): State<ApiState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.module.metrics_text().await,
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match state.module.readiness().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reasons": reasons})),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; calls are POST /v1/call/{name}, probes GET /healthz and GET /readyz",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "calls are POST /v1/call/{name}; the probes are GET",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_status() {
        use topiq_adapter::{Error, TopicName};
        let status = |err: CallError| status_of(err.kind());
        let invalid_topic = TopicName::new("a b").unwrap_err();
        assert_eq!(invalid_topic.code(), "invalid_topic");
        assert_eq!(status(invalid_topic.into()), StatusCode::BAD_REQUEST);
        let unknown_call = CallError::UnknownCall { name: "x".into() };
        assert_eq!(unknown_call.code(), "unknown_call");
        assert_eq!(status(unknown_call), StatusCode::NOT_FOUND);
        let too_large = Error::PayloadTooLarge {
            topic: TopicName::new("a").unwrap(),
            size: 2,
            limit: 1,
        };
        assert_eq!(status(too_large.into()), StatusCode::PAYLOAD_TOO_LARGE);
        let unavailable = Error::BrokerUnavailable {
            message: "down".into(),
            source: None,
        };
        assert_eq!(unavailable.code(), "broker_unavailable");
        assert_eq!(status(unavailable.into()), StatusCode::SERVICE_UNAVAILABLE);
        let unknown_run = CallError::UnknownRun {
            id: "x".into(),
            trigger: None,
        };
        assert_eq!(unknown_run.code(), "unknown_run");
        assert_eq!(status(unknown_run), StatusCode::NOT_FOUND);
        let finished = CallError::RunState {
            message: "finished".into(),
        };
        assert_eq!(finished.code(), "run_state");
        assert_eq!(status(finished), StatusCode::CONFLICT);
    }

    #[test]
    fn only_a_well_formed_traceparent_is_continued() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(valid));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        ));
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_valid_traceparent(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn header_context_fills_only_what_the_body_leaves_out() {
        let mut headers = HeaderMap::new();
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", header.parse().unwrap());
        headers.insert("baggage", "tenant=acme".parse().unwrap());
        let body = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut args = json!({"topic": "t", "data": 1, "traceparent": body});
        continue_callers_trace("queue.enqueue", &mut args, &headers);
        assert_eq!(args["traceparent"], body);
        assert_eq!(args["baggage"], "tenant=acme");
        let mut batch =
            json!({"topic": "t", "messages": [{"data": 1}, {"data": 2, "baggage": "b=1"}]});
        continue_callers_trace("queue.enqueue_batch", &mut batch, &headers);
        assert_eq!(batch["messages"][0]["traceparent"], header);
        assert_eq!(batch["messages"][1]["traceparent"], header);
        assert_eq!(batch["messages"][1]["baggage"], "b=1");
        let mut other = json!({"topic": "t"});
        continue_callers_trace("queue.dlq_count", &mut other, &headers);
        assert_eq!(other, json!({"topic": "t"}));
    }
}
