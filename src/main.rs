//! The `broker-bridge` command: run, check, emit, tail.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;

use broker_bridge::cloudevent::{
    CloudEvent, Data, ExtensionValue, format_time, is_json_content_type,
};
use broker_bridge::config::{self, ExchangeConfig};
use broker_bridge::exchange::{Delivered, Publisher};
use broker_bridge::metrics::Registry;
use broker_bridge::notify::{self, Notifier};
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
}

/// `RUST_LOG` replaces it. lapin logs every returned (unroutable) message with its whole
/// payload at WARN; we count those in `bridge_events_unroutable_total` instead.
const DEFAULT_LOG_FILTER: &str = "info,lapin=warn,lapin::returned_messages=error,async_nats=warn";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    broker_bridge::crypto::install_default_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Check { config } => check(config),
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
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn exchange_config(path: Option<&std::path::Path>) -> anyhow::Result<ExchangeConfig> {
    match path {
        Some(path) => Ok(config::load(path)?.config.exchange),
        None => Ok(ExchangeConfig::default()),
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&path)?;
    let registry = Arc::new(Registry::default());
    let listen = loaded.config.admin.listen;
    for bridge in &loaded.config.bridges {
        tracing::info!(bridge = %bridge.name, kind = bridge.kind(), "{}", bridge.source.describe());
    }
    // systemd (Type=notify): watchdog pings from the start, READY=1 once the first config
    // runs (publisher started, so the exchange connection is under way) and /healthz
    // answers, then STATUS= lines as bridges come and go.
    let notifier = Arc::new(Notifier::from_env());
    notifier.spawn_watchdog();
    let supervisor = supervisor::Supervisor::start(&path, loaded.config, registry);
    let address = admin::serve(listen, supervisor.shared())
        .await
        .with_context(|| format!("admin listener on {listen}"))?;
    tracing::info!(%address, "admin listener up (/metrics /healthz /readyz /bridges)");
    notifier.ready(&notify::status_line(&supervisor.shared()));
    notifier.spawn_status(supervisor.shared());
    supervisor.run(loaded.watch_dirs, notifier).await
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    use std::fmt::Write;
    let loaded = config::load(&path)?;
    let config = loaded.config;
    let mut out = String::new();
    writeln!(
        out,
        "exchange `{}` ({}, {:?} mode) at {}",
        config.exchange.name,
        config.exchange.kind,
        config.exchange.content_mode,
        redact(&config.exchange.url)
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
            bridge.tenant,
            bridge.routing_pattern(),
            bridge.deadletter_pattern(),
        )?;
        writeln!(out, "    {}", bridge.source.describe())?;
    }
    writeln!(out, "ok: {} bridge(s)", config.bridges.len())?;
    print_stdout(&out)?;
    Ok(())
}

#[cfg(feature = "webhook")]
fn webhook_url(path: PathBuf, name: &str) -> anyhow::Result<()> {
    use broker_bridge::sources::SourceSpec;
    let config = config::load(&path)?.config;
    let bridge = config
        .bridges
        .iter()
        .find(|b| b.name == name)
        .with_context(|| format!("no bridge `{name}` in {}", path.display()))?;
    let SourceSpec::Webhook(spec) = &bridge.source else {
        bail!("bridge `{name}` is of kind {}, not webhook", bridge.kind());
    };
    let url = broker_bridge::sources::webhook::hook_url(&config.webhook, name, spec);
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

/// Hides the password of a URL for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
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
    let routing_key = routing::event_key(&tenant, &source_name, &event.ty);
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
    let connection =
        lapin::Connection::connect(&exchange.url, lapin::ConnectionProperties::default())
            .await
            .context("connecting to the exchange")?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
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
            exchange.name.as_str().into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding to exchange `{}`", exchange.name))?;
    eprintln!("tailing `{}` with pattern {pattern}", exchange.name);
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "broker-bridge-tail".into(),
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
