//! The operator commands' side of the HTTP API: one call, its JSON result or its error.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

/// How long one call may take (a rate-limited redrive of one page included).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The API answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// `--api` is not an http(s) URL of a host (without credentials: use --token).
    #[error(
        "--api (or TOPIQ_API) must be the API's base URL, such as http://127.0.0.1:7720, without credentials (use --token)"
    )]
    BadAddress,
    /// No answer from the API.
    #[error(
        "cannot reach the topiq API at {api}: {reason}; is `topiq run` up there? (--api or TOPIQ_API)"
    )]
    Unreachable { api: String, reason: String },
    /// An answer that is not the API's.
    #[error("the answer from {api} is not topiq's (HTTP {status}): {excerpt}")]
    Unexpected {
        api: String,
        status: StatusCode,
        excerpt: String,
    },
}

/// A client of one topiq API.
pub(crate) struct ApiClient {
    http: reqwest::Client,
    api: String,
    token: Option<String>,
}

impl ApiClient {
    pub(crate) fn new(api: &str, token: Option<String>) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(api).ok().filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.username().is_empty()
                && url.password().is_none()
        });
        if url.is_none() {
            return Err(ClientError::BadAddress);
        }
        topiq_server::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|err| ClientError::Unreachable {
                api: api.to_owned(),
                reason: err.to_string(),
            })?;
        Ok(Self {
            http,
            api: api.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// Runs `name` with `args`; the call's JSON result.
    pub(crate) async fn call(&self, name: &str, args: Value) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(format!("{}/v1/call/{name}", self.api))
            .header(CONTENT_TYPE, "application/json")
            .body(args.to_string());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|err| ClientError::Unreachable {
                api: self.api.clone(),
                reason: describe(err),
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_str(&text).ok();
        match (status.is_success(), body) {
            (true, Some(result)) => Ok(result),
            (false, Some(body)) if body["error"]["code"].is_string() => Err(ClientError::Api {
                status,
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }),
            _ => Err(ClientError::Unexpected {
                api: self.api.clone(),
                status,
                excerpt: text.chars().take(200).collect(),
            }),
        }
    }
}

/// reqwest's error without the URL, followed by its causes (such as "Connection refused").
fn describe(err: reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let mut text = err.without_url().to_string();
    for cause in causes {
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
