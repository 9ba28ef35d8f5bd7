//! A poll: the merge-join of the paginated listing with the index, writing the new
//! index as it goes and yielding what was created, changed or removed.

use std::collections::VecDeque;
use std::io::BufWriter;

use aws_sdk_s3::error::DisplayErrorContext;

use super::index::{Entry, IndexReader, io_error, write_line};
use super::source::S3Source;
use crate::message::SourceError;
use crate::s3notification::clean_etag;
use crate::sources::common::state_file;

/// A listed object, as the join sees it.
struct Listed {
    entry: Entry,
}

/// Where a poll stands.
pub(super) struct Poll {
    old: IndexReader,
    old_head: Option<Entry>,
    page: VecDeque<Listed>,
    token: Option<String>,
    listing_done: bool,
    last_listed: Option<String>,
}

pub(super) enum Change {
    Created(Entry),
    Changed(Entry),
    Removed(Entry),
}

fn millis_of(time: Option<&aws_sdk_s3::primitives::DateTime>) -> i64 {
    time.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

impl S3Source {
    pub(super) fn start_poll(&mut self) -> Result<(), SourceError> {
        let old = IndexReader::open(
            &self.cursor.lock().expect("cursor lock").files.index,
            &self.header,
        )?;
        let mut cursor = self.cursor.lock().expect("cursor lock");
        let path = cursor.files.next.clone();
        let file = std::fs::File::create(&path).map_err(|e| io_error("write", &path, e))?;
        let mut next = BufWriter::new(file);
        write_line(&mut next, &self.header).map_err(|e| io_error("write", &path, e))?;
        cursor.next = Some(next);
        cursor.processed = None;
        cursor.written = None;
        drop(cursor);
        self.poll = Some(Poll {
            old,
            old_head: None,
            page: VecDeque::new(),
            token: None,
            listing_done: false,
            last_listed: None,
        });
        let poll = self.poll.as_mut().expect("just set");
        poll.old_head = poll.old.next_entry()?;
        Ok(())
    }

    /// Fetches the next listing page when the current one is used up.
    async fn fill_page(&mut self) -> Result<(), SourceError> {
        let poll = self.poll.as_mut().expect("polling");
        while poll.page.is_empty() && !poll.listing_done {
            let output = self
                .client
                .list_objects_v2()
                .bucket(&self.spec.bucket)
                .prefix(&self.spec.prefix)
                .max_keys(self.spec.page_size)
                .set_continuation_token(poll.token.take())
                .send()
                .await
                .map_err(|e| Self::fail(format!("listing failed: {}", DisplayErrorContext(&e))))?;
            for object in output.contents() {
                let Some(key) = object.key() else { continue };
                if poll.last_listed.as_deref().is_some_and(|last| last >= key) {
                    return Err(Self::fail(format!(
                        "the store listed `{key}` out of order; the cursor needs keys in UTF-8 byte order"
                    )));
                }
                poll.last_listed = Some(key.to_owned());
                if !key.ends_with(&self.spec.suffix) {
                    continue;
                }
                poll.page.push_back(Listed {
                    entry: Entry {
                        key: key.to_owned(),
                        etag: object.e_tag().map(clean_etag).unwrap_or_default(),
                        size: object.size().unwrap_or(0),
                        modified: millis_of(object.last_modified()),
                    },
                });
            }
            poll.token = output.next_continuation_token().map(str::to_owned);
            poll.listing_done = !output.is_truncated().unwrap_or(false) || poll.token.is_none();
        }
        Ok(())
    }

    /// Joins until the next change, or `None` when the poll is through.
    pub(super) async fn next_change(&mut self) -> Result<Option<Change>, SourceError> {
        loop {
            self.fill_page().await?;
            let poll = self.poll.as_mut().expect("polling");
            let listed = poll.page.front().map(|l| &l.entry);
            let old = poll.old_head.as_ref();
            let mut guard = self.cursor.lock().expect("cursor lock");
            let cursor = &mut *guard;
            let path = cursor.files.next.clone();
            let out = cursor.next.as_mut().expect("writing");
            let werr = |e| io_error("write", &path, e);
            let change = match (listed, old) {
                (None, None) => return Ok(None),
                (Some(new), Some(old)) if new.key == old.key => {
                    let new = poll.page.pop_front().expect("front").entry;
                    let old = poll.old_head.take().expect("head");
                    write_line(out, &new).map_err(werr)?;
                    cursor.before_current = cursor.processed.replace(new.key.clone());
                    drop(guard);
                    poll.old_head = poll.old.next_entry()?;
                    if new.etag == old.etag {
                        None
                    } else {
                        Some(Change::Changed(new))
                    }
                }
                (Some(new), old) if old.is_none_or(|old| new.key < old.key) => {
                    let new = poll.page.pop_front().expect("front").entry;
                    write_line(out, &new).map_err(werr)?;
                    cursor.before_current = cursor.processed.replace(new.key.clone());
                    Some(Change::Created(new))
                }
                _ => {
                    let old = poll.old_head.take().expect("head");
                    // Outside the filters (an earlier filter selected it): kept as it
                    // is, so a filter that selects it again does not publish it twice.
                    let selected = self.header.selects(&old.key);
                    if !selected {
                        write_line(out, &old).map_err(werr)?;
                    }
                    cursor.before_current = cursor.processed.replace(old.key.clone());
                    drop(guard);
                    poll.old_head = poll.old.next_entry()?;
                    (selected && self.spec.removed).then_some(Change::Removed(old))
                }
            };
            if let Some(change) = change {
                return Ok(Some(change));
            }
        }
    }

    /// Ends a poll once every event is confirmed: `index.next` becomes `index`.
    pub(super) async fn finish_poll(&mut self) -> Result<(), SourceError> {
        loop {
            let notified = self.notify.notified();
            if self.cursor.lock().expect("cursor lock").pending.is_empty() {
                break;
            }
            notified.await;
        }
        let mut cursor = self.cursor.lock().expect("cursor lock");
        let files = cursor.files.clone();
        if let Some(next) = cursor.next.take() {
            let werr = |e| io_error("write", &files.next, e);
            let file = next.into_inner().map_err(|e| werr(e.into_error()))?;
            file.sync_all().map_err(werr)?;
            state_file::replace(&files.next, &files.index)
                .map_err(|e| io_error("write", &files.index, e))?;
        }
        let _ = std::fs::remove_file(&files.progress);
        cursor.processed = None;
        cursor.written = None;
        self.poll = None;
        Ok(())
    }
}
