//! The `broker-bridge` command: run, check, emit, tail, probe.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;

use broker_bridge::cloudevent::{
    CloudEvent, Data, ExtensionValue, format_time, is_json_content_type,
};
use broker_bridge::config::{self, ExchangeConfig};
use broker_bridge::exchange::{Delivered, Publisher};
use broker_bridge::logging::LogOutput;
use broker_bridge::metrics::Registry;
use broker_bridge::notify::Notifier;
use broker_bridge::secret;
use broker_bridge::sources::{KINDS, Verdict};
use broker_bridge::{admin, routing, supervisor};

#[derive(Parser)]
#[command(
    version,
    about = "Bridges message brokers into one RabbitMQ routing exchange as CloudEvents"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridges of a config file; reloads on change and on SIGHUP.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print its bridges and routing keys (exit 1 on error).
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Also ask each source's broker whether starting the bridge would move a
        /// position there (e.g. an edited JetStream filter); a refusal exits 1, a broker
        /// that does not answer is reported as not verified.
        #[arg(long)]
        online: bool,
    },
    /// Publish one CloudEvent to the exchange and wait for the confirm.
    Emit {
        /// Config file whose [exchange] to use (default: the built-in defaults).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Event type, e.g. `com.example.order.created`.
        #[arg(long = "type")]
        event_type: String,
        /// CloudEvent source URI.
        #[arg(long, default_value = "broker-bridge/emit")]
        source: String,
        /// The `<source>` word of the routing key.
        #[arg(long, default_value = "emit")]
        source_name: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Event id (default: a new UUIDv7).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// Inline data.
        #[arg(long, conflicts_with = "data_file")]
        data: Option<String>,
        /// Read data from a file (`-` for standard input).
        #[arg(long)]
        data_file: Option<PathBuf>,
        /// Data content type (default: application/json when the data is JSON, else
        /// application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Print the full URL (token included) a sender posts to for a webhook bridge.
    #[cfg(feature = "webhook")]
    WebhookUrl {
        #[arg(short, long)]
        config: PathBuf,
        /// The bridge's name.
        bridge: String,
    },
    /// Print a new random token for `path_token`, `bearer_token` or `hmac_secret`.
    #[cfg(feature = "webhook")]
    Token,
    /// Print events from the exchange as they arrive, with their routing keys.
    Tail {
        #[arg(short, long)]
        config: PathBuf,
        /// Binding pattern.
        #[arg(default_value = "event.#")]
        pattern: String,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// GET an http:// URL; exit 0 on a 2xx answer within 3 seconds, else 1.
    ///
    /// The container health check: `broker-bridge probe http://127.0.0.1:9180/healthz`.
    Probe {
        /// `http://host[:port]/path` (plain HTTP; the admin listener has no TLS).
        url: String,
    },
}

/// `RUST_LOG` replaces it. lapin logs every returned (unroutable) message with its whole
/// payload at WARN; we count those in `bridge_events_unroutable_total` instead.
const DEFAULT_LOG_FILTER: &str = "info,lapin=warn,lapin::returned_messages=error,async_nats=warn";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // Request data in a record cannot start a forged line: control characters are
        // escaped (and no colour codes, which would be escaped too). Both formats are
        // scrubbed of secrets.
        LogFormat::Text => builder
            .with_ansi(false)
            .with_writer(LogOutput { escape: true })
            .init(),
        LogFormat::Json => builder
            .with_writer(LogOutput { escape: false })
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    // A panic is a bug: log it where the operator looks (inside a bridge's span, so the
    // line names the bridge), with a backtrace. The bridge's supervisor restarts it.
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(panic = %info, %backtrace, "panic");
    }));
}

/// The stack of every thread: lapin parses (and drops) nested AMQP header tables
/// recursively, and one content frame (RabbitMQ's default `frame_max`, 128 KiB) can
/// nest about 18,000 tables deep; a smaller stack would let one message abort the whole
/// process, on every redelivery. Reserved address space; pages are used only as deep as
/// a thread actually goes.
const THREAD_STACK_BYTES: usize = 256 * 1024 * 1024;

fn main() -> ExitCode {
    // Threads that libraries spawn with the default stack (lapin's I/O loop) take
    // RUST_MIN_STACK, which std reads at the first spawn.
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_MIN_STACK", THREAD_STACK_BYTES.to_string()) };
    }
    let cli = Cli::parse();
    // Runs every few seconds in a container: no runtime, no logging set-up.
    if let Command::Probe { url } = &cli.command {
        return match probe(url, PROBE_TIMEOUT) {
            Ok(status) => {
                // Docker keeps the output of the last health checks: say what answered.
                let _ = print_stdout(&format!("{}: {status}\n", secret::redact_url(url)));
                ExitCode::SUCCESS
            }
            Err(error) => {
                // The URL is quoted in errors: never with its password.
                eprintln!("error: {}", secret::redact_url(&format!("{error:#}")));
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_format);
    broker_bridge::crypto::install_default_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(THREAD_STACK_BYTES)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Check { config, online } => check(config, online).await,
            Command::Emit {
                config,
                event_type,
                source,
                source_name,
                tenant,
                id,
                subject,
                data,
                data_file,
                content_type,
            } => {
                let data = match (data, data_file) {
                    (Some(text), _) => Some(Bytes::from(text)),
                    (None, Some(path)) if path.as_os_str() == "-" => {
                        let mut buffer = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer)?;
                        Some(Bytes::from(buffer))
                    }
                    (None, Some(path)) => Some(Bytes::from(
                        std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )),
                    (None, None) => None,
                };
                let exchange = exchange_config(config.as_deref())?;
                emit(
                    exchange,
                    event_type,
                    source,
                    source_name,
                    tenant,
                    id,
                    subject,
                    data,
                    content_type,
                )
                .await
            }
            Command::Tail {
                config,
                pattern,
                count,
            } => tail(exchange_config(Some(&config))?, pattern, count).await,
            Command::Probe { .. } => unreachable!("handled before the runtime starts"),
            #[cfg(feature = "webhook")]
            Command::WebhookUrl { config, bridge } => webhook_url(config, &bridge),
            #[cfg(feature = "webhook")]
            Command::Token => {
                print_stdout(&format!(
                    "{}\n",
                    broker_bridge::sources::webhook::generate_token()
                ))?;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Client libraries' errors (the exchange's, a source's) may quote a URL or a
            // value they were given.
            eprintln!("error: {}", secret::scrub(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

fn exchange_config(path: Option<&std::path::Path>) -> anyhow::Result<ExchangeConfig> {
    match path {
        Some(path) => Ok(config::load(path, &KINDS)?.config.exchange),
        None => Ok(ExchangeConfig::default()),
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&path, &KINDS)?;
    let registry = Arc::new(Registry::default());
    let admin_config = loaded.config.admin.clone();
    let listen = admin_config.listen;
    match broker_bridge::listener::raise_open_file_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open file limit (RLIMIT_NOFILE)");
            let wanted =
                (admin_config.max_connections + loaded.config.webhook.max_connections) as u64;
            if wanted > soft {
                tracing::warn!(
                    soft,
                    wanted,
                    "[admin] and [webhook] max_connections add up to more than the open file limit; raise LimitNOFILE= or lower them"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    for bridge in &loaded.config.bridges {
        tracing::info!(bridge = %bridge.name, kind = bridge.kind(), "{}", bridge.source.describe());
    }
    // systemd (Type=notify): watchdog pings from the start, READY=1 once the first config
    // runs (publisher started, so the exchange connection is under way) and /healthz
    // answers, then STATUS= lines as bridges come and go.
    let notifier = Arc::new(Notifier::from_env());
    notifier.spawn_watchdog();
    let supervisor = supervisor::Supervisor::start(&path, loaded.config, registry);
    let address = admin::serve(&admin_config, supervisor.shared())
        .await
        .with_context(|| format!("admin listener on {listen}"))?;
    tracing::info!(%address, "admin listener up (/metrics /healthz /readyz /bridges)");
    let shared = supervisor.shared();
    notifier.ready(&shared.status_line());
    notifier.spawn_status(move || shared.status_line());
    supervisor.run(loaded.watch_dirs, notifier).await
}

async fn check(path: PathBuf, online: bool) -> anyhow::Result<()> {
    use std::fmt::Write;
    let loaded = config::load(&path, &KINDS)?;
    for file in &loaded.secret_files {
        warn_if_readable_by_others(file);
    }
    let config = loaded.config;
    let mut out = String::new();
    writeln!(
        out,
        "exchange `{}` ({}, {:?} mode) at {}",
        config.exchange.name,
        config.exchange.kind,
        config.exchange.content_mode,
        config.exchange.url.redacted()
    )?;
    for file in &loaded.files {
        writeln!(out, "file {}", file.display())?;
    }
    if config.bridges.is_empty() {
        writeln!(out, "no bridges")?;
    }
    for bridge in &config.bridges {
        writeln!(
            out,
            "bridge `{}`: kind {}, tenant `{}`, routing key {} (dead letters: {})",
            bridge.name,
            bridge.kind(),
            bridge.tenant_setting(),
            bridge.routing_pattern(),
            bridge.deadletter_pattern(),
        )?;
        writeln!(out, "    {}", bridge.source.describe())?;
    }
    let mut refused = Vec::new();
    if online {
        let verdicts = futures::future::join_all(
            config
                .bridges
                .iter()
                .map(|bridge| KINDS.verify_position(bridge)),
        )
        .await;
        for (bridge, verdict) in config.bridges.iter().zip(verdicts) {
            match verdict {
                Verdict::Safe => writeln!(out, "bridge `{}`: source verified", bridge.name)?,
                // A source's answer may quote what it was given.
                Verdict::Unverified(why) => writeln!(
                    out,
                    "bridge `{}`: source not verified: {}",
                    bridge.name,
                    secret::scrub(&why)
                )?,
                Verdict::Refused(why) => {
                    writeln!(
                        out,
                        "bridge `{}`: source refused: {}",
                        bridge.name,
                        secret::scrub(&why)
                    )?;
                    refused.push(bridge.name.clone());
                }
            }
        }
    }
    if !refused.is_empty() {
        print_stdout(&out)?;
        bail!(
            "refused by the source broker: bridge(s) {}",
            refused.join(", ")
        );
    }
    writeln!(out, "ok: {} bridge(s)", config.bridges.len())?;
    // The rest is made of the typed config, whose secrets show redacted: scrubbing it
    // too would mask any path or name that happens to equal a secret's value.
    print_stdout(&out)?;
    Ok(())
}

/// Warns, as ssh does, when a file that holds secrets can be read by others than its
/// owner.
fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: {path} holds secrets and is readable by others (mode {mode:04o}); chmod 600 {path}",
            path = path.display()
        );
    }
}

/// How long `probe` waits for the status line, name resolution and connect included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
fn probe(url: &str, timeout: Duration) -> anyhow::Result<String> {
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

#[cfg(feature = "webhook")]
fn webhook_url(path: PathBuf, name: &str) -> anyhow::Result<()> {
    let config = config::load(&path, &KINDS)?.config;
    let bridge = config
        .bridges
        .iter()
        .find(|b| b.name == name)
        .with_context(|| format!("no bridge `{name}` in {}", path.display()))?;
    use broker_bridge::sources::{spec_of, webhook};
    let Some(spec) = spec_of::<webhook::Webhook>(&bridge.source) else {
        bail!("bridge `{name}` is of kind {}, not webhook", bridge.kind());
    };
    let url = webhook::hook_url(&config.webhook, name, spec);
    print_stdout(&format!("{url}\n"))?;
    Ok(())
}

/// Writes to standard output. `Ok(false)` when the reader has gone (`| head`), which is
/// a normal end for a command line tool, not a crash.
fn print_stdout(text: &str) -> std::io::Result<bool> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error),
    }
}

#[allow(clippy::too_many_arguments)]
async fn emit(
    exchange: ExchangeConfig,
    event_type: String,
    source: String,
    source_name: String,
    tenant: String,
    id: Option<String>,
    subject: Option<String>,
    data: Option<Bytes>,
    content_type: Option<String>,
) -> anyhow::Result<()> {
    if let Some(id) = &id {
        broker_bridge::short_string::short_string("the id", id)
            .map_err(|e| anyhow::anyhow!("option --id: {e}"))?;
    }
    let now = chrono::Utc::now();
    let (data, datacontenttype) = match data {
        None => (Data::None, content_type),
        Some(bytes) => {
            let json_ok = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            match content_type {
                Some(ct) if is_json_content_type(&ct) => {
                    if !json_ok {
                        bail!("--content-type {ct} says JSON, but the data is not JSON");
                    }
                    (Data::Json(bytes), Some(ct))
                }
                Some(ct) => (Data::Binary(bytes), Some(ct)),
                None if json_ok => (Data::Json(bytes), Some("application/json".into())),
                None => (Data::Binary(bytes), Some("application/octet-stream".into())),
            }
        }
    };
    let event = CloudEvent {
        id: id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        source,
        ty: event_type,
        datacontenttype,
        dataschema: None,
        subject,
        time: Some(format_time(&now)),
        time_utc: Some(now),
        extensions: [("tenant".to_owned(), ExtensionValue::String(tenant.clone()))].into(),
        data,
    };
    event.validate()?;
    broker_bridge::short_string::check_event(&event)
        .map_err(|e| anyhow::anyhow!("option --content-type: {e}"))?;
    let routing_key = routing::event_key(&tenant, &source_name, &event.ty)
        .map_err(|e| anyhow::anyhow!("options --type, --tenant, --source-name: {e}"))?;
    let publisher = Publisher::start(exchange, Arc::new(Registry::default()));
    let message = publisher.event_message(&event, routing_key.clone());
    let outcome = tokio::time::timeout(Duration::from_secs(30), publisher.publish(&message))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no confirm from the exchange within 30s{}",
                publisher
                    .last_error()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )
        })??;
    publisher.shutdown();
    print_stdout(&format!("{routing_key} {}\n", event.id))?;
    if outcome == Delivered::Unroutable {
        eprintln!("warning: confirmed, but no queue is bound for {routing_key}");
    }
    Ok(())
}

async fn tail(exchange: ExchangeConfig, pattern: String, count: Option<u64>) -> anyhow::Result<()> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(
        exchange.url.expose(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .context("connecting to the exchange")?;
    let channel = connection.create_channel().await?;
    let short = |what, value: &str| {
        broker_bridge::short_string::short_string(what, value).map_err(anyhow::Error::from)
    };
    let queue = channel
        .queue_declare(
            broker_bridge::short_string::constant(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            short("the exchange name", &exchange.name)?,
            short("the pattern", &pattern)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding to exchange `{}`", exchange.name))?;
    eprintln!("tailing `{}` with pattern {pattern}", exchange.name);
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            broker_bridge::short_string::constant("broker-bridge-tail"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let mut line = format!("{} ", delivery.routing_key);
        if let Some(headers) = delivery.properties.headers() {
            for (name, value) in headers.inner() {
                if let lapin::types::AMQPValue::LongString(text) = value {
                    line.push_str(&format!("{name}={} ", text));
                }
            }
        }
        line.push_str(&String::from_utf8_lossy(&delivery.data));
        line.push('\n');
        if !print_stdout(&line)? {
            break;
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
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
