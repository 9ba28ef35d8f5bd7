//! `kind = "dummy"`, built only with the `test-kinds` feature: the smallest kind that
//! keeps the delivery contract. It exists to show what adding a kind takes (this folder
//! and one line of `kinds!`; see the README's "Adding a source kind") and to run the
//! conformance suite on it. Every file in `dir` whose name ends in `.msg` is a message,
//! read in name order; its acknowledgement deletes the file, so a message that is not
//! confirmed stays in the directory and is read again. A file is read whole, as a broker
//! hands over a whole message: the bridge dead-letters one over `max_message_bytes` with
//! its sample, size and digest. (The directory is the test's own; a kind reading from
//! strangers bounds what it reads.)

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use super::common::kind::SourceKind;
use crate::config::{duration, fields};
use crate::message::{Acker, Incoming, Metadata, SourceError};

/// The keys of a dummy bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DummySpec {
    /// The directory whose `*.msg` files are the messages.
    pub dir: PathBuf,
    /// The subject every message carries (and so its default `type`).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// How long to wait before listing the directory again when it had nothing new.
    #[serde(default = "default_poll_interval", with = "duration")]
    pub poll_interval: Duration,
}

fn default_subject() -> String {
    "dummy".into()
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(20)
}

/// `kind = "dummy"`.
pub struct Dummy;

#[async_trait]
impl SourceKind for Dummy {
    const NAME: &'static str = "dummy";
    // Test-only: `config.example.toml` does not show it to users.
    const DOCUMENTED: bool = false;
    type Spec = DummySpec;

    fn parse(table: Map<String, Value>) -> Result<DummySpec, String> {
        fields::parse(Value::Object(table))
    }

    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<DummySpec>().to_vec()
    }

    fn describe(spec: &DummySpec) -> String {
        format!(
            "at-least-once: the `*.msg` files of {}, each deleted after the exchange confirmed it",
            spec.dir.display()
        )
    }

    async fn connect(
        spec: &DummySpec,
        _context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        if !spec.dir.is_dir() {
            return Err(SourceError::Connect(format!(
                "`{}` is not a directory",
                spec.dir.display()
            )));
        }
        Ok(Box::new(Spool {
            spec: spec.clone(),
            taken: Arc::default(),
            queue: VecDeque::new(),
        }))
    }
}

/// A connection to the directory: the files handed out and not yet settled are `taken`,
/// so a listing does not hand them out twice. A new connection starts with none taken,
/// which redelivers every file still there.
struct Spool {
    spec: DummySpec,
    taken: Arc<Mutex<HashSet<PathBuf>>>,
    queue: VecDeque<PathBuf>,
}

impl Spool {
    /// Queues the files not taken yet, in name order.
    fn list(&mut self) -> Result<(), SourceError> {
        let entries = std::fs::read_dir(&self.spec.dir).map_err(|e| {
            SourceError::Subscription(format!("cannot list {}: {e}", self.spec.dir.display()))
        })?;
        let mut new: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "msg"))
            .collect();
        new.sort();
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        for path in new {
            if taken.insert(path.clone()) {
                self.queue.push_back(path);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for Spool {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            let Some(path) = self.queue.pop_front() else {
                self.list()?;
                if self.queue.is_empty() {
                    tokio::time::sleep(self.spec.poll_interval).await;
                }
                continue;
            };
            let settle = Settle {
                path: path.clone(),
                taken: self.taken.clone(),
            };
            let payload = match tokio::fs::read(&path).await {
                Ok(payload) => payload,
                // Deleted by someone else in the meantime: nothing to deliver.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(SourceError::Subscription(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )));
                }
            };
            let id = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned());
            return Ok(Incoming {
                payload: payload.into(),
                meta: Metadata {
                    subject: Some(self.spec.subject.clone()),
                    id,
                    source_uri: format!("file://{}", self.spec.dir.display()),
                    received: chrono::Utc::now(),
                    ..Default::default()
                },
                ack: Box::new(settle),
            });
        }
    }
}

/// A handed-out file. Acked: deleted. Dropped unacked: listed again.
struct Settle {
    path: PathBuf,
    taken: Arc<Mutex<HashSet<PathBuf>>>,
}

#[async_trait]
impl Acker for Settle {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SourceError::Ack(format!(
                "cannot delete {}: {e}",
                self.path.display()
            ))),
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.path);
    }
}
