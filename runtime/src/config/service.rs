//! The sections `topiq run` reads as a service: `functions:` (HTTP endpoints as functions)
//! and `api:` (the HTTP API it serves).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use serde_saphyr::Spanned;

use super::raw::{RawApi, RawConsole, RawFile, RawFunction};
use super::source::spanned_at;
use super::{ConfigError, ConfigLocation};

/// Where the API listens when the config sets nothing.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7720";

/// The largest request body the API reads when the config sets no `api.max_body_bytes`: a
/// full `queue.enqueue_batch` (100 messages) at the default 128 KiB message limit fits.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How long an HTTP function's endpoint may take to answer when the config sets no `timeout`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Request headers topiq sets itself on an HTTP function's request.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "traceparent",
    "baggage",
];

/// A function the config declares as an HTTP endpoint: each message is POSTed to it.
#[derive(Clone)]
pub struct HttpFunctionSettings {
    /// The function's name, as triggers name it.
    pub name: String,
    /// The endpoint (may hold credentials: log [`endpoint`](Self::endpoint) instead).
    pub url: Url,
    /// How long the endpoint may take to answer.
    pub timeout: Duration,
    /// Headers sent with every request, values marked sensitive.
    pub headers: HeaderMap,
    /// Where the function was declared.
    pub location: ConfigLocation,
}

impl HttpFunctionSettings {
    /// The endpoint's scheme, host and port: what logs and errors show. Not the path, query or
    /// user: webhook URLs carry their secret there (`/services/T0/B0/<secret>`).
    pub fn endpoint(&self) -> String {
        redacted(&self.url)
    }
}

impl fmt::Debug for HttpFunctionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFunctionSettings")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint())
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `scheme://host:port` of `url`: no user, password, path, query or fragment.
pub fn redacted(url: &Url) -> String {
    topiq_adapter_kit::redact_url(url.as_str())
}

pub use topiq_adapter_kit::Secret;

/// The HTTP API section.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Whether `topiq run` serves the API (`api.enabled`, default true).
    pub enabled: bool,
    /// The address it listens on.
    pub listen: SocketAddr,
    /// The bearer token every call needs, when set.
    pub token: Option<Secret>,
    /// The largest request body it reads.
    pub max_body_bytes: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7720)),
            token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The operator console section (`console:`): served at `/console` on the API's listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Whether `topiq run` serves the console (`console.enabled`, default false).
    pub enabled: bool,
    /// Whether it only shows, refusing every action (`console.read_only`, default false).
    pub read_only: bool,
}

/// The `api:` and `console:` sections (each from the file it came from), or their defaults.
pub(crate) fn api_and_console(
    api: Option<(String, RawApi)>,
    console: Option<(String, RawConsole)>,
) -> Result<(ApiSettings, ConsoleSettings), ConfigError> {
    let api = match api {
        Some((file, api)) => validate_api(&file, Some(api))?,
        None => ApiSettings::default(),
    };
    let console = match console {
        Some((file, raw)) => validate_console(&file, raw, &api)?,
        None => ConsoleSettings::default(),
    };
    Ok((api, console))
}

/// Checks `console:` against the API it is served beside.
fn validate_console(
    file: &str,
    raw: RawConsole,
    api: &ApiSettings,
) -> Result<ConsoleSettings, ConfigError> {
    let console = ConsoleSettings {
        enabled: raw.enabled.as_ref().is_some_and(|enabled| enabled.value),
        read_only: raw.read_only.unwrap_or(false),
    };
    if let Some(enabled) = raw.enabled.filter(|_| console.enabled && !api.enabled) {
        return Err(ConfigError::invalid(
            spanned_at(file, &enabled),
            "console.enabled",
            "the console is served on the HTTP API's listener, and api.enabled is false: enable the API or turn the console off",
        ));
    }
    Ok(console)
}

/// Expands `${VAR}` and `${VAR:-default}` in `text` (a quoted value, which the YAML reader
/// leaves as written); `$${` is a literal `${`. The error names the variable, never a value.
/// Unquoted values are not passed here: the reader expanded them already, and expanding
/// twice would read a `${` inside a variable's value as a reference.
fn expand(text: &str, variables: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err("a `${` has no closing `}`".into());
        };
        let reference = &body[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        // As in a shell: `:-` takes the default when the variable is unset or empty.
        match (variables.get(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "the environment variable {name} is not set; set it or write ${{{name}:-default}}"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands `${VAR}` in the quoted values of `functions:` (URLs, header values), a quoted
/// `api.token` and `telemetry.otlp` (endpoint, header values); `text` is the source the spans point into.
pub(crate) fn expand_quoted(
    raw: &mut RawFile,
    text: &str,
    file: &str,
    variables: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let expand_if_quoted = |value: &mut Spanned<String>, key: String| {
        let quoted = value
            .referenced
            .span()
            .byte_offset()
            .and_then(|offset| text.as_bytes().get(usize::try_from(offset).ok()?))
            .is_some_and(|first| matches!(first, b'"' | b'\''));
        if quoted {
            value.value = expand(&value.value, variables)
                .map_err(|message| ConfigError::invalid(spanned_at(file, value), key, message))?;
        }
        Ok::<(), ConfigError>(())
    };
    for (name, function) in raw.functions.iter_mut().flatten() {
        let http = &mut function.http.value;
        expand_if_quoted(&mut http.url, format!("functions.{name}.http.url"))?;
        for (header, value) in &mut http.headers {
            expand_if_quoted(value, format!("functions.{name}.http.headers.{header}"))?;
        }
    }
    if let Some(token) = raw.api.as_mut().and_then(|api| api.token.as_mut()) {
        expand_if_quoted(token, "api.token".to_owned())?;
    }
    if let Some(otlp) = raw.telemetry.as_mut().and_then(|t| t.otlp.as_mut()) {
        expand_if_quoted(&mut otlp.endpoint, "telemetry.otlp.endpoint".to_owned())?;
        for (header, value) in &mut otlp.headers {
            expand_if_quoted(value, format!("telemetry.otlp.headers.{header}"))?;
        }
    }
    Ok(())
}

/// Validates the `functions:` section.
pub(crate) fn validate_functions(
    file: &str,
    functions: BTreeMap<String, RawFunction>,
) -> Result<Vec<HttpFunctionSettings>, ConfigError> {
    let mut settings = Vec::with_capacity(functions.len());
    for (name, raw) in functions {
        let key = format!("functions.{name}.http");
        let location = spanned_at(file, &raw.http);
        let http = raw.http.value;
        if name.trim().is_empty() {
            return Err(ConfigError::invalid(
                location,
                "functions",
                "a function needs a name",
            ));
        }
        let url = function_url(file, &key, &http.url)?;
        let timeout = match http.timeout {
            None => DEFAULT_HTTP_TIMEOUT,
            Some(timeout) if timeout.value.0.is_zero() => {
                return Err(ConfigError::invalid(
                    spanned_at(file, &timeout),
                    format!("{key}.timeout"),
                    "must be above zero, such as 10s",
                ));
            }
            Some(timeout) => timeout.value.0,
        };
        settings.push(HttpFunctionSettings {
            name,
            url,
            timeout,
            headers: function_headers(file, &key, http.headers)?,
            location,
        });
    }
    Ok(settings)
}

/// An HTTP function's URL: http or https, with a host. The URL may hold credentials: errors
/// say what is wrong, never the URL.
fn function_url(file: &str, key: &str, url: &Spanned<String>) -> Result<Url, ConfigError> {
    let at = spanned_at(file, url);
    let parsed = Url::parse(&url.value).map_err(|err| {
        ConfigError::invalid(
            at.clone(),
            format!("{key}.url"),
            format!("is not a valid URL ({err}); write it as http://host:port/path"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::invalid(
            at,
            format!("{key}.url"),
            format!(
                "must be an http:// or https:// URL with a host, got a {}: URL",
                parsed.scheme()
            ),
        ));
    }
    Ok(parsed)
}

/// An HTTP function's headers: valid, not one topiq sets itself, and marked sensitive.
fn function_headers(
    file: &str,
    key: &str,
    raw: BTreeMap<String, Spanned<String>>,
) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    for (header, value) in raw {
        let header_key = format!("{key}.headers.{header}");
        let at = spanned_at(file, &value);
        let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            ConfigError::invalid(
                at.clone(),
                header_key.clone(),
                "is not a valid HTTP header name",
            )
        })?;
        if RESERVED_HEADERS.contains(&header_name.as_str()) {
            return Err(ConfigError::invalid(
                at,
                header_key,
                "is set by topiq on every request; remove it",
            ));
        }
        let mut header_value = HeaderValue::from_str(&value.value).map_err(|_| {
            ConfigError::invalid(
                at,
                header_key,
                "holds characters an HTTP header cannot (such as a line break)",
            )
        })?;
        header_value.set_sensitive(true);
        headers.insert(header_name, header_value);
    }
    Ok(headers)
}

/// Validates the `api:` section.
pub(crate) fn validate_api(file: &str, raw: Option<RawApi>) -> Result<ApiSettings, ConfigError> {
    let mut api = ApiSettings::default();
    let Some(raw) = raw else {
        return Ok(api);
    };
    api.enabled = raw.enabled.unwrap_or(true);
    if let Some(listen) = &raw.listen {
        api.listen = listen.value.parse().map_err(|_| {
            ConfigError::invalid(
                spanned_at(file, listen),
                "api.listen",
                format!(
                    "{:?} is not an IP address and port; write it as {DEFAULT_API_LISTEN}",
                    listen.value
                ),
            )
        })?;
    }
    if let Some(token) = &raw.token {
        api.token = Some(api_token(file, token)?);
    }
    if let Some(limit) = &raw.max_body_bytes {
        if limit.value < 1024 {
            return Err(ConfigError::invalid(
                spanned_at(file, limit),
                "api.max_body_bytes",
                format!("must be at least 1024, got {}", limit.value),
            ));
        }
        api.max_body_bytes = limit.value;
    }
    if api.enabled && api.token.is_none() && !api.listen.ip().is_loopback() {
        let at = raw
            .listen
            .as_ref()
            .map(|listen| spanned_at(file, listen))
            .unwrap_or_else(|| ConfigLocation::start_of(file));
        return Err(ConfigError::invalid(
            at,
            "api.listen",
            format!(
                "{} is reachable from other machines and the API has no token: set api.token (such as `token: ${{TOPIQ_API_TOKEN}}`) or listen on 127.0.0.1",
                api.listen
            ),
        ));
    }
    Ok(api)
}

/// The API's bearer token: not empty, and sendable in a header.
fn api_token(file: &str, token: &Spanned<String>) -> Result<Secret, ConfigError> {
    let at = spanned_at(file, token);
    if token.value.trim().is_empty() {
        return Err(ConfigError::invalid(
            at,
            "api.token",
            "is empty; set a long random token or remove api.token",
        ));
    }
    if HeaderValue::from_str(&token.value).is_err() {
        return Err(ConfigError::invalid(
            at,
            "api.token",
            "holds characters an HTTP header cannot; use letters, digits and punctuation",
        ));
    }
    Ok(Secret::new(token.value.clone()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn variables() -> HashMap<String, String> {
        HashMap::from([("TOKEN".to_owned(), "s3cret".to_owned())])
    }

    #[test]
    fn expands_references_in_quoted_values() {
        let vars = variables();
        assert_eq!(expand("Bearer ${TOKEN}", &vars).unwrap(), "Bearer s3cret");
        assert_eq!(expand("${MISSING:-x}y", &vars).unwrap(), "xy");
        assert_eq!(
            expand("cost $5 $${TOKEN}", &vars).unwrap(),
            "cost $5 ${TOKEN}"
        );
        let err = expand("${MISSING}", &vars).unwrap_err();
        assert!(err.contains("MISSING is not set"), "{err}");
        assert!(expand("${TOKEN", &vars).is_err());
    }

    #[test]
    fn redacted_url_drops_credentials_and_query() {
        let url = Url::parse("https://user:pw@hooks.example:8443/a/b?token=x#f").unwrap();
        assert_eq!(redacted(&url), "https://hooks.example:8443");
    }

    #[test]
    fn secret_debug_hides_the_value() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "<redacted>");
    }
}
