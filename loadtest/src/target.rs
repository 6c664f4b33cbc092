//! The servers a run talks to: the WebSocket URL (`ws://HOST:PORT/PATH?QUERY` or
//! `wss://...`, which the engine speaks through [`crate::tls`]) and the publish API
//! base URL (`http://HOST:PORT`; the publish API is reached in clear text only).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// Why a URL was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

/// A parsed `scheme://host[:port][/path][?query]`, before name resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host as written (a name, an IPv4 address or a bracketed IPv6 address
    /// without its brackets).
    pub host: String,
    /// The port, or the scheme's default (80; 443 for `wss://`).
    pub port: u16,
    /// Whether the scheme was `wss://`.
    pub tls: bool,
    /// Path and query exactly as written, starting with `/` (`/` when absent).
    pub path_and_query: String,
}

impl Endpoint {
    /// Parses a URL whose scheme must be `scheme` (`"ws"`, which also accepts
    /// `"wss"`, or `"http"`).
    pub fn parse(url: &str, scheme: &str) -> Result<Self, UrlError> {
        let secure = format!("{scheme}s://");
        let (rest, tls) = match url.strip_prefix(&secure) {
            Some(rest) if scheme == "ws" => (Some(rest), true),
            _ => (
                url.strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://")),
                false,
            ),
        };
        let rest = rest.ok_or_else(|| {
            let hint = if url.starts_with("https://") {
                " (the publish API is reached in clear text: give its http:// listener)"
            } else {
                ""
            };
            let schemes = if scheme == "ws" {
                "ws:// or wss://".to_owned()
            } else {
                format!("{scheme}://")
            };
            UrlError(format!("`{url}`: expected a {schemes} URL{hint}"))
        })?;
        let (authority, path_and_query) = match rest.find(['/', '?']) {
            Some(at) if rest.as_bytes()[at] == b'?' => (&rest[..at], format!("/{}", &rest[at..])),
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(UrlError(format!(
                "`{url}`: user info in URLs is not supported"
            )));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| UrlError(format!("`{url}`: unterminated IPv6 address")))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError(format!("`{url}`: missing host")));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| UrlError(format!("`{url}`: bad port `{port}`")))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
            path_and_query,
        })
    }

    /// The `Host` header value: `host:port`, with IPv6 hosts bracketed.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host, preferring an IPv4 address (the default source addresses are
    /// IPv4 loopback addresses).
    pub fn resolve(&self) -> Result<SocketAddr, UrlError> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| UrlError(format!("cannot resolve `{}`: {e}", self.host)))?
            .collect();
        addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| UrlError(format!("`{}` resolved to no address", self.host)))
    }

    /// Appends `key=value` to the query (values must already be URL-safe).
    pub fn with_query_params(&self, params: &[(&str, &str)]) -> String {
        let mut out = self.path_and_query.clone();
        for (key, value) in params {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(url: &str) -> Endpoint {
        Endpoint::parse(url, "ws").expect(url)
    }

    #[test]
    fn full_url() {
        let e = ws("ws://127.0.0.1:8080/ws/v1?room=a");
        assert_eq!(e.host, "127.0.0.1");
        assert_eq!(e.port, 8080);
        assert_eq!(e.path_and_query, "/ws/v1?room=a");
        assert_eq!(e.host_header(), "127.0.0.1:8080");
    }

    #[test]
    fn defaults_for_port_and_path() {
        let e = ws("ws://example.com");
        assert_eq!((e.port, e.path_and_query.as_str()), (80, "/"));
        let e = ws("ws://example.com?x=1");
        assert_eq!(e.path_and_query, "/?x=1");
    }

    #[test]
    fn wss_urls_are_tls_with_port_443_by_default() {
        let e = ws("wss://example.com/ws");
        assert!(e.tls);
        assert_eq!((e.port, e.path_and_query.as_str()), (443, "/ws"));
        let e = ws("wss://127.0.0.1:8443");
        assert_eq!((e.tls, e.port), (true, 8443));
        assert!(!ws("ws://h/").tls);
        let error = Endpoint::parse("https://h/", "http")
            .expect_err("https")
            .to_string();
        assert!(error.contains("clear text"), "{error}");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let e = ws("ws://[::1]:9000/");
        assert_eq!(e.host, "::1");
        assert_eq!(e.port, 9000);
        assert_eq!(e.host_header(), "[::1]:9000");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("https://h:1/", "ws:// or wss://"),
            ("http://h:1/", "ws://"),
            ("ws://:80/", "missing host"),
            ("ws://h:99999/", "bad port"),
            ("ws://u@h/", "user info"),
            ("ws://[::1/", "IPv6"),
        ] {
            let error = Endpoint::parse(url, "ws").expect_err(url).to_string();
            assert!(error.contains(needle), "{url}: {error}");
        }
    }

    #[test]
    fn query_params_are_appended() {
        let e = ws("ws://h/p");
        assert_eq!(
            e.with_query_params(&[("token", "abc"), ("channel", "lt-3")]),
            "/p?token=abc&channel=lt-3"
        );
        let e = ws("ws://h/p?x=1");
        assert_eq!(e.with_query_params(&[("a", "b")]), "/p?x=1&a=b");
    }

    #[test]
    fn resolves_loopback_names() {
        let addr = ws("ws://localhost:1234/")
            .resolve()
            .expect("localhost resolves");
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 1234);
    }
}
