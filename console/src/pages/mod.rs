//! The console's pages, one module each, and what they share: the frame every page is drawn
//! in (navigation, the result of the last action, the CSRF token), rendering, and the answer
//! to an action (a redirect that carries its result to the next page).

pub(crate) mod dlq;
pub(crate) mod enqueue;
pub(crate) mod overview;
pub(crate) mod runs;
pub(crate) mod schedules;
pub(crate) mod search;
pub(crate) mod trigger;

use askama::Template;
use axum::Extension;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use topiq::CallError;

use crate::ConsoleState;
use crate::auth::{Session, cookie, set_cookie};

/// The cookie that carries an action's result to the page it redirects to.
const FLASH_COOKIE: &str = "topiq_console_flash";

/// What [`encode`] leaves as it is: letters, digits and RFC 3986's other unreserved marks.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `text` percent-encoded, for a path segment, a query value or a cookie.
pub(crate) fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// `text` as one URL path segment: percent-encoded, and a name of only dots (`.`, `..`,
/// which a browser would resolve as a path step) with its dots encoded too.
pub(crate) fn segment(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b == b'.') {
        return "%2E".repeat(text.len());
    }
    encode(text)
}

/// The result of the last action, shown once at the top of the next page.
#[derive(Clone, Debug)]
pub(crate) struct Flash {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

/// What every page needs of its request: the session's CSRF token, whether actions are
/// allowed, whether there is a login to leave, and the last action's result.
pub(crate) struct Viewer {
    csrf: String,
    read_only: bool,
    login: bool,
    flash: Option<Flash>,
}

impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Response> {
        let Extension(session) = Extension::<Session>::from_request_parts(parts, state)
            .await
            .map_err(|_| error_page(StatusCode::UNAUTHORIZED, "No session: log in again."))?;
        let flash = cookie(&parts.headers, FLASH_COOKIE).and_then(|value| {
            let (kind, text) = value.split_once('.')?;
            let text = percent_decode_str(text).decode_utf8().ok()?.into_owned();
            Some(Flash {
                ok: kind == "ok",
                text,
            })
        });
        Ok(Self {
            csrf: state.auth().csrf(&session),
            read_only: state.read_only(),
            login: state.auth().needs_login(),
            flash,
        })
    }
}

impl Viewer {
    /// The frame of a page titled `title`, in navigation `section`.
    pub(crate) fn frame(&self, title: impl Into<String>, section: &'static str) -> Frame {
        Frame {
            title: title.into(),
            section,
            csrf: self.csrf.clone(),
            read_only: self.read_only,
            login: self.login,
            flash: self.flash.clone(),
        }
    }
}

/// What `base.html` draws around every page.
pub(crate) struct Frame {
    pub(crate) title: String,
    pub(crate) section: &'static str,
    pub(crate) csrf: String,
    pub(crate) read_only: bool,
    pub(crate) login: bool,
    pub(crate) flash: Option<Flash>,
}

/// A rendered page with `status`; `flash_shown` when it showed the last action's result,
/// which is then cleared.
pub(crate) fn respond(
    status: StatusCode,
    rendered: askama::Result<String>,
    flash_shown: bool,
) -> Response {
    let mut response = html(status, rendered);
    if flash_shown {
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(FLASH_COOKIE, "", 0, &HeaderMap::new()),
        );
    }
    response
}

/// A rendered template as HTML with `status`, or a 500 page naming the template error.
pub(crate) fn html(status: StatusCode, rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(body) => (status, Html(body)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "a console page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the console could not draw this page; the server log has why",
            )
                .into_response()
        }
    }
}

/// The answer to an action: back to `location`, which shows `text` as a success (`ok`) or
/// an error.
pub(crate) fn done(location: &str, ok: bool, text: &str) -> Response {
    let mut response = Redirect::to(location).into_response();
    let value = format!("{}.{}", if ok { "ok" } else { "error" }, encode(text));
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FLASH_COOKIE, &value, 60, &HeaderMap::new()),
    );
    response
}

/// The answer to an action whose call failed: back to `location` with the call's error.
pub(crate) fn failed(location: &str, err: &CallError) -> Response {
    done(location, false, &format!("{err} ({})", err.code()))
}

/// A page of its own for an error outside any page (no session, a stale form, read-only).
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

/// An error page with `status` and `message`.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    html(
        status,
        ErrorPage {
            status: status.as_u16(),
            message,
        }
        .render(),
    )
}

/// `GET /console/...` for a path that is no page.
pub(crate) async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "There is no such page in the console; start from the overview.",
    )
}

/// The headers every console answer carries: only the console's own script and style run,
/// no other site may frame it, and no page is cached by a shared cache.
pub(crate) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_stays_one_segment() {
        assert_eq!(segment("nightly-report.v2"), "nightly-report.v2");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
