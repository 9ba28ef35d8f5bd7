//! State files (cursors, records of what a bridge consumed): a crash or a power loss at
//! any moment leaves the old contents or the new, never an empty or half-written file.
//! Written to a temporary file beside the target, fsynced, renamed over it, and the
//! directory fsynced so that the rename itself survives.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents`, creating its directory when missing.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let temporary = temporary_path(path);
    let mut file = File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    replace(&temporary, path)
}

/// Replaces `path` with `value` as JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomically(path, &serde_json::to_vec_pretty(value)?)
}

/// Moves a finished, fsynced file over `to`, and makes the move durable.
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    match to.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// `<name>.tmp` beside `path`.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "BROKER_BRIDGE_STATE_FILE_WRITER";

    /// A writer killed at random moments, mid-write included, never leaves the file
    /// empty or half-written: it holds one whole version or the other.
    #[test]
    fn an_interrupted_write_leaves_the_old_or_the_new_contents() {
        let versions = [vec![b'a'; 4 << 20], vec![b'b'; 4 << 20]];
        if let Some(path) = std::env::var_os(CHILD) {
            // The child: rewrite the file, alternating versions, until it is killed.
            for n in 0.. {
                write_atomically(Path::new(&path), &versions[n % 2]).unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor.json");
        write_atomically(&path, &versions[0]).unwrap();
        for round in 0..12u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "sources::state_file::tests::an_interrupted_write_leaves_the_old_or_the_new_contents",
                ])
                .env(CHILD, &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20 + round * 17));
            child.kill().unwrap();
            child.wait().unwrap();
            let contents = fs::read(&path).unwrap();
            assert!(
                versions.contains(&contents),
                "round {round}: {} bytes, not a whole version",
                contents.len()
            );
        }
    }

    #[test]
    fn a_leftover_temporary_file_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("x.json");
        write_atomically(&path, b"old").unwrap();
        fs::write(temporary_path(&path), b"half a wri").unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            b"old",
            "a crash before the rename"
        );
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!temporary_path(&path).exists());
    }
}
