//! `kind = "s3"`: polls one bucket (AWS S3, MinIO, moto, any S3-compatible store) and
//! publishes an event for every object created, changed (new ETag) or, with
//! `removed = true`, removed (gone from the listing).
//!
//! # The cursor
//!
//! The cursor is an index of `key -> (etag, size, last-modified)` for every object seen,
//! kept in `<state_dir>/s3/<bridge>.index` as one JSON line per object, **sorted by key**
//! in UTF-8 byte order: the order `ListObjectsV2` returns keys in. A poll is a merge-join
//! of two sorted streams, the paginated listing and the index read line by line:
//!
//! - a key only in the listing is *created*; a key in both with another ETag is
//!   *changed*; a key only in the index is *removed*; anything else is unchanged;
//! - the new index is written, in the same order, to `<bridge>.index.next` as the
//!   join goes.
//!
//! Memory is therefore bounded by design: one listing page (`page_size` keys, at most
//! 1000), one index line, and the in-flight window (at most `max_in_flight` events the
//! bridge has not acknowledged yet, each holding its key). The number of objects in the
//! bucket only changes how long a poll takes and the size of the files.
//!
//! The cursor advances only after the publisher confirm: the acker of an event marks it
//! confirmed, and the *watermark* (the greatest key such that every event of a key up to
//! it is confirmed) is written atomically (`state_file`) to `<bridge>.progress`.
//! After a crash or restart, the effective index is `index.next` up to the watermark
//! followed by `index` past it, so confirmed events are not published again, and an
//! event that was published but not confirmed is published again with the same id
//! (`<bucket>/<key>@<etag>`). When a poll ends and every event is confirmed,
//! `index.next` atomically replaces `index`. Objects written while the daemon was down
//! are simply not in the index, so the next poll publishes them.
//!
//! Every file is replaced as `state_file` does (fsync, rename, fsync of the directory),
//! so a crash or power loss leaves the old version or the new one.
//!
//! # Edited filters and buckets
//!
//! The index is a record of what this bridge published, so an edit of `prefix` or
//! `suffix` (reload or restart) keeps it. Its first line records the bucket and filters
//! it was written for; entries outside the current filter are carried over unchanged
//! (neither published nor reported removed). Hence, after the edit:
//!
//! - an object in the new scope that was never published (or changed since) is
//!   published; one published before and unchanged is not published again;
//! - an object the new filter leaves out is not published and stays in the bucket: a
//!   later filter that includes it again publishes it then (and not the objects
//!   published before, which the index still holds);
//! - with `removed = true`, a removal pending at the edit is published when the object
//!   is in the new scope.
//!
//! Another `bucket` is another set of objects: the index of the old bucket is set aside
//! (logged) and the bridge starts afresh, publishing every object of the new bucket in
//! scope. Pointed back at the old bucket later, it starts afresh there too: every object
//! is published again, with the same ids (`<bucket>/<key>@<etag>`).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::common::context::{ConnectContext, Source};
use crate::config::TlsOptions;
use crate::config::{duration, fields};
use crate::message::{Acker, Incoming, Metadata, SourceError};
use crate::s3notification::{ObjectData, clean_etag, inline_body};
use crate::secret::Secret;

/// `kind = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    /// The bucket to poll (one per bridge).
    pub bucket: String,
    /// Only keys starting with this (sent to the store as the listing prefix).
    #[serde(default)]
    pub prefix: String,
    /// Only keys ending with this (filtered here).
    #[serde(default)]
    pub suffix: String,
    /// `http://127.0.0.1:9000` for MinIO, moto...; default: AWS.
    pub endpoint_url: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`host/bucket/key`); default: true with `endpoint_url`.
    pub path_style: Option<bool>,
    /// Static credentials; without them, the standard AWS credential chain.
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub tls: Option<TlsOptions>,
    #[serde(default = "default_poll_interval", with = "duration")]
    pub poll_interval: Duration,
    /// Publish an event for objects gone from the listing.
    #[serde(default)]
    pub removed: bool,
    /// CloudEvent type of created and changed objects (unless `type` is set).
    #[serde(default = "default_created_type")]
    pub created_type: String,
    /// CloudEvent type of removed objects (unless `type` is set).
    #[serde(default = "default_removed_type")]
    pub removed_type: String,
    /// Objects up to this size travel inline in `data.body`; 0 never.
    #[serde(default)]
    pub inline_max_bytes: u64,
    /// Keys per listing request (1..=1000).
    #[serde(default = "default_page_size")]
    pub page_size: i32,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_created_type() -> String {
    "com.amazonaws.s3.ObjectCreated".into()
}
fn default_removed_type() -> String {
    "com.amazonaws.s3.ObjectRemoved".into()
}
fn default_page_size() -> i32 {
    1000
}

impl S3Spec {
    pub fn parse(table: Map<String, Value>) -> Result<Self, String> {
        fields::reject_unknown(&table, fields::names::<S3Spec>(), "kind `s3`")?;
        let spec: S3Spec = fields::parse(Value::Object(table))?;
        if spec.bucket.is_empty() {
            return Err("key `bucket`: must not be empty".into());
        }
        if !(1..=1000).contains(&spec.page_size) {
            return Err("key `page_size`: must be between 1 and 1000".into());
        }
        if spec.access_key_id.is_some() != spec.secret_access_key.is_some() {
            return Err(
                "keys `access_key_id`/`secret_access_key`: set both, or neither for the AWS credential chain"
                    .into(),
            );
        }
        if spec.session_token.is_some() && spec.access_key_id.is_none() {
            return Err("key `session_token`: needs `access_key_id` too".into());
        }
        if spec.poll_interval.is_zero() {
            return Err("key `poll_interval`: must be more than 0".into());
        }
        if let Some(tls) = &spec.tls
            && (tls.cert_file.is_some() || tls.key_file.is_some())
        {
            return Err("key `tls`: client certificates are not supported by kind `s3`".into());
        }
        Ok(spec)
    }

    pub fn describe(&self) -> String {
        format!(
            "bucket `{}`{} on {}, polled every {:?}; at-least-once: the cursor advances after the exchange confirmed",
            self.bucket,
            if self.prefix.is_empty() {
                String::new()
            } else {
                format!(" (prefix `{}`)", self.prefix)
            },
            self.endpoint_url.as_deref().unwrap_or("AWS"),
            self.poll_interval
        )
    }
}

fn accepted_keys() -> Vec<&'static str> {
    fields::names::<S3Spec>().to_vec()
}

/// `kind = "s3"`: a bucket, polled.
pub struct S3;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for S3 {
    const NAME: &'static str = "s3";
    const SECRET_KEYS: &'static [&'static str] =
        &["access_key_id", "secret_access_key", "session_token"];
    type Spec = S3Spec;

    fn parse(table: Map<String, Value>) -> Result<S3Spec, String> {
        S3Spec::parse(table)
    }

    fn accepted_keys() -> Vec<&'static str> {
        accepted_keys()
    }

    fn describe(spec: &S3Spec) -> String {
        spec.describe()
    }

    fn subject_separator(_: &S3Spec) -> Option<char> {
        Some('/')
    }

    async fn connect(
        spec: &S3Spec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        connect(spec, context).await
    }
}

/// One line of the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    key: String,
    etag: String,
    size: i64,
    /// Unix milliseconds.
    modified: i64,
}

/// The first line of every index file. Entries of another bucket are not read (the
/// bridge starts afresh); entries written under other filters are (see "Edited filters
/// and buckets").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    bucket: String,
    prefix: String,
    suffix: String,
}

impl Header {
    /// Whether the filters select `key`.
    fn selects(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && key.ends_with(&self.suffix)
    }
}

/// The header of the cursor a bridge left: of its index, or of the first poll it did
/// not finish. `Some(None)`: a file without a readable header.
fn previous_header(files: &Files) -> Result<Option<Option<Header>>, SourceError> {
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
fn log_edit(previous: Option<Option<Header>>, header: &Header) {
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
struct Files {
    index: PathBuf,
    next: PathBuf,
    progress: PathBuf,
}

impl Files {
    fn new(state_dir: &Path, bridge: &str) -> Files {
        let dir = state_dir.join("s3");
        Files {
            index: dir.join(format!("{bridge}.index")),
            next: dir.join(format!("{bridge}.index.next")),
            progress: dir.join(format!("{bridge}.progress")),
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SourceError {
    SourceError::Connect(format!("cursor: cannot {what} {}: {e}", path.display()))
}

/// Reads an index file line by line.
struct IndexReader {
    lines: Option<std::io::Lines<BufReader<std::fs::File>>>,
    path: PathBuf,
}

impl IndexReader {
    /// Opens `path`; a missing file, or one for another bucket, reads empty. A file
    /// written under other filters is read: its entries are what the bridge published.
    fn open(path: &Path, header: &Header) -> Result<IndexReader, SourceError> {
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

    fn next_entry(&mut self) -> Result<Option<Entry>, SourceError> {
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

fn write_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// After a restart: folds an unfinished poll (`index.next` up to the watermark, `index`
/// past it) into `index`.
fn recover(files: &Files, header: &Header) -> Result<(), SourceError> {
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
        super::common::state_file::replace(&tmp, &files.index)
            .map_err(|e| io_error("write", &files.index, e))?;
        tracing::info!(%watermark, "cursor recovered from an unfinished poll");
    }
    let _ = std::fs::remove_file(&files.next);
    let _ = std::fs::remove_file(&files.progress);
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    watermark: Option<String>,
}

/// An event handed to the bridge and not yet confirmed.
struct Pending {
    seq: u64,
    /// The key the join passed just before this event's key: while this is the oldest
    /// unconfirmed event, keys up to `before` are settled.
    before: Option<String>,
    confirmed: bool,
}

/// What the source and its ackers share.
struct Cursor {
    files: Files,
    /// Set when a newer connection of the same bridge took over: acks do nothing.
    abandoned: bool,
    next: Option<BufWriter<std::fs::File>>,
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// The last key the join has passed (index.next is complete up to it).
    processed: Option<String>,
    /// The key the join passed before the current one.
    before_current: Option<String>,
    /// The watermark last written to the progress file.
    written: Option<String>,
}

impl Cursor {
    fn watermark(&self) -> Option<String> {
        match self.pending.front() {
            Some(front) => front.before.clone(),
            None => self.processed.clone(),
        }
    }

    fn confirm(&mut self, seq: u64) -> std::io::Result<()> {
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
            super::common::state_file::write_atomically(&self.files.progress, &progress)?;
            self.written = watermark;
        }
        Ok(())
    }
}

/// One cursor per bridge and state directory in this process, so a reconnect can
/// retire the previous connection's acks before it recovers the files.
static CURSORS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<Cursor>>>>> =
    LazyLock::new(Default::default);

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

/// A listed object, as the join sees it.
struct Listed {
    entry: Entry,
}

/// Where a poll stands.
struct Poll {
    old: IndexReader,
    old_head: Option<Entry>,
    page: VecDeque<Listed>,
    token: Option<String>,
    listing_done: bool,
    last_listed: Option<String>,
}

struct S3Source {
    spec: S3Spec,
    client: Client,
    header: Header,
    cursor: Arc<Mutex<Cursor>>,
    notify: Arc<Notify>,
    poll: Option<Poll>,
    next_poll: tokio::time::Instant,
}

pub async fn connect(
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

async fn client(spec: &S3Spec) -> Result<Client, SourceError> {
    let region = Region::new(spec.region.clone());
    let mut builder = match (&spec.access_key_id, &spec.secret_access_key) {
        (Some(id), Some(secret)) => aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(Credentials::new(
                id.expose(),
                secret.expose(),
                spec.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "broker-bridge",
            )),
        _ => {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .region(region)
                .load()
                .await;
            aws_sdk_s3::config::Builder::from(&shared)
        }
    };
    if let Some(url) = &spec.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    if let Some(tls) = &spec.tls {
        if tls.required
            && !spec
                .endpoint_url
                .as_deref()
                .is_none_or(|u| u.starts_with("https://"))
        {
            return Err(SourceError::Connect(
                "tls.required: endpoint_url is not https://".into(),
            ));
        }
        if let Some(ca) = &tls.ca_file {
            builder = builder.http_client(tls_client(ca)?);
        }
    }
    let config = builder
        .force_path_style(spec.path_style.unwrap_or(spec.endpoint_url.is_some()))
        // Many S3-compatible stores reject the newer default checksums.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(config))
}

fn tls_client(ca: &Path) -> Result<aws_sdk_s3::config::SharedHttpClient, SourceError> {
    use aws_smithy_http_client::tls;
    let pem = std::fs::read(ca)
        .map_err(|e| SourceError::Connect(format!("cannot read ca_file {}: {e}", ca.display())))?;
    let trust = tls::TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(pem);
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| SourceError::Connect(format!("ca_file {}: {e}", ca.display())))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

fn millis_of(time: Option<&aws_sdk_s3::primitives::DateTime>) -> i64 {
    time.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

fn time_of(millis: i64) -> Option<DateTime<Utc>> {
    (millis != 0)
        .then(|| Utc.timestamp_millis_opt(millis).single())
        .flatten()
}

enum Change {
    Created(Entry),
    Changed(Entry),
    Removed(Entry),
}

impl S3Source {
    fn fail(e: impl std::fmt::Display) -> SourceError {
        SourceError::Subscription(e.to_string())
    }

    fn start_poll(&mut self) -> Result<(), SourceError> {
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
    async fn next_change(&mut self) -> Result<Option<Change>, SourceError> {
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
    async fn finish_poll(&mut self) -> Result<(), SourceError> {
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
            super::common::state_file::replace(&files.next, &files.index)
                .map_err(|e| io_error("write", &files.index, e))?;
        }
        let _ = std::fs::remove_file(&files.progress);
        cursor.processed = None;
        cursor.written = None;
        self.poll = None;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
