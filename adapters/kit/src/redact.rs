//! One way to show a URL that may carry credentials.

/// `scheme://host[:port]` of `url` (`host[:port]` when it has no scheme, as a NATS server
/// address may be written): no user, password, token, path, query or fragment, any of which
/// may hold a secret.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    // Credentials end at the authority's last '@' (a password may hold an unencoded '@').
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}"),
        None => host.to_owned(),
    }
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
        assert_eq!(redact_url("user:pw@host:4222"), "host:4222");
        assert_eq!(redact_url("127.0.0.1:4222"), "127.0.0.1:4222");
    }
}
