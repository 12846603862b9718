//! Who may use the console: the API's token, given once at a login page, then a session cookie
//! (`HttpOnly`, `SameSite=Strict`, signed with a key made from the token, so every instance
//! sharing the token accepts it); every action carries a token tied to the session (CSRF) and
//! must come from the console's own origin.
//!
//! Without `api.token` (an API on loopback only) there is no login: the first visit gets a
//! session, signed with a key of this process, which the forms' CSRF tokens are tied to.

use std::time::Duration;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use topiq::config::Secret;

use crate::ConsoleState;
use crate::pages::{self, error_page};

/// The session cookie's name.
const SESSION_COOKIE: &str = "topiq_console_session";

/// How long a session lasts.
const SESSION_SECONDS: i64 = 12 * 60 * 60;

/// The header the console's script sets on the fragments it fetches: an ended session
/// answers them 401 instead of redirecting, and the script reloads the page.
pub(crate) const FRAGMENT_HEADER: &str = "x-topiq-fragment";

/// The session of a request that passed [`guard`].
#[derive(Clone, Debug)]
pub(crate) struct Session(String);

/// Signs and checks sessions and CSRF tokens.
pub(crate) struct Auth {
    key: hmac::Key,
    token: Option<Secret>,
}

impl Auth {
    /// Keys made from `token`, or from random bytes of this process when there is none.
    pub(crate) fn new(token: Option<Secret>) -> Self {
        let key = match &token {
            Some(token) => hmac::Key::new(hmac::HMAC_SHA256, token.expose().as_bytes()),
            None => {
                let mut bytes = [0u8; 32];
                // The system's random source failing leaves a zero key: sessions of an
                // open (loopback, token-less) console, whose CSRF tokens stay tied to them.
                let _ = SystemRandom::new().fill(&mut bytes);
                hmac::Key::new(hmac::HMAC_SHA256, &bytes)
            }
        };
        Self { key, token }
    }

    /// Whether the console asks for the token.
    pub(crate) fn needs_login(&self) -> bool {
        self.token.is_some()
    }

    fn tag(&self, purpose: &str, text: &str) -> String {
        let message = format!("{purpose}\0{text}");
        hex(hmac::sign(&self.key, message.as_bytes()).as_ref())
    }

    /// A new session, valid until `now` + 12 hours.
    fn issue(&self, now: i64) -> String {
        let expires = now + SESSION_SECONDS;
        format!("v1.{expires}.{}", self.tag("session", &expires.to_string()))
    }

    /// Whether `session` was issued with this key and has not expired.
    fn valid(&self, session: &str, now: i64) -> bool {
        let Some(("v1", rest)) = session.split_once('.') else {
            return false;
        };
        let Some((expires, tag)) = rest.split_once('.') else {
            return false;
        };
        let Ok(expires_at) = expires.parse::<i64>() else {
            return false;
        };
        expires_at > now
            && bool::from(
                self.tag("session", expires)
                    .as_bytes()
                    .ct_eq(tag.as_bytes()),
            )
    }

    /// The CSRF token of `session`'s forms.
    pub(crate) fn csrf(&self, session: &Session) -> String {
        self.tag("csrf", &session.0)
    }

    fn token_matches(&self, given: &str) -> bool {
        self.token.as_ref().is_some_and(|token| {
            bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()))
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value for a cookie of the console's path, kept `max_age` seconds (0 ends it).
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    max_age: i64,
    headers: &HeaderMap,
) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let text = format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Lets a request with a valid session through; sends one without to the login page (or, on an
/// open console, gives it a session).
pub(crate) async fn guard(
    State(state): State<ConsoleState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = now_seconds();
    let headers = request.headers().clone();
    if let Some(session) = cookie(&headers, SESSION_COOKIE).filter(|s| state.auth().valid(s, now)) {
        request.extensions_mut().insert(Session(session.to_owned()));
        return next.run(request).await;
    }
    if state.auth().needs_login() {
        let fragment = headers.contains_key(FRAGMENT_HEADER);
        if request.method() == Method::GET && !fragment {
            let wanted = request
                .uri()
                .path_and_query()
                .map_or("/console", |path| path.as_str());
            let target = format!("/console/login?next={}", pages::encode(wanted));
            return Redirect::to(&target).into_response();
        }
        return error_page(
            StatusCode::UNAUTHORIZED,
            "Your session has ended: log in again with the API token.",
        );
    }
    let session = state.auth().issue(now);
    request.extensions_mut().insert(Session(session.clone()));
    let mut response = next.run(request).await;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, SESSION_SECONDS, &headers),
    );
    response
}

/// Whether a state-changing request came from the console's own pages: `Sec-Fetch-Site`, when
/// the browser sends it, says same-origin, and `Origin`, when sent, is this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").map(|site| site.as_bytes());
    if site.is_some_and(|site| site != b"same-origin" && site != b"none") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host == Some(host)
}

/// The form of a console action, let through only when the console is not read-only, the
/// request came from the console's origin and carries its session's CSRF token.
pub(crate) struct Action<T>(pub(crate) T);

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<T: DeserializeOwned> FromRequest<ConsoleState> for Action<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ConsoleState) -> Result<Self, Response> {
        if state.read_only() {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "This console is read-only (console.read_only: true): it shows everything and changes nothing.",
            ));
        }
        if !same_origin(request.headers()) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "This action came from another site; the console takes actions from its own pages only.",
            ));
        }
        let session = request.extensions().get::<Session>().cloned();
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| error_page(rejection.status(), &rejection.body_text()))?;
        let CsrfField { csrf } = serde_html_form::from_bytes(&body).unwrap_or(CsrfField {
            csrf: String::new(),
        });
        let expected = session.map(|session| state.auth().csrf(&session));
        if !expected.is_some_and(|expected| bool::from(expected.as_bytes().ct_eq(csrf.as_bytes())))
        {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "This form is out of date (or came from another site): reload the page and try again.",
            ));
        }
        serde_html_form::from_bytes(&body)
            .map(Action)
            .map_err(|err| {
                error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("The form is not valid: {err}"),
                )
            })
    }
}

/// The login page.
#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Where to go after logging in: a console page, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with("/console") && !next.contains("//") => next.to_owned(),
        _ => "/console".to_owned(),
    }
}

/// `GET /console/login`.
pub(crate) async fn login_page(
    State(state): State<ConsoleState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    if !state.auth().needs_login() {
        return Redirect::to("/console").into_response();
    }
    let page = LoginPage {
        next: safe_next(query.next.as_deref()),
        error: None,
    };
    pages::html(StatusCode::OK, page.render())
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /console/login`: the API token for a session cookie.
pub(crate) async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !same_origin(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This login came from another site; log in from the console's own page.",
        );
    }
    let form: LoginForm = serde_html_form::from_bytes(&body).unwrap_or(LoginForm {
        token: String::new(),
        next: None,
    });
    let next = safe_next(form.next.as_deref());
    if !state.auth().token_matches(&form.token) {
        // A pause per wrong guess slows down guessing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let page = LoginPage {
            next,
            error: Some("That is not the API's token (api.token).".into()),
        };
        // The form again, with the error (a 401 would need an HTTP authentication scheme).
        return pages::html(StatusCode::OK, page.render());
    }
    let session = state.auth().issue(now_seconds());
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, SESSION_SECONDS, &headers),
    );
    response
}

/// `POST /console/logout`: ends the session.
pub(crate) async fn logout(headers: HeaderMap, Action(_): Action<CsrfOnly>) -> Response {
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, &headers),
    );
    response
}

/// A form with nothing but its CSRF token.
#[derive(Deserialize)]
pub(crate) struct CsrfOnly {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_with_its_key() {
        let auth = Auth::new(Some(Secret::new("s3cret")));
        let session = auth.issue(1_000);
        assert!(auth.valid(&session, 1_000));
        assert!(!auth.valid(&session, 1_000 + SESSION_SECONDS));
        let other = Auth::new(Some(Secret::new("other")));
        assert!(!other.valid(&session, 1_000));
        let forged = session.replace("v1.", "v1.9").to_string();
        assert!(!auth.valid(&forged, 1_000));
        assert!(!auth.valid("v1.99999999999.00", 1_000));
        assert!(!auth.valid("", 1_000));
    }

    #[test]
    fn only_the_console_origin_may_act() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7720"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7720"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7720"),
        );
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&headers));
    }

    #[test]
    fn login_goes_back_to_a_console_page_only() {
        assert_eq!(
            safe_next(Some("/console/runs?state=running")),
            "/console/runs?state=running"
        );
        assert_eq!(safe_next(Some("https://evil.example")), "/console");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console");
        assert_eq!(safe_next(None), "/console");
    }
}
