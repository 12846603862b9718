//! One way to show a URL that may carry credentials.

/// `scheme://host[:port]` of `url`: no user, password, token, path, query or fragment (any
/// of which may hold a secret). A text without `://` is shown as `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".to_owned();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    // Credentials end at the authority's last '@' (a password may hold an unencoded '@').
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_paths_and_queries_are_left_out() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example:8443/a/b?token=x#f"),
            "https://hooks.example:8443"
        );
        assert_eq!(
            redact_url("nats://s3cret@127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("amqp://app:p@ss@broker:5672/prod"),
            "amqp://broker:5672"
        );
        assert_eq!(redact_url("nats://127.0.0.1"), "nats://127.0.0.1");
        assert_eq!(redact_url("user:pw@host"), "<redacted>");
    }
}
