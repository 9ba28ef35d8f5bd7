//! `broker-bridge probe URL`: the health check for containers without curl.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long `probe` waits for the status line, name resolution and connect included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where `probe` sends its request.
#[derive(Debug, PartialEq)]
struct ProbeTarget {
    /// `host:port` as written in the URL, for the Host header.
    authority: String,
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
}

impl ProbeTarget {
    fn parse(url: &str) -> anyhow::Result<ProbeTarget> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("`{url}` is not an http:// URL (probe speaks plain HTTP only)");
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if authority.contains('@') {
            bail!("`{url}`: credentials in the URL are not supported");
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // [IPv6]:port
            let (host, after) = bracketed
                .split_once(']')
                .with_context(|| format!("`{url}`: `[` without `]`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            bail!("`{url}` names no host");
        }
        let port = match port {
            None => 80,
            Some(port) => port
                .parse()
                .with_context(|| format!("`{url}`: `{port}` is not a port number"))?,
        };
        Ok(ProbeTarget {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The status line, when it is a 2xx one.
    fn get(&self, deadline: Instant) -> anyhow::Result<String> {
        use std::io::{Read, Write};
        use std::net::{TcpStream, ToSocketAddrs};
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .context("timed out")
        };
        let addresses: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .collect();
        let mut last_error = None;
        let mut stream = None;
        for address in &addresses {
            match TcpStream::connect_timeout(address, left()?) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(format!("connecting to {address}: {error}")),
            }
        }
        let Some(mut stream) = stream else {
            bail!(
                "{}",
                last_error.unwrap_or_else(|| format!("{} has no address", self.host))
            );
        };
        stream.set_write_timeout(Some(left()?))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: broker-bridge-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        stream
            .write_all(request.as_bytes())
            .context("sending the request")?;
        // Only the status line matters; the rest of the answer is not read.
        let mut head = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !head.contains(&b'\n') {
            if head.len() > 8192 {
                bail!("no HTTP status line in the first 8 KiB of the answer");
            }
            stream.set_read_timeout(Some(left()?))?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!("timed out waiting for the answer")
                }
                Err(error) => return Err(error).context("reading the answer"),
            }
        }
        let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default())
            .trim_end()
            .to_owned();
        let mut words = line.split_whitespace();
        let status = match (words.next(), words.next()) {
            (Some(version), Some(code)) if version.starts_with("HTTP/") => code
                .parse::<u16>()
                .ok()
                .with_context(|| format!("not an HTTP status line: {line:?}"))?,
            _ if line.is_empty() => bail!("the connection closed without an answer"),
            _ => bail!("not an HTTP status line: {line:?}"),
        };
        if (200..300).contains(&status) {
            Ok(line)
        } else {
            bail!("{line}")
        }
    }
}

/// `broker-bridge probe`: the whole exchange, name resolution included, within `timeout`.
pub fn probe(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let target = ProbeTarget::parse(url)?;
    let deadline = Instant::now() + timeout;
    let (sender, receiver) = std::sync::mpsc::channel();
    // Name resolution has no timeout of its own: a thread that may be left behind.
    std::thread::spawn(move || {
        let _ = sender.send(target.get(deadline));
    });
    receiver
        .recv_timeout(timeout)
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout:?}")))
        .with_context(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(authority: &str, host: &str, port: u16, path: &str) -> ProbeTarget {
        ProbeTarget {
            authority: authority.into(),
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn probe_urls_parse_into_host_port_and_path() {
        let parse = |url| ProbeTarget::parse(url).unwrap();
        assert_eq!(
            parse("http://127.0.0.1:9180/healthz"),
            target("127.0.0.1:9180", "127.0.0.1", 9180, "/healthz")
        );
        assert_eq!(
            parse("http://broker-bridge"),
            target("broker-bridge", "broker-bridge", 80, "/")
        );
        assert_eq!(
            parse("http://[::1]:9180?x=1#top"),
            target("[::1]:9180", "::1", 9180, "/?x=1")
        );
        assert_eq!(
            parse("http://h:1/a/b?c=d"),
            target("h:1", "h", 1, "/a/b?c=d")
        );
        for bad in [
            "https://127.0.0.1:9180/healthz",
            "127.0.0.1:9180/healthz",
            "http://:9180/healthz",
            "http://h:port/",
            "http://h:70000/",
            "http://user:pw@h/",
            "http://[::1/",
        ] {
            assert!(ProbeTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
