//! `kind = "dummy"` (feature `test-kinds`): the kind that shows what adding a kind takes
//! passes the whole shared contract. Its messages are files in a directory.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use common::conformance::{SourceUnderTest, conformance_suite};
use common::unique;

struct Spool {
    dir: tempfile::TempDir,
    subject: String,
    sent: AtomicU64,
}

impl Spool {
    fn new() -> Self {
        if !cfg!(feature = "test-kinds") {
            panic!("kind `dummy` needs the `test-kinds` feature (scripts/test.sh turns it on)");
        }
        Spool {
            dir: tempfile::tempdir().unwrap(),
            subject: unique("spool"),
            sent: AtomicU64::new(0),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "msg"))
            .collect()
    }
}

impl SourceUnderTest for Spool {
    fn kind(&self) -> &'static str {
        "dummy"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        format!(
            "dir = \"{}\"\nsubject = \"{}\"",
            self.dir.path().display(),
            self.subject
        )
    }
    fn subject(&self) -> String {
        self.subject.clone()
    }
    /// Writes the next file, renamed into place whole, so the bridge never reads half
    /// of it. The directory carries no headers.
    async fn send(&self, payload: &[u8], _headers: &[(&str, &str)]) {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let partial = self.dir.path().join(format!("{n:012}.partial"));
        std::fs::write(&partial, payload).unwrap();
        std::fs::rename(&partial, self.dir.path().join(format!("{n:012}.msg"))).unwrap();
    }
    /// Files still in the directory: not yet confirmed.
    async fn pending_at_source(&self, _bridge: &str) -> Option<u64> {
        Some(self.files().len() as u64)
    }
}

// The shared contract (tests/common/conformance.rs).
conformance_suite!(Spool::new());
