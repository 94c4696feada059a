//! Whether a browser's `Origin` is the server's own page: the same host and port, and a scheme
//! the connection can have come from.

/// Whether `origin` (`scheme://host[:port]`) names the server that got a request with `Host: host`.
/// Over TLS only `https` qualifies: an `http://` page on the same host is another origin, and one
/// a network attacker can write. Without TLS, `https` qualifies too, for a TLS proxy in front.
pub fn same_origin(origin: &str, host: &str, tls: bool) -> bool {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match (scheme, tls) {
        ("https", _) => ":443",
        ("http", false) => ":80",
        _ => return false,
    };
    let host = host.trim().to_ascii_lowercase();
    let strip = |s: &str| s.strip_suffix(default_port).unwrap_or(s).to_string();
    strip(authority) == strip(&host)
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn scheme_follows_tls() {
        assert!(same_origin(
            "http://127.0.0.1:8080",
            "127.0.0.1:8080",
            false
        ));
        assert!(same_origin(
            "https://ferry.example",
            "ferry.example:443",
            false
        ));
        assert!(same_origin(
            "HTTPS://Ferry.example:8443",
            "ferry.example:8443",
            true
        ));
        assert!(same_origin(
            "https://ferry.example:443",
            "ferry.example",
            true
        ));
        assert!(!same_origin(
            "http://127.0.0.1:8080",
            "127.0.0.1:8080",
            true
        ));
        assert!(!same_origin("http://ferry.example", "ferry.example", true));
        assert!(!same_origin("https://evil.example", "ferry.example", true));
        assert!(!same_origin("null", "ferry.example", false));
    }
}
