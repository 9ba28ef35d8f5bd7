//! The cursor's files (`<bridge>.index`, `.index.next`, `.progress`): their format,
//! reading an index in key order, and folding an unfinished poll back after a restart.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::message::SourceError;
use crate::sources::common::state_file;

/// One line of the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) etag: String,
    pub(super) size: i64,
    /// Unix milliseconds.
    pub(super) modified: i64,
}

/// The first line of every index file. Entries of another bucket are not read (the
/// bridge starts afresh); entries written under other filters are (see "Edited filters
/// and buckets").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) suffix: String,
}

impl Header {
    /// Whether the filters select `key`.
    pub(super) fn selects(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && key.ends_with(&self.suffix)
    }
}

/// The header of the cursor a bridge left: of its index, or of the first poll it did
/// not finish. `Some(None)`: a file without a readable header.
pub(super) fn previous_header(files: &Files) -> Result<Option<Option<Header>>, SourceError> {
    for path in [&files.index, &files.next] {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read", path, e)),
        };
        let first = BufReader::new(file)
            .lines()
            .next()
            .transpose()
            .map_err(|e| io_error("read", path, e))?;
        return Ok(Some(
            first.and_then(|line| serde_json::from_str::<Header>(&line).ok()),
        ));
    }
    Ok(None)
}

/// Says what an edited bucket or filter does to the cursor (once, when connecting).
pub(super) fn log_edit(previous: Option<Option<Header>>, header: &Header) {
    let Some(previous) = previous else { return };
    let Some(previous) = previous else {
        tracing::warn!(
            "cursor has no readable header; starting afresh: every object of bucket `{}` in scope is published",
            header.bucket
        );
        return;
    };
    if previous.bucket != header.bucket {
        tracing::warn!(
            "cursor is for bucket `{}`, not `{}`; starting afresh: every object of `{}` in scope is published. \
             Objects of `{}` not published yet are not (pointed at `{}` again, the bridge publishes every object there)",
            previous.bucket,
            header.bucket,
            header.bucket,
            previous.bucket,
            previous.bucket,
        );
    } else if previous != *header {
        tracing::warn!(
            "filter changed (prefix `{}` -> `{}`, suffix `{}` -> `{}`); the cursor is kept: \
             objects now in scope that were never published are published, objects published before are not published again, \
             objects outside the new filter are not published (they stay in the bucket; a later filter that includes them publishes them)",
            previous.prefix,
            header.prefix,
            previous.suffix,
            header.suffix,
        );
    }
}

/// Files of one bridge's cursor.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub(super) index: PathBuf,
    pub(super) next: PathBuf,
    pub(super) progress: PathBuf,
}

impl Files {
    pub(super) fn new(state_dir: &Path, bridge: &str) -> Files {
        let dir = state_dir.join("s3");
        Files {
            index: dir.join(format!("{bridge}.index")),
            next: dir.join(format!("{bridge}.index.next")),
            progress: dir.join(format!("{bridge}.progress")),
        }
    }
}

pub(super) fn io_error(what: &str, path: &Path, e: std::io::Error) -> SourceError {
    SourceError::Connect(format!("cursor: cannot {what} {}: {e}", path.display()))
}

/// Reads an index file line by line.
pub(super) struct IndexReader {
    lines: Option<std::io::Lines<BufReader<std::fs::File>>>,
    path: PathBuf,
}

impl IndexReader {
    /// Opens `path`; a missing file, or one for another bucket, reads empty. A file
    /// written under other filters is read: its entries are what the bridge published.
    pub(super) fn open(path: &Path, header: &Header) -> Result<IndexReader, SourceError> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(IndexReader {
                    lines: None,
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(io_error("read", path, e)),
        };
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .transpose()
            .map_err(|e| io_error("read", path, e))?;
        // `log_edit` told why when connecting.
        let same = first
            .and_then(|line| serde_json::from_str::<Header>(&line).ok())
            .is_some_and(|h| h.bucket == header.bucket);
        Ok(IndexReader {
            lines: same.then_some(lines),
            path: path.to_owned(),
        })
    }

    pub(super) fn next_entry(&mut self) -> Result<Option<Entry>, SourceError> {
        let Some(lines) = &mut self.lines else {
            return Ok(None);
        };
        match lines.next() {
            None => Ok(None),
            Some(line) => {
                let line = line.map_err(|e| io_error("read", &self.path, e))?;
                serde_json::from_str(&line).map(Some).map_err(|e| {
                    SourceError::Connect(format!("cursor: {} is damaged: {e}", self.path.display()))
                })
            }
        }
    }
}

pub(super) fn write_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// After a restart: folds an unfinished poll (`index.next` up to the watermark, `index`
/// past it) into `index`.
pub(super) fn recover(files: &Files, header: &Header) -> Result<(), SourceError> {
    if let Some(parent) = files.index.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    }
    let watermark: Option<Option<String>> = match std::fs::read(&files.progress) {
        Ok(bytes) => serde_json::from_slice::<Progress>(&bytes)
            .ok()
            .map(|p| p.watermark),
        Err(_) => None,
    };
    if let Some(Some(watermark)) = watermark
        && files.next.exists()
    {
        let tmp = files.index.with_extension("merge");
        let file = std::fs::File::create(&tmp).map_err(|e| io_error("write", &tmp, e))?;
        let mut out = BufWriter::new(file);
        let write_err = |e| io_error("write", &tmp, e);
        write_line(&mut out, header).map_err(write_err)?;
        let mut done = IndexReader::open(&files.next, header)?;
        while let Some(entry) = done.next_entry()? {
            if entry.key > watermark {
                break;
            }
            write_line(&mut out, &entry).map_err(write_err)?;
        }
        let mut old = IndexReader::open(&files.index, header)?;
        while let Some(entry) = old.next_entry()? {
            if entry.key > watermark {
                write_line(&mut out, &entry).map_err(write_err)?;
            }
        }
        let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        state_file::replace(&tmp, &files.index).map_err(|e| io_error("write", &files.index, e))?;
        tracing::info!(%watermark, "cursor recovered from an unfinished poll");
    }
    let _ = std::fs::remove_file(&files.next);
    let _ = std::fs::remove_file(&files.progress);
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Progress {
    pub(super) watermark: Option<String>,
}
