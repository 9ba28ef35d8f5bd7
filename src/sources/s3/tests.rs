//! Unit tests of the cursor files and the watermark.

use std::collections::VecDeque;
use std::path::Path;

use super::cursor::{Cursor, Pending};
use super::index::{
    Entry, Files, Header, IndexReader, Progress, previous_header, recover, write_line,
};

fn entry(key: &str, etag: &str) -> Entry {
    Entry {
        key: key.into(),
        etag: etag.into(),
        size: 1,
        modified: 0,
    }
}

fn write_index(path: &Path, header: &Header, entries: &[Entry]) {
    let mut out = Vec::new();
    write_line(&mut out, header).unwrap();
    for e in entries {
        write_line(&mut out, e).unwrap();
    }
    std::fs::write(path, out).unwrap();
}

fn read_index(path: &Path, header: &Header) -> Vec<Entry> {
    let mut reader = IndexReader::open(path, header).unwrap();
    let mut out = Vec::new();
    while let Some(e) = reader.next_entry().unwrap() {
        out.push(e);
    }
    out
}

fn header() -> Header {
    Header {
        bucket: "b".into(),
        prefix: String::new(),
        suffix: String::new(),
    }
}

#[test]
fn recovery_takes_the_new_index_up_to_the_watermark_and_the_old_one_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), "t");
    std::fs::create_dir_all(files.index.parent().unwrap()).unwrap();
    let h = header();
    // Old: a, b, c, d. The unfinished poll saw a changed, b removed, c unchanged,
    // d changed, e created, with events up to c confirmed.
    write_index(
        &files.index,
        &h,
        &[
            entry("a", "1"),
            entry("b", "1"),
            entry("c", "1"),
            entry("d", "1"),
        ],
    );
    write_index(
        &files.next,
        &h,
        &[
            entry("a", "2"),
            entry("c", "1"),
            entry("d", "2"),
            entry("e", "1"),
        ],
    );
    std::fs::write(&files.progress, br#"{"watermark":"c"}"#).unwrap();
    recover(&files, &h).unwrap();
    assert_eq!(
        read_index(&files.index, &h),
        [entry("a", "2"), entry("c", "1"), entry("d", "1")],
        "d's change and e are not confirmed: they are found again"
    );
    assert!(!files.next.exists() && !files.progress.exists());
}

#[test]
fn without_progress_the_unfinished_poll_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), "t");
    std::fs::create_dir_all(files.index.parent().unwrap()).unwrap();
    let h = header();
    write_index(&files.index, &h, &[entry("a", "1")]);
    write_index(&files.next, &h, &[entry("a", "2")]);
    recover(&files, &h).unwrap();
    assert_eq!(read_index(&files.index, &h), [entry("a", "1")]);
    let other = Header {
        bucket: "other".into(),
        ..header()
    };
    assert!(
        read_index(&files.index, &other).is_empty(),
        "another bucket starts afresh"
    );
}

#[test]
fn a_filter_edit_keeps_the_index_and_a_bucket_edit_sets_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), "t");
    std::fs::create_dir_all(files.index.parent().unwrap()).unwrap();
    let wide = header();
    write_index(
        &files.index,
        &wide,
        &[entry("in/a", "1"), entry("out/x", "1")],
    );
    write_index(
        &files.next,
        &wide,
        &[entry("in/a", "1"), entry("out/x", "2")],
    );
    std::fs::write(&files.progress, br#"{"watermark":"out/x"}"#).unwrap();
    let narrow = Header {
        prefix: "in/".into(),
        ..header()
    };
    assert_eq!(
        previous_header(&files).unwrap(),
        Some(Some(wide.clone())),
        "what connect logs the edit against"
    );
    recover(&files, &narrow).unwrap();
    assert_eq!(
        read_index(&files.index, &narrow),
        [entry("in/a", "1"), entry("out/x", "2")],
        "entries outside the new filter are kept: they were published"
    );
    assert_eq!(previous_header(&files).unwrap(), Some(Some(narrow.clone())));
    assert!(narrow.selects("in/a") && !narrow.selects("out/x"));
    let suffixed = Header {
        suffix: ".csv".into(),
        ..header()
    };
    assert!(suffixed.selects("a.csv") && !suffixed.selects("a.csv.txt"));
    let other = Header {
        bucket: "other".into(),
        ..narrow
    };
    recover(&files, &other).unwrap();
    assert!(read_index(&files.index, &other).is_empty());
}

#[test]
fn the_watermark_waits_for_the_oldest_unconfirmed_event() {
    let dir = tempfile::tempdir().unwrap();
    let files = Files::new(dir.path(), "t");
    std::fs::create_dir_all(files.index.parent().unwrap()).unwrap();
    let mut cursor = Cursor {
        files: files.clone(),
        abandoned: false,
        next: None,
        pending: VecDeque::new(),
        next_seq: 2,
        processed: Some("z".into()),
        before_current: None,
        written: None,
    };
    for (seq, before) in [(0, "a"), (1, "m")] {
        cursor.pending.push_back(Pending {
            seq,
            before: Some(before.into()),
            confirmed: false,
        });
    }
    cursor.confirm(1).unwrap();
    assert_eq!(cursor.watermark().as_deref(), Some("a"));
    cursor.confirm(0).unwrap();
    assert_eq!(cursor.watermark().as_deref(), Some("z"));
    let progress: Progress =
        serde_json::from_slice(&std::fs::read(&files.progress).unwrap()).unwrap();
    assert_eq!(progress.watermark.as_deref(), Some("z"));
}
