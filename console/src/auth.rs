//! Who may use the console: the API's token, given once at a login page, then a session cookie
//! (`HttpOnly`, `SameSite=Strict`, signed with a key derived from the token, so every instance
//! sharing the token accepts it); every action carries a token tied to the session (CSRF) and
//! must come from the console's own origin.
//!
//! Without `api.token` (an API on loopback only) there is no login: the first visit gets a
//! session, signed with a key of this process, which the forms' CSRF tokens are tied to; and
//! only requests that name the server `localhost` or by its address are answered (a site whose
//! name is rebound to 127.0.0.1 is refused).

use std::num::NonZeroU32;
use std::time::Duration;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use topiq::config::Secret;

use crate::origin::{is_local_host, same_origin};
use crate::pages::{self, error_page};

/// The session cookie's name.
const SESSION_COOKIE: &str = "topiq_console_session";

/// How long a session lasts.
const SESSION_SECONDS: i64 = 12 * 60 * 60;

/// PBKDF2 rounds from the token to the signing key: a stolen cookie or page is no fast oracle
/// for guessing the token. Run once, at start.
const KEY_ROUNDS: u32 = 100_000;

/// How long a wrong token waits before the form comes back (guesses queue one at a time).
const WRONG_TOKEN_PAUSE: Duration = Duration::from_millis(300);

/// The header the console's script sets on the fragments it fetches: an ended session
/// answers them 401 instead of redirecting, and the script reloads the page.
pub(crate) const FRAGMENT_HEADER: &str = "x-topiq-fragment";

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The system's random source failed, so sessions cannot be signed safely.
    #[error("the console cannot make its session key: the system's random source failed")]
    Random,
}

/// The session of a request that passed [`guard`].
#[derive(Clone, Debug)]
pub(crate) struct Session(String);

/// Signs and checks sessions and CSRF tokens; checks the token at login.
pub(crate) struct Auth {
    key: hmac::Key,
    token_digest: Option<digest::Digest>,
    random: SystemRandom,
    /// Held while a login is checked, so guesses are tried one at a time.
    login_gate: tokio::sync::Mutex<()>,
}

impl Auth {
    /// A key derived from `token`, or random bytes of this process when there is none.
    pub(crate) fn new(token: Option<Secret>) -> Result<Self, ConsoleError> {
        let random = SystemRandom::new();
        let mut bytes = [0u8; 32];
        match &token {
            Some(token) => pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                NonZeroU32::new(KEY_ROUNDS).unwrap_or(NonZeroU32::MIN),
                b"topiq console session key v1",
                token.expose().as_bytes(),
                &mut bytes,
            ),
            None => random.fill(&mut bytes).map_err(|_| ConsoleError::Random)?,
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            token_digest: token
                .map(|token| digest::digest(&digest::SHA256, token.expose().as_bytes())),
            random,
            login_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether the console asks for the token.
    pub(crate) fn needs_login(&self) -> bool {
        self.token_digest.is_some()
    }

    fn tag(&self, purpose: &str, text: &str) -> String {
        let message = format!("{purpose}\0{text}");
        hex(hmac::sign(&self.key, message.as_bytes()).as_ref())
    }

    /// A new session, valid until `now` + 12 hours, unique (a random part).
    fn issue(&self, now: i64) -> Option<String> {
        let mut nonce = [0u8; 8];
        self.random.fill(&mut nonce).ok()?;
        let body = format!("{}.{}", now + SESSION_SECONDS, hex(&nonce));
        Some(format!("v1.{body}.{}", self.tag("session", &body)))
    }

    /// Whether `session` was issued with this key and has not expired.
    fn valid(&self, session: &str, now: i64) -> bool {
        let Some(("v1", rest)) = session.split_once('.') else {
            return false;
        };
        let Some((body, tag)) = rest.rsplit_once('.') else {
            return false;
        };
        let Some(Ok(expires_at)) = body.split('.').next().map(str::parse::<i64>) else {
            return false;
        };
        expires_at > now && bool::from(self.tag("session", body).as_bytes().ct_eq(tag.as_bytes()))
    }

    /// The CSRF token of `session`'s forms.
    pub(crate) fn csrf(&self, session: &Session) -> String {
        self.tag("csrf", &session.0)
    }

    /// Whether `given` is the token (digests compared in constant time: no length leaks).
    fn token_matches(&self, given: &str) -> bool {
        let given = digest::digest(&digest::SHA256, given.trim().as_bytes());
        self.token_digest
            .is_some_and(|token| bool::from(given.as_ref().ct_eq(token.as_ref())))
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

/// A `Set-Cookie` value for a cookie of the console's path, kept `max_age` seconds (0 ends it);
/// `Secure` when a proxy says the request came over HTTPS.
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
/// open console reached by `localhost` or an address, gives it a session).
pub(crate) async fn guard(
    State(state): State<crate::ConsoleState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = now_seconds();
    let headers = request.headers().clone();
    let auth = state.auth();
    if !auth.needs_login() && !is_local_host(&headers) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This console has no token (api.token), so it answers only to localhost or an IP address; set api.token to reach it by another name.",
        );
    }
    if let Some(session) = cookie(&headers, SESSION_COOKIE).filter(|s| auth.valid(s, now)) {
        request.extensions_mut().insert(Session(session.to_owned()));
        return next.run(request).await;
    }
    if auth.needs_login() {
        return to_login(&request, &headers);
    }
    let Some(session) = auth.issue(now) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, "No session could be made.");
    };
    request.extensions_mut().insert(Session(session.clone()));
    let mut response = next.run(request).await;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, SESSION_SECONDS, &headers),
    );
    response
}

/// A page asked for without a session: to the login page, back here after; a fragment or an
/// action gets 401 (the page's script then reloads).
fn to_login(request: &Request, headers: &HeaderMap) -> Response {
    if request.method() == Method::GET && !headers.contains_key(FRAGMENT_HEADER) {
        let wanted = request
            .uri()
            .path_and_query()
            .map_or("/console", |path| path.as_str());
        let target = format!("/console/login?next={}", pages::encode(wanted));
        return Redirect::to(&target).into_response();
    }
    error_page(
        StatusCode::UNAUTHORIZED,
        "Your session has ended: log in again with the API token.",
    )
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A form sent from the console's own pages with its session's CSRF token: what logging out
/// needs, read-only or not.
pub(crate) struct SignedForm<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<crate::ConsoleState> for SignedForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &crate::ConsoleState) -> Result<Self, Response> {
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
            .map(SignedForm)
            .map_err(|err| {
                error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("The form is not valid: {err}"),
                )
            })
    }
}

/// The form of a console action: a [`SignedForm`], refused when the console is read-only.
pub(crate) struct Action<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<crate::ConsoleState> for Action<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &crate::ConsoleState) -> Result<Self, Response> {
        if state.read_only() {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "This console is read-only (console.read_only: true): it shows everything and changes nothing.",
            ));
        }
        let SignedForm(form) = SignedForm::from_request(request, state).await?;
        Ok(Action(form))
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

/// Where to go after logging in: a console page, never another site (nor a header-breaking
/// character).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with("/console")
                && !next.contains("//")
                && next.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            next.to_owned()
        }
        _ => "/console".to_owned(),
    }
}

/// `GET /console/login`.
pub(crate) async fn login_page(
    State(state): State<crate::ConsoleState>,
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
    State(state): State<crate::ConsoleState>,
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
    let auth = state.auth();
    let right = {
        let _one_at_a_time = auth.login_gate.lock().await;
        let right = auth.token_matches(&form.token);
        if !right {
            tokio::time::sleep(WRONG_TOKEN_PAUSE).await;
        }
        right
    };
    let session = right.then(|| auth.issue(now_seconds())).flatten();
    let Some(session) = session else {
        let page = LoginPage {
            next,
            error: Some("That is not the API's token (api.token).".into()),
        };
        // The form again, with the error (a 401 would need an HTTP authentication scheme).
        return pages::html(StatusCode::OK, page.render());
    };
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, SESSION_SECONDS, &headers),
    );
    response
}

/// `POST /console/logout`: ends the session (read-only or not).
pub(crate) async fn logout(headers: HeaderMap, SignedForm(_): SignedForm<CsrfOnly>) -> Response {
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
        let auth = Auth::new(Some(Secret::new("s3cret"))).unwrap();
        let session = auth.issue(1_000).unwrap();
        assert!(auth.valid(&session, 1_000));
        assert!(!auth.valid(&session, 1_000 + SESSION_SECONDS));
        assert_ne!(
            session,
            auth.issue(1_000).unwrap(),
            "each session is unique"
        );
        let other = Auth::new(Some(Secret::new("other"))).unwrap();
        assert!(!other.valid(&session, 1_000));
        let later = session.replacen("v1.", "v1.9", 1);
        assert!(!auth.valid(&later, 1_000), "the expiry is signed");
        assert!(!auth.valid("v1.99999999999.00.00", 1_000));
        assert!(!auth.valid("", 1_000));
    }

    #[test]
    fn the_signing_key_is_not_the_token_itself() {
        let auth = Auth::new(Some(Secret::new("s3cret"))).unwrap();
        let session = auth.issue(1_000).unwrap();
        let (body, _) = session["v1.".len()..].rsplit_once('.').unwrap();
        let raw = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let with_raw_token = hex(hmac::sign(&raw, format!("session\0{body}").as_bytes()).as_ref());
        assert!(!auth.valid(&format!("v1.{body}.{with_raw_token}"), 1_000));
        assert!(auth.token_matches(" s3cret "));
        assert!(!auth.token_matches("s3cre"));
    }

    #[test]
    fn login_goes_back_to_a_console_page_only() {
        assert_eq!(
            safe_next(Some("/console/runs?state=running")),
            "/console/runs?state=running"
        );
        assert_eq!(safe_next(Some("https://evil.example")), "/console");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console");
        assert_eq!(safe_next(Some("/console/\nLocation: x")), "/console");
        assert_eq!(safe_next(None), "/console");
    }
}
