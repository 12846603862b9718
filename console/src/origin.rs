//! Where a browser's request came from, for what an HTTP server on loopback without a token
//! must refuse: a page of another site posting to it (its `Origin`), and a page that reached
//! it by a name of its own pointed at 127.0.0.1 (DNS rebinding: its `Host`).

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

/// Whether the request named this server by `localhost` or an IP address (with any port): a
/// name an attacker controls, rebound to 127.0.0.1, is neither.
pub fn is_local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without a Host: not a browser's request.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Whether a browser sent the request from this server's own pages: `Sec-Fetch-Site`, when
/// sent, says `same-origin` (or `none`: typed in the address bar), and `Origin`, when sent,
/// is this request's `Host`. A client that is no browser sends neither.
pub fn same_origin(headers: &HeaderMap) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_localhost_or_an_address_is_a_local_host() {
        for host in [
            "127.0.0.1:7720",
            "localhost:7720",
            "LOCALHOST",
            "[::1]:7720",
            "10.0.0.5",
        ] {
            assert!(is_local_host(&with(&[("host", host)])), "{host}");
        }
        for host in [
            "evil.example:7720",
            "rebind.127.0.0.1.nip.io",
            "localhost.evil.example",
        ] {
            assert!(!is_local_host(&with(&[("host", host)])), "{host}");
        }
    }

    #[test]
    fn only_the_servers_own_origin_may_act() {
        let host = ("host", "127.0.0.1:7720");
        assert!(same_origin(&with(&[host])));
        assert!(same_origin(&with(&[
            host,
            ("origin", "http://127.0.0.1:7720")
        ])));
        assert!(!same_origin(&with(&[
            host,
            ("origin", "http://evil.example")
        ])));
        let cross = ("sec-fetch-site", "cross-site");
        assert!(!same_origin(&with(&[
            host,
            ("origin", "http://127.0.0.1:7720"),
            cross
        ])));
        assert!(same_origin(&with(&[host, ("sec-fetch-site", "none")])));
    }
}
