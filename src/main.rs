//! The `broker-bridge` command: run, check, emit, tail, probe.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};

use broker_bridge::config::{self, ExchangeConfig};
use broker_bridge::logging::LogOutput;
use broker_bridge::metrics::Registry;
use broker_bridge::notify::Notifier;
use broker_bridge::secret;
use broker_bridge::sources::{KINDS, Verdict};
use broker_bridge::{admin, supervisor};

/// The subcommands besides `run` and `check` that need more than a few lines.
mod cli {
    pub mod events;
    pub mod probe;
}

use cli::events::{emit, tail};
use cli::probe::{PROBE_TIMEOUT, probe};

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
