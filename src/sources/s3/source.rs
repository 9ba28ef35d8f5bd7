//! The source: connecting (with recovery of the cursor), turning each change into an
//! event (`Incoming`), and the acker that confirms it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::Notify;

use super::client::client;
use super::cursor::{CURSORS, Cursor, Pending};
use super::index::{Files, Header, log_edit, previous_header, recover};
use super::listing::{Change, Poll};
use super::spec::S3Spec;
use crate::message::{Acker, Incoming, Metadata, SourceError};
use crate::s3notification::{ObjectData, inline_body};
use crate::sources::common::context::{ConnectContext, Source};

/// One connected bridge; its polling (the merge-join) is in `listing.rs`.
pub(super) struct S3Source {
    pub(super) spec: S3Spec,
    pub(super) client: Client,
    pub(super) header: Header,
    pub(super) cursor: Arc<Mutex<Cursor>>,
    pub(super) notify: Arc<Notify>,
    pub(super) poll: Option<Poll>,
    next_poll: tokio::time::Instant,
}

pub(super) async fn connect(
    spec: &S3Spec,
    context: &ConnectContext,
) -> Result<Box<dyn Source>, SourceError> {
    let client = client(spec).await?;
    // Fails early on a missing bucket or wrong credentials.
    client
        .list_objects_v2()
        .bucket(&spec.bucket)
        .max_keys(1)
        .send()
        .await
        .map_err(|e| {
            SourceError::Connect(format!(
                "cannot list bucket `{}`: {}",
                spec.bucket,
                DisplayErrorContext(&e)
            ))
        })?;
    let files = Files::new(&context.state_dir, &context.bridge);
    let header = Header {
        bucket: spec.bucket.clone(),
        prefix: spec.prefix.clone(),
        suffix: spec.suffix.clone(),
    };
    let cursor = Arc::new(Mutex::new(Cursor {
        files: files.clone(),
        abandoned: false,
        next: None,
        pending: VecDeque::new(),
        next_seq: 0,
        processed: None,
        before_current: None,
        written: None,
    }));
    log_edit(previous_header(&files)?, &header);
    {
        let mut registry = CURSORS.lock().expect("registry lock");
        if let Some(previous) = registry.insert(files.index.clone(), cursor.clone()) {
            let mut previous = previous.lock().expect("cursor lock");
            previous.abandoned = true;
            previous.next = None;
            // Recovering under the previous cursor's lock: none of its acks can write
            // while the files are folded.
            recover(&files, &header)?;
        } else {
            recover(&files, &header)?;
        }
    }
    Ok(Box::new(S3Source {
        spec: spec.clone(),
        client,
        header,
        cursor,
        notify: Arc::new(Notify::new()),
        poll: None,
        next_poll: tokio::time::Instant::now(),
    }))
}

fn time_of(millis: i64) -> Option<DateTime<Utc>> {
    (millis != 0)
        .then(|| Utc.timestamp_millis_opt(millis).single())
        .flatten()
}

struct S3Ack {
    cursor: Arc<Mutex<Cursor>>,
    notify: Arc<Notify>,
    seq: u64,
}

#[async_trait]
impl Acker for S3Ack {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        let result = self.cursor.lock().expect("cursor lock").confirm(self.seq);
        self.notify.notify_one();
        result.map_err(|e| SourceError::Ack(format!("cannot write the cursor: {e}")))
    }
}

impl S3Source {
    pub(super) fn fail(e: impl std::fmt::Display) -> SourceError {
        SourceError::Subscription(e.to_string())
    }

    async fn incoming(&mut self, change: Change) -> Result<Incoming, SourceError> {
        let bucket = self.spec.bucket.clone();
        let (entry, removed) = match change {
            Change::Created(e) | Change::Changed(e) => (e, false),
            Change::Removed(e) => (e, true),
        };
        // Registered before anything can fail: should HEAD or GET fail, this event stays
        // unconfirmed, so the watermark never passes its key and it is polled again.
        let seq = {
            let mut cursor = self.cursor.lock().expect("cursor lock");
            let seq = cursor.next_seq;
            cursor.next_seq += 1;
            let before = cursor.before_current.clone();
            cursor.pending.push_back(Pending {
                seq,
                before,
                confirmed: false,
            });
            seq
        };
        let mut data = ObjectData {
            bucket: bucket.clone(),
            key: entry.key.clone(),
            size: Some(entry.size),
            etag: Some(entry.etag.clone()).filter(|e| !e.is_empty()),
            content_type: None,
            version_id: None,
            last_modified: time_of(entry.modified).map(|t| crate::cloudevent::format_time(&t)),
            body: None,
            body_base64: None,
        };
        if !removed {
            self.describe_object(&mut data).await?;
        }
        let version = data
            .version_id
            .clone()
            .filter(|v| v != "null")
            .unwrap_or_else(|| entry.etag.clone());
        let mut id = format!("{bucket}/{}@{version}", entry.key);
        if removed {
            id.push_str("#removed");
        }
        let payload = Bytes::from(serde_json::to_vec(&data).expect("serializable"));
        let meta = Metadata {
            subject: Some(entry.key.clone()),
            headers: Vec::new(),
            content_type: Some("application/json".into()),
            time: if removed {
                None
            } else {
                time_of(entry.modified)
            },
            id: Some(id),
            source_uri: format!("s3://{bucket}"),
            extensions: Vec::new(),
            received: Utc::now(),
            default_type: Some(if removed {
                self.spec.removed_type.clone()
            } else {
                self.spec.created_type.clone()
            }),
            no_data: false,
        };
        Ok(Incoming {
            payload,
            meta,
            ack: Box::new(S3Ack {
                cursor: self.cursor.clone(),
                notify: self.notify.clone(),
                seq,
            }),
        })
    }

    /// Content type and version from HEAD, and the body when it is small enough.
    async fn describe_object(&self, data: &mut ObjectData) -> Result<(), SourceError> {
        let head = self
            .client
            .head_object()
            .bucket(&data.bucket)
            .key(&data.key)
            .send()
            .await;
        let head = match head {
            Ok(head) => head,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                // Gone since the listing: the next poll sees the removal.
                return Ok(());
            }
            Err(e) => {
                return Err(Self::fail(format!(
                    "HEAD {}: {}",
                    data.key,
                    DisplayErrorContext(&e)
                )));
            }
        };
        data.content_type = head.content_type().map(str::to_owned);
        data.version_id = head.version_id().map(str::to_owned);
        let size = head.content_length().unwrap_or(0);
        if self.spec.inline_max_bytes > 0 && (size as u64) <= self.spec.inline_max_bytes {
            let object = self
                .client
                .get_object()
                .bucket(&data.bucket)
                .key(&data.key)
                .send()
                .await;
            let Ok(object) = object else {
                return Ok(());
            };
            // The object may have grown since the HEAD: the bound holds on the stream.
            let limit = usize::try_from(self.spec.inline_max_bytes).unwrap_or(usize::MAX);
            let mut stream = object.body;
            let mut body = Vec::with_capacity((size.max(0) as usize).min(limit));
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| Self::fail(format!("GET {}: {e}", data.key)))?
            {
                if body.len() + chunk.len() > limit {
                    tracing::warn!(key = %data.key, limit, "the object grew past inline_max_bytes after its HEAD; sent without its body");
                    return Ok(());
                }
                body.extend_from_slice(&chunk);
            }
            inline_body(data, &body);
        }
        Ok(())
    }
}

#[async_trait]
impl Source for S3Source {
    async fn next(&mut self) -> Result<Incoming, SourceError> {
        loop {
            if self.poll.is_none() {
                tokio::time::sleep_until(self.next_poll).await;
                self.next_poll = tokio::time::Instant::now() + self.spec.poll_interval;
                self.start_poll()?;
            }
            match self.next_change().await? {
                Some(change) => return self.incoming(change).await,
                None => self.finish_poll().await?,
            }
        }
    }
}
