//! What a poll and its ackers share: the events not confirmed yet and the watermark
//! written to the progress file.

use std::collections::{HashMap, VecDeque};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use super::index::{Files, Progress};
use crate::sources::common::state_file;

/// An event handed to the bridge and not yet confirmed.
pub(super) struct Pending {
    pub(super) seq: u64,
    /// The key the join passed just before this event's key: while this is the oldest
    /// unconfirmed event, keys up to `before` are settled.
    pub(super) before: Option<String>,
    pub(super) confirmed: bool,
}

/// What the source and its ackers share.
pub(super) struct Cursor {
    pub(super) files: Files,
    /// Set when a newer connection of the same bridge took over: acks do nothing.
    pub(super) abandoned: bool,
    pub(super) next: Option<BufWriter<std::fs::File>>,
    pub(super) pending: VecDeque<Pending>,
    pub(super) next_seq: u64,
    /// The last key the join has passed (index.next is complete up to it).
    pub(super) processed: Option<String>,
    /// The key the join passed before the current one.
    pub(super) before_current: Option<String>,
    /// The watermark last written to the progress file.
    pub(super) written: Option<String>,
}

impl Cursor {
    pub(super) fn watermark(&self) -> Option<String> {
        match self.pending.front() {
            Some(front) => front.before.clone(),
            None => self.processed.clone(),
        }
    }

    pub(super) fn confirm(&mut self, seq: u64) -> std::io::Result<()> {
        if self.abandoned {
            return Ok(());
        }
        if let Some(entry) = self.pending.iter_mut().find(|p| p.seq == seq) {
            entry.confirmed = true;
        }
        while self.pending.front().is_some_and(|p| p.confirmed) {
            self.pending.pop_front();
        }
        let watermark = self.watermark();
        if watermark.is_some() && watermark != self.written {
            if let Some(next) = &mut self.next {
                next.flush()?;
            }
            let progress = serde_json::to_vec(&Progress {
                watermark: watermark.clone(),
            })
            .expect("serializable");
            state_file::write_atomically(&self.files.progress, &progress)?;
            self.written = watermark;
        }
        Ok(())
    }
}

/// One cursor per bridge and state directory in this process, so a reconnect can
/// retire the previous connection's acks before it recovers the files.
pub(super) static CURSORS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<Cursor>>>>> =
    LazyLock::new(Default::default);
