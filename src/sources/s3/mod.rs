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

mod client;
mod cursor;
mod index;
mod listing;
mod source;
mod spec;

use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source};
use crate::config::fields;
use crate::message::SourceError;

pub use spec::S3Spec;

/// `kind = "s3"`: a bucket, polled.
pub struct S3;

#[async_trait::async_trait]
impl super::common::kind::SourceKind for S3 {
    const NAME: &'static str = "s3";
    const SECRET_KEYS: &'static [&'static str] =
        &["access_key_id", "secret_access_key", "session_token"];
    type Spec = S3Spec;

    fn parse(table: Map<String, Value>) -> Result<S3Spec, String> {
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

    fn accepted_keys() -> Vec<&'static str> {
        fields::names::<S3Spec>().to_vec()
    }

    fn describe(spec: &S3Spec) -> String {
        format!(
            "bucket `{}`{} on {}, polled every {:?}; at-least-once: the cursor advances after the exchange confirmed",
            spec.bucket,
            if spec.prefix.is_empty() {
                String::new()
            } else {
                format!(" (prefix `{}`)", spec.prefix)
            },
            spec.endpoint_url.as_deref().unwrap_or("AWS"),
            spec.poll_interval
        )
    }

    fn subject_separator(_: &S3Spec) -> Option<char> {
        Some('/')
    }

    async fn connect(
        spec: &S3Spec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        source::connect(spec, context).await
    }
}

#[cfg(test)]
mod tests;
