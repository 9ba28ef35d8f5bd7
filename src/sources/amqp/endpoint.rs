//! Where an AMQP URL points (scheme, host, port, vhost), read without lapin's parser and
//! never quoting the credentials.

/// Where a URL points, without its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub(super) tls: bool,
    /// Without IPv6 brackets.
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) vhost: String,
    pub(super) has_credentials: bool,
}

impl Endpoint {
    /// Reads scheme, host, port and vhost the way lapin does (no path: vhost `/`; a bare
    /// `/`: the vhost ""), but keeps IP hosts, which lapin's URI parser turns into
    /// `localhost` when they are IPv6 literals. Errors never quote the user info or the
    /// port, where a password would be (or a piece of one that holds `/`, `?` or `#`).
    pub(super) fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("not an AMQP URL (amqp://host:port/vhost)")?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => false,
            "amqps" => true,
            _ if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                return Err(format!("the scheme is `{scheme}`, not amqp or amqps"));
            }
            _ => return Err("the scheme is not amqp or amqps".into()),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if !authority.contains('@') && rest.contains('@') {
            return Err(
                "the user info holds `/`, `?` or `#`: percent-encode them (%2F, %3F, %23)".into(),
            );
        }
        let (has_credentials, host_port) = match authority.rsplit_once('@') {
            Some((_, host_port)) => (true, host_port),
            None => (false, authority),
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("an IPv6 address is not closed by `]`")?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            None | Some("") => {
                if tls {
                    5671
                } else {
                    5672
                }
            }
            Some(port) => port
                .parse()
                .map_err(|_| "the port is not a number up to 65535".to_string())?,
        };
        let path = rest.split(['?', '#']).next().unwrap_or("");
        let vhost = match path.strip_prefix('/') {
            None => "/".to_owned(),
            Some(encoded) => crate::short_string::percent_decode(encoded).ok_or(
                "the vhost is not percent-encoded UTF-8 (a `%` must be followed by two hex digits)",
            )?,
        };
        Ok(Endpoint {
            tls,
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host.to_owned()
            },
            port,
            vhost,
            has_credentials,
        })
    }

    /// `host:port`, IPv6 in brackets.
    pub(super) fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The CloudEvent `source` of messages from `queue`: `amqp://host:port/<vhost>/<queue>`
    /// with both names percent-encoded, and no credentials.
    pub(super) fn source_uri(&self, queue: &str) -> String {
        format!(
            "{}://{}/{}/{}",
            if self.tls { "amqps" } else { "amqp" },
            self.label(),
            percent_encode(&self.vhost),
            percent_encode(queue)
        )
    }

    /// Same broker and vhost; the loopback names count as one host.
    pub(super) fn same_broker(&self, other: &Endpoint) -> bool {
        fn host(text: &str) -> String {
            let text = text.trim_end_matches('.').to_ascii_lowercase();
            match text.as_str() {
                "127.0.0.1" | "::1" | "localhost" => "localhost".into(),
                _ => text,
            }
        }
        host(&self.host) == host(&other.host)
            && self.port == other.port
            && self.vhost == other.vhost
    }
}

/// Percent-encodes everything but the RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
