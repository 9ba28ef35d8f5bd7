//! What outlives one connection: the subscriptions and the ids of unacknowledged
//! messages of a broker session in this process, and the record of the session's
//! filters in the state_dir.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};

use super::client::Arrived;
use crate::sources::common::state_file;

/// What this process knows about one broker session (server and client id).
#[derive(Debug, Default)]
pub(super) struct SessionMemory {
    /// The filters this process last subscribed the session to; empty before the first
    /// subscription in this process.
    pub(super) subscribed: Vec<(String, u8)>,
    /// Event ids of QoS 1 messages handed to the bridge and not yet acknowledged, by
    /// packet id, with a digest of the message: a resent message keeps its id.
    pub(super) unacked: HashMap<u16, (u64, String)>,
}

/// What to do with the session after a CONNACK.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) subscribe: Vec<(String, u8)>,
    /// Filters the session has and `topics` no longer lists; unsubscribed only after
    /// `subscribe` is acknowledged.
    pub(super) unsubscribe: Vec<String>,
    /// The broker has no session although this bridge had one there: what was published
    /// while broker-bridge was away was not kept for it.
    pub(super) session_lost: bool,
    /// A session is present, but nothing tells which filters it has from before this
    /// process (no record): a filter removed while stopped cannot be unsubscribed.
    pub(super) filters_unknown: bool,
}

impl SessionMemory {
    /// What to subscribe and unsubscribe after a CONNACK. A session the broker kept
    /// already has the filters this process gave it, so those are not subscribed again:
    /// a SUBSCRIBE makes an MQTT 3.1.1 broker resend every retained message, which would
    /// be bridged twice. Before the first subscription in this process, or when the
    /// broker has no session, every filter is subscribed. The filters the session has
    /// and `wanted` lacks are unsubscribed: those this process subscribed, or before its
    /// first subscription those `recorded` (by an earlier process, in the state_dir).
    /// Unsubscribing loses nothing the session already queued: the broker still
    /// delivers it (Mosquitto), and the bridge bridges every topic it is given.
    pub(super) fn plan(
        &mut self,
        session_present: bool,
        wanted: &[(String, u8)],
        recorded: Option<&[String]>,
    ) -> Plan {
        if !session_present {
            // A new session: nothing will be resent, and no subscription exists.
            let session_lost = !self.subscribed.is_empty() || recorded.is_some();
            self.unacked.clear();
            self.subscribed.clear();
            return Plan {
                subscribe: wanted.to_vec(),
                unsubscribe: Vec::new(),
                session_lost,
                filters_unknown: false,
            };
        }
        let first_in_process = self.subscribed.is_empty();
        let subscribe = wanted
            .iter()
            .filter(|filter| first_in_process || !self.subscribed.contains(filter))
            .cloned()
            .collect();
        let had: Vec<String> = if first_in_process {
            recorded.unwrap_or_default().to_vec()
        } else {
            self.subscribed.iter().map(|(old, _)| old.clone()).collect()
        };
        let unsubscribe = had
            .into_iter()
            .filter(|old| !wanted.iter().any(|(new, _)| new == old))
            .collect();
        Plan {
            subscribe,
            unsubscribe,
            session_lost: false,
            filters_unknown: first_in_process && recorded.is_none(),
        }
    }

    /// The event id of a QoS 1 message: that of its first delivery when the broker
    /// resends it, else a new UUIDv7.
    pub(super) fn id_for(&mut self, pkid: u16, dup: bool, digest: u64) -> String {
        if dup
            && let Some((known, id)) = self.unacked.get(&pkid)
            && *known == digest
        {
            return id.clone();
        }
        let id = uuid::Uuid::now_v7().to_string();
        self.unacked.insert(pkid, (digest, id.clone()));
        id
    }

    /// Forgets an acknowledged message (unless its packet id was already reused).
    pub(super) fn acknowledged(&mut self, pkid: u16, id: &str) {
        if self
            .unacked
            .get(&pkid)
            .is_some_and(|(_, known)| known == id)
        {
            self.unacked.remove(&pkid);
        }
    }
}

static SESSIONS: LazyLock<Mutex<HashMap<String, Arc<Mutex<SessionMemory>>>>> =
    LazyLock::new(Default::default);

pub(super) fn session_memory(key: String) -> Arc<Mutex<SessionMemory>> {
    SESSIONS
        .lock()
        .expect("sessions lock")
        .entry(key)
        .or_default()
        .clone()
}

pub(super) fn digest(arrived: &Arrived) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    arrived.topic.hash(&mut hasher);
    arrived.payload.hash(&mut hasher);
    hasher.finish()
}

/// Which session a bridge last used and the filters it gave it, kept in
/// `<state_dir>/mqtt/<bridge>.json`. It lets a start unsubscribe a filter removed while
/// broker-bridge was stopped, and tell that `client_id` or `url` changed (the old
/// session still holds what was queued there). Losing it loses no message: without it
/// a removed filter stays subscribed, as the log then says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SessionRecord {
    /// `host:port` of the broker.
    pub(super) server: String,
    pub(super) client_id: String,
    /// The filters as subscribed (with the `$share/<group>/` prefix).
    pub(super) filters: Vec<String>,
}

impl SessionRecord {
    pub(super) fn same_session(&self, server: &str, client_id: &str) -> bool {
        self.server == server && self.client_id == client_id
    }
}

/// The latest record of each bridge in this process, by bridge name: the state_dir
/// copy may be missing (not writable), a reload still knows.
pub(super) static RECORDS: LazyLock<Mutex<HashMap<String, SessionRecord>>> =
    LazyLock::new(Default::default);

pub(super) fn record_path(state_dir: &Path, bridge: &str) -> PathBuf {
    state_dir.join("mqtt").join(format!("{bridge}.json"))
}

/// The bridge's last record: this process's, else the state_dir's.
pub(super) fn previous_record(path: &Path, bridge: &str) -> Option<SessionRecord> {
    if let Some(record) = RECORDS.lock().expect("records lock").get(bridge) {
        return Some(record.clone());
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot read the record of this bridge's MQTT session; filters removed \
                 from `topics` while broker-bridge was stopped stay subscribed"
            );
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "the record of this bridge's MQTT session is damaged and is ignored (it is \
                 written again once subscribed); filters removed from `topics` while \
                 broker-bridge was stopped stay subscribed"
            );
            None
        }
    }
}

/// Keeps the record in this process and, when it changed, in the state_dir (atomically,
/// `state_file`).
pub(super) fn keep_record(
    path: &Path,
    bridge: &str,
    record: SessionRecord,
    previous: Option<&SessionRecord>,
) {
    RECORDS
        .lock()
        .expect("records lock")
        .insert(bridge.to_owned(), record.clone());
    if previous == Some(&record) {
        return;
    }
    let write = || state_file::write_json(path, &record);
    if let Err(e) = write() {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot record this bridge's MQTT session in the state_dir; after a restart, \
             filters removed from `topics` while broker-bridge was stopped stay subscribed, \
             and a changed client_id is not reported"
        );
    }
}
