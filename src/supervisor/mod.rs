//! Runs the bridges of a config: starts them, reloads on file change or SIGHUP (diff by
//! bridge name), swaps the publisher when `[exchange]` changes, and drains on SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, BridgeStatus, PublisherSlot, State, current_publisher};
use crate::config::{self, BridgeSpec, Config};
use crate::exchange::Publisher;
use crate::metrics::{BridgeMetrics, Registry};
// `crate::notify` (systemd) spelled out: plain `notify::` here is the file-watching crate.
use crate::notify::{Notifier, summarize};
use crate::sources::{KINDS, Listeners, Verdict};

/// How long file events are collected into one reload (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// What the admin endpoints read.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub publisher: PublisherSlot,
    pub bridges: RwLock<BTreeMap<String, BridgeView>>,
    pub reload: Mutex<ReloadStatus>,
    /// `[admin] ready_grace` (applied at start, like the rest of `[admin]`).
    pub ready_grace: Duration,
}

impl Shared {
    /// The one-line summary for `STATUS=` (and `systemctl status`), e.g.
    /// `5 bridges: 4 running, 1 failing (orders); exchange connected`.
    pub fn status_line(&self) -> String {
        let bridges: Vec<(String, State)> = self
            .bridges
            .read()
            .expect("bridges lock")
            .iter()
            .map(|(name, view)| (name.clone(), view.status.snapshot().state))
            .collect();
        let exchange_connected = current_publisher(&self.publisher).is_connected();
        let reload_failed = self
            .reload
            .lock()
            .expect("reload lock")
            .last_error
            .is_some();
        summarize(&bridges, exchange_connected, reload_failed)
    }
}

/// One bridge as the admin endpoints see it.
#[derive(Clone)]
pub struct BridgeView {
    pub spec: BridgeSpec,
    pub status: Arc<BridgeStatus>,
    pub metrics: Arc<BridgeMetrics>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub config_path: PathBuf,
    pub last_success: Option<DateTime<Utc>>,
    /// The error of the last reload, cleared by the next successful one.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

struct Running {
    spec: BridgeSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Supervisor {
    path: PathBuf,
    config: Config,
    shared: Arc<Shared>,
    listeners: Listeners,
    running: BTreeMap<String, Running>,
}

impl Supervisor {
    /// Starts the publisher and every bridge of an already validated config.
    pub fn start(path: &Path, config: Config, registry: Arc<Registry>) -> Self {
        let publisher = Publisher::start(config.exchange.clone(), registry.clone());
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            publisher: Arc::new(RwLock::new(publisher)),
            bridges: RwLock::new(BTreeMap::new()),
            ready_grace: config.admin.ready_grace,
            reload: Mutex::new(ReloadStatus {
                config_path: path.to_owned(),
                last_success: Some(Utc::now()),
                ..Default::default()
            }),
        });
        registry
            .last_reload_success_seconds
            .set(Utc::now().timestamp());
        let mut supervisor = Supervisor {
            path: path.to_owned(),
            config: config.clone(),
            shared,
            listeners: Listeners::new(&config),
            running: BTreeMap::new(),
        };
        for spec in config.bridges {
            supervisor.start_bridge(spec);
        }
        supervisor
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn start_bridge(&mut self, spec: BridgeSpec) {
        let metrics = self.shared.registry.bridge(&spec.name, spec.kind());
        let status = Arc::new(BridgeStatus::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(bridge::supervise(bridge::Bridge {
            spec: spec.clone(),
            publisher: self.shared.publisher.clone(),
            listeners: self.listeners.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            stop: stop.clone(),
        }));
        self.shared.bridges.write().expect("bridges lock").insert(
            spec.name.clone(),
            BridgeView {
                spec: spec.clone(),
                status,
                metrics,
            },
        );
        self.running
            .insert(spec.name.clone(), Running { spec, stop, task });
    }

    /// Stops several bridges at once and waits until each has drained.
    async fn stop_bridges(&mut self, names: &[String]) {
        let mut waits = Vec::new();
        for name in names {
            if let Some(running) = self.running.remove(name) {
                running.stop.cancel();
                waits.push(running.task);
            }
        }
        for wait in waits {
            let _ = wait.await;
        }
    }

    /// Loads the config again and applies the difference. An invalid config changes
    /// nothing; its error is logged, counted and shown in `/bridges`. So does a valid
    /// one whose changed bridge a source broker refuses (e.g. a JetStream filter edit
    /// that would skip pending messages): the old bridge keeps running.
    pub async fn reload(&mut self, trigger: &str) -> Result<Vec<PathBuf>, config::ConfigError> {
        let loaded = match config::load(&self.path, &KINDS) {
            Ok(loaded) => loaded,
            Err(error) => return Err(self.refuse_reload(trigger, error)),
        };
        if let Err(error) = self.verify_changed_bridges(&loaded.config).await {
            return Err(self.refuse_reload(trigger, error));
        }
        tracing::info!(%trigger, "config reloaded");
        self.apply(loaded.config).await;
        self.shared.registry.reloads_success.inc();
        self.shared
            .registry
            .last_reload_success_seconds
            .set(Utc::now().timestamp());
        let mut reload = self.shared.reload.lock().expect("reload lock");
        reload.last_error = None;
        reload.last_error_at = None;
        reload.last_success = Some(Utc::now());
        Ok(loaded.watch_dirs)
    }

    fn refuse_reload(&self, trigger: &str, error: config::ConfigError) -> config::ConfigError {
        tracing::error!(%trigger, %error, "config reload failed; the running config stays");
        self.shared.registry.reloads_failure.inc();
        let mut reload = self.shared.reload.lock().expect("reload lock");
        reload.last_error = Some(crate::secret::scrub(&error.to_string()));
        reload.last_error_at = Some(Utc::now());
        error
    }

    /// Asks the brokers of the bridges a reload would restart whether their new specs
    /// move a position. A broker that cannot be asked does not hold the reload up: the
    /// restarted bridge asks again when it connects, and refuses to start there.
    async fn verify_changed_bridges(&self, new: &Config) -> Result<(), config::ConfigError> {
        let changed: Vec<&BridgeSpec> = new
            .bridges
            .iter()
            .filter(|spec| {
                self.running
                    .get(&spec.name)
                    .is_some_and(|running| running.spec.source != spec.source)
            })
            .collect();
        let verdicts =
            futures::future::join_all(changed.iter().map(|spec| KINDS.verify_position(spec))).await;
        for (spec, verdict) in changed.iter().zip(verdicts) {
            match verdict {
                Verdict::Safe => {}
                Verdict::Unverified(why) => {
                    tracing::warn!(bridge = %spec.name, %why, "cannot verify the changed source settings now; the bridge checks again when it connects");
                }
                Verdict::Refused(message) => {
                    return Err(config::ConfigError::Bridge {
                        bridge: spec.name.clone(),
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    async fn apply(&mut self, new: Config) {
        if new.exchange != self.config.exchange {
            tracing::info!("[exchange] changed: connecting a new publisher");
            let fresh = Publisher::start(new.exchange.clone(), self.shared.registry.clone());
            let old = std::mem::replace(
                &mut *self.shared.publisher.write().expect("publisher lock"),
                fresh,
            );
            // In-flight messages retry on the new publisher; close the old one once its
            // last confirm is in (or after the drain timeout).
            let timeout = new.defaults.shutdown_timeout;
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + timeout;
                while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                old.shutdown();
            });
        }
        if new.admin != self.config.admin {
            tracing::warn!("[admin] changed: it takes effect after a restart");
        }
        if new.webhook != self.config.webhook {
            tracing::warn!("[webhook] changed: it takes effect after a restart");
        }
        let plan = reload_plan(
            self.running.values().map(|running| &running.spec),
            &new.bridges,
        );
        tracing::info!(
            stopped = ?plan.stop,
            restarted = ?plan.restart.iter().map(|s| &s.name).collect::<Vec<_>>(),
            started = ?plan.start.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "applying the new config"
        );
        let stopping: Vec<String> = plan
            .stop
            .iter()
            .cloned()
            .chain(plan.restart.iter().map(|spec| spec.name.clone()))
            .collect();
        self.stop_bridges(&stopping).await;
        for name in &plan.stop {
            self.shared
                .bridges
                .write()
                .expect("bridges lock")
                .remove(name);
            self.shared.registry.remove_bridge(name);
        }
        self.listeners.retain(&new.bridges);
        for spec in plan.restart.into_iter().chain(plan.start) {
            if let Some(metrics) = self
                .shared
                .bridges
                .read()
                .expect("bridges lock")
                .get(&spec.name)
                .map(|view| view.metrics.clone())
            {
                metrics.restarts.inc();
            }
            self.start_bridge(spec);
        }
        self.config = new;
    }

    /// Stops every bridge (draining each) and closes the publisher.
    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        self.stop_bridges(&names).await;
        current_publisher(&self.shared.publisher).shutdown();
    }

    /// The main loop: reload on SIGHUP or file change, return on SIGTERM/SIGINT. Tells
    /// systemd (`notifier`) about each reload (`RELOADING=1`, then `READY=1` whether the
    /// new config was applied or refused) and about the shutdown (`STOPPING=1`).
    pub async fn run(
        mut self,
        watch_dirs: Vec<PathBuf>,
        notifier: Arc<Notifier>,
    ) -> anyhow::Result<()> {
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let (file_events, mut changes) = mpsc::unbounded_channel();
        let mut watcher = ConfigWatcher::new(&self.path, file_events)?;
        watcher.watch(&watch_dirs);
        loop {
            let trigger = tokio::select! {
                _ = hangup.recv() => "SIGHUP",
                Some(()) = changes.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                    "file change"
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            };
            notifier.reloading();
            if let Ok(dirs) = self.reload(trigger).await {
                watcher.watch(&dirs);
            }
            notifier.ready(&self.shared.status_line());
        }
        notifier.stopping();
        tracing::info!("shutting down: draining bridges");
        self.shutdown().await;
        Ok(())
    }
}

/// What a reload does to the running bridges, decided by name: a bridge whose spec is
/// equal stays as it is.
#[derive(Debug, Default)]
struct ReloadPlan {
    /// Running bridges the new config no longer has: stopped, and their status and
    /// metrics removed.
    stop: Vec<String>,
    /// Running bridges whose spec changed (any key, common or of the source): stopped,
    /// then started with their new spec, in the order `running` lists them.
    restart: Vec<BridgeSpec>,
    /// Bridges the new config adds, in its order.
    start: Vec<BridgeSpec>,
}

/// Compares the specs of the running bridges with those a new config wants. Pure, so
/// that the reload's decisions are tested without starting anything.
fn reload_plan<'a>(
    running: impl IntoIterator<Item = &'a BridgeSpec>,
    wanted: &[BridgeSpec],
) -> ReloadPlan {
    let wanted_by_name: BTreeMap<&str, &BridgeSpec> =
        wanted.iter().map(|b| (b.name.as_str(), b)).collect();
    let mut plan = ReloadPlan::default();
    let mut running_names = BTreeSet::new();
    for current in running {
        running_names.insert(current.name.as_str());
        match wanted_by_name.get(current.name.as_str()) {
            None => plan.stop.push(current.name.clone()),
            Some(spec) if **spec != *current => plan.restart.push((*spec).clone()),
            Some(_) => {}
        }
    }
    plan.start = wanted
        .iter()
        .filter(|spec| !running_names.contains(spec.name.as_str()))
        .cloned()
        .collect();
    plan
}

/// Watches the config's directories (not the files: editors replace files by renaming)
/// and reports changes to `.toml` files and to the main config file. A wanted directory
/// that does not exist yet (an include folder made later) is covered by watching its
/// nearest existing ancestor; its creation triggers a reload, after which it is watched.
struct ConfigWatcher {
    watcher: notify::RecommendedWatcher,
    /// The directories the config names, shared with the event callback.
    wanted: Arc<Mutex<Vec<PathBuf>>>,
    /// What is actually watched: each wanted directory or its nearest existing ancestor.
    watching: Vec<PathBuf>,
}

impl ConfigWatcher {
    fn new(path: &Path, events: mpsc::UnboundedSender<()>) -> notify::Result<Self> {
        let main_file = path.file_name().map(|n| n.to_owned());
        let wanted: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let wanted_by_callback = wanted.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let wanted = wanted_by_callback.lock().expect("watch lock");
            let relevant = event.paths.iter().any(|p| {
                p.extension().is_some_and(|e| e == "toml")
                    || p.file_name().map(|n| n.to_owned()) == main_file
                    || wanted.iter().any(|dir| dir.starts_with(p))
            });
            if relevant {
                let _ = events.send(());
            }
        })?;
        Ok(ConfigWatcher {
            watcher,
            wanted,
            watching: Vec::new(),
        })
    }

    fn watch(&mut self, dirs: &[PathBuf]) {
        *self.wanted.lock().expect("watch lock") = dirs.to_vec();
        let mut targets: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|dir| dir.ancestors().find(|a| a.is_dir()).map(Path::to_owned))
            .collect();
        targets.sort();
        targets.dedup();
        for dir in &self.watching {
            if !targets.contains(dir) {
                let _ = self.watcher.unwatch(dir);
            }
        }
        let mut watching = Vec::with_capacity(targets.len());
        for dir in targets {
            if self.watching.contains(&dir) {
                watching.push(dir);
                continue;
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => watching.push(dir),
                // Not recorded, so the next reload tries again.
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch config directory")
                }
            }
        }
        self.watching = watching;
    }
}

#[cfg(test)]
mod tests;
