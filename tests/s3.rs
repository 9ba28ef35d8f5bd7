//! `kind = "s3"` against moto's S3 server on 127.0.0.1:9000 (scripts/brokers.sh moto),
//! with aws-sdk-s3 as the independent client that writes the objects.
#![cfg(feature = "s3")]

mod common;

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use common::conformance::{SourceUnderTest, conformance_suite};
use common::poison::{self, Carries, PoisonMessage, Sent};
use common::proxy::Proxy;
use common::{AMQP_URL, Daemon, Rabbit, Received, config_text, eventually, unique};
use serde_json::Value;

const ENDPOINT: &str = "http://127.0.0.1:9000";

fn client() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(ENDPOINT)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A new bucket, unique to the test. Fails when moto is not running.
async fn bucket(s3: &aws_sdk_s3::Client) -> String {
    let name = unique("bkt").to_lowercase().replace('_', "-");
    let name: String = name.chars().take(63).collect();
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("moto S3 on 127.0.0.1:9000 (run scripts/brokers.sh moto)");
    name
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &str, ct: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type(ct)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .unwrap();
}

fn bridge_table(name: &str, bucket: &str, extra: &str) -> String {
    format!(
        r#"
[[bridge]]
name = "{name}"
kind = "s3"
bucket = "{bucket}"
endpoint_url = "{ENDPOINT}"
access_key_id = "test"
secret_access_key = "test"
poll_interval = "300ms"
{extra}
"#
    )
}

/// Starts the daemon with its own state_dir (in its temporary directory).
async fn start(exchange_url: &str, exchange: &str, bridges: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    Daemon::start_with_text(dir, exchange_url, exchange, |port| {
        config_text(exchange_url, exchange, port, bridges).replace(
            "[defaults]\n",
            &format!("[defaults]\nstate_dir = \"{}\"\n", state.display()),
        )
    })
    .await
}

fn keys(received: &[Received]) -> Vec<String> {
    let mut keys: Vec<String> = received
        .iter()
        .map(|r| r.json()["subject"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn created_objects_arrive_as_cloudevents_with_metadata() {
    let s3 = client();
    let bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    put(
        &s3,
        &bucket,
        "docs/a b+c.json",
        r#"{"x":1}"#,
        "application/json",
    )
    .await;
    put(&s3, &bucket, "docs/readme.txt", "hello", "text/plain").await;
    let daemon = start(
        AMQP_URL,
        &exchange,
        &bridge_table(&bridge, &bucket, "inline_max_bytes = 100"),
    )
    .await;
    let received = rabbit
        .take_exactly(&queue, 2, Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), 2, "log: {}", daemon.log());
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key("docs/a b+c.json")
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap().trim_matches('"').to_owned();
    let event = received
        .iter()
        .map(Received::json)
        .find(|e| e["subject"] == "docs/a b+c.json")
        .expect("event for the JSON object");
    assert_eq!(event["type"], "com.amazonaws.s3.ObjectCreated");
    assert_eq!(event["source"], format!("s3://{bucket}"));
    assert_eq!(event["id"], format!("{bucket}/docs/a b+c.json@{etag}"));
    assert_eq!(event["datacontenttype"], "application/json");
    let data = &event["data"];
    assert_eq!(data["bucket"], Value::String(bucket.clone()));
    assert_eq!(data["key"], "docs/a b+c.json");
    assert_eq!(data["size"], 7);
    assert_eq!(data["etag"], Value::String(etag));
    assert_eq!(data["content_type"], "application/json");
    assert_eq!(data["body"], serde_json::json!({"x": 1}));
    let modified = head.last_modified().unwrap().to_millis().unwrap();
    let time = chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
    assert_eq!(
        time.timestamp_millis(),
        modified,
        "time is the last-modified time"
    );
    let text = received
        .iter()
        .map(Received::json)
        .find(|e| e["subject"] == "docs/readme.txt")
        .unwrap();
    assert_eq!(text["data"]["body"], "hello");
    assert_eq!(text["data"]["content_type"], "text/plain");
}

#[tokio::test]
async fn filters_changes_and_removals() {
    let s3 = client();
    let bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let daemon = start(
        AMQP_URL,
        &exchange,
        &bridge_table(
            &bridge,
            &bucket,
            "prefix = \"in/\"\nsuffix = \".csv\"\nremoved = true",
        ),
    )
    .await;
    put(&s3, &bucket, "in/one.csv", "1", "text/csv").await;
    put(&s3, &bucket, "in/two.txt", "2", "text/plain").await;
    put(&s3, &bucket, "out/three.csv", "3", "text/csv").await;
    let received = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(keys(&received), ["in/one.csv"], "log: {}", daemon.log());
    let first_id = received[0].json()["id"].clone();

    put(&s3, &bucket, "in/one.csv", "1 changed", "text/csv").await;
    let changed = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(keys(&changed), ["in/one.csv"]);
    let changed = changed[0].json();
    assert_eq!(changed["type"], "com.amazonaws.s3.ObjectCreated");
    assert_ne!(changed["id"], first_id, "a new ETag is a new event");
    assert_eq!(changed["data"]["size"], 9);

    s3.delete_object()
        .bucket(&bucket)
        .key("in/one.csv")
        .send()
        .await
        .unwrap();
    let removed = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(removed.len(), 1);
    let removed = removed[0].json();
    assert_eq!(removed["type"], "com.amazonaws.s3.ObjectRemoved");
    assert_eq!(removed["subject"], "in/one.csv");
    assert_eq!(removed["data"]["key"], "in/one.csv");
}

#[tokio::test]
async fn restart_publishes_nothing_twice_and_misses_nothing() {
    let s3 = client();
    let bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    for n in 0..5 {
        put(&s3, &bucket, &format!("k{n:02}"), "x", "text/plain").await;
    }
    // A small page size, so the listing is paginated.
    let mut daemon = start(
        AMQP_URL,
        &exchange,
        &bridge_table(&bridge, &bucket, "page_size = 2"),
    )
    .await;
    let first = rabbit
        .take_exactly(&queue, 5, Duration::from_secs(20))
        .await;
    assert_eq!(first.len(), 5, "log: {}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
    for n in 5..8 {
        put(&s3, &bucket, &format!("k{n:02}"), "x", "text/plain").await;
    }
    daemon.restart().await;
    let second = rabbit
        .take_exactly(&queue, 3, Duration::from_secs(20))
        .await;
    assert_eq!(
        keys(&second),
        ["k05", "k06", "k07"],
        "only objects written while down; log: {}",
        daemon.log()
    );
    // SIGKILL too: the cursor on disk is consistent.
    daemon.kill();
    put(&s3, &bucket, "k08", "x", "text/plain").await;
    daemon.restart().await;
    let third = rabbit
        .take_exactly(&queue, 1, Duration::from_secs(20))
        .await;
    assert_eq!(keys(&third), ["k08"], "log: {}", daemon.log());
}

#[tokio::test]
async fn exchange_outage_keeps_the_cursor_and_everything_arrives() {
    let s3 = client();
    let bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let daemon = start(
        &proxy.amqp_url(),
        &exchange,
        &bridge_table(&bridge, &bucket, ""),
    )
    .await;
    daemon.wait_ready().await;
    proxy.cut();
    eventually(Duration::from_secs(10), "exchange seen down", || {
        daemon.metrics().get("bridge_exchange_up", &[]) == Some(0.0)
    })
    .await;
    for n in 0..6 {
        put(&s3, &bucket, &format!("o{n}"), "x", "text/plain").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let index = daemon.dir.path().join(format!("state/s3/{bridge}.index"));
    let indexed = std::fs::read_to_string(&index).unwrap_or_default();
    assert!(
        !indexed.contains("\"o0\""),
        "the cursor does not advance while the exchange is down: {indexed}"
    );
    proxy.restore();
    let received = rabbit
        .take_exactly(&queue, 6, Duration::from_secs(30))
        .await;
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "log: {}", daemon.log());
    assert_eq!(keys(&received), ["o0", "o1", "o2", "o3", "o4", "o5"]);
    eventually(Duration::from_secs(10), "cursor advanced", || {
        std::fs::read_to_string(&index).is_ok_and(|t| t.contains("\"o5\""))
    })
    .await;
}

#[tokio::test]
async fn killed_between_publish_and_confirm_publishes_again_with_the_same_id() {
    let s3 = client();
    let bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut daemon = start(
        &proxy.amqp_url(),
        &exchange,
        &bridge_table(&bridge, &bucket, ""),
    )
    .await;
    daemon.wait_ready().await;
    proxy.drop_replies();
    put(&s3, &bucket, "report.pdf", "%PDF", "application/pdf").await;
    let first = rabbit.take(&queue, 1, Duration::from_secs(20)).await;
    assert_eq!(
        first.len(),
        1,
        "published (unconfirmed); log: {}",
        daemon.log()
    );
    daemon.kill();
    // The proxy's connections die with the daemon; the new ones answer again.
    proxy.restore();
    daemon.restart().await;
    let again = rabbit.take(&queue, 1, Duration::from_secs(20)).await;
    assert_eq!(again.len(), 1, "published again; log: {}", daemon.log());
    assert_eq!(again[0].json()["id"], first[0].json()["id"]);
    assert_eq!(again[0].json()["subject"], "report.pdf");
}

// ---- Edited source settings (issue 21) ----
//
// The cursor holds every object this bridge has published, by key. An edit of `prefix`
// or `suffix` keeps it: what is newly in scope and was never published is published,
// nothing already published comes again, and objects the new filter leaves out stay in
// the bucket (published should a later filter include them). Another `bucket` starts
// afresh: every object of the new bucket is published.

/// How an edit of the bridge's table reaches the daemon.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// The config file is rewritten while the daemon runs.
    Reload,
    /// The daemon is stopped (SIGTERM), the file rewritten, the daemon started again.
    Restart,
}

/// The whole config text, with the test's state_dir (as `start` writes it).
fn config_with_state(daemon: &Daemon, bridges: &str) -> String {
    let state = daemon.dir.path().join("state");
    config_text(
        &daemon.exchange_url,
        &daemon.exchange,
        daemon.admin_port,
        bridges,
    )
    .replace(
        "[defaults]\n",
        &format!("[defaults]\nstate_dir = \"{}\"\n", state.display()),
    )
}

/// Applies `bridges` by reload or restart; returns once the edited bridge runs again.
async fn edit(daemon: &mut Daemon, how: Edit, bridge: &str, bridges: &str) {
    let text = config_with_state(daemon, bridges);
    let write = |daemon: &Daemon| {
        // Write then rename, as editors and config management do.
        let temporary = daemon.dir.path().join("broker-bridge.toml.new");
        std::fs::write(&temporary, &text).unwrap();
        std::fs::rename(&temporary, &daemon.config_path).unwrap();
    };
    match how {
        Edit::Reload => {
            let restarts = |d: &Daemon| {
                d.bridge_status(bridge)
                    .and_then(|b| b["counters"]["restarts"].as_u64())
                    .unwrap_or(0)
            };
            let before = restarts(daemon);
            write(daemon);
            eventually(
                Duration::from_secs(20),
                "the edited bridge restarted",
                || restarts(daemon) > before,
            )
            .await;
        }
        Edit::Restart => {
            assert_eq!(daemon.terminate(), Some(0));
            write(daemon);
            daemon.restart().await;
        }
    }
    daemon.wait_running(bridge).await;
}

/// A bridge that polls once when it starts and then only every hour: objects written
/// after its first poll stay pending until the edit restarts it.
fn rare_poll_table(name: &str, bucket: &str, extra: &str) -> String {
    bridge_table(name, bucket, extra).replace("poll_interval = \"300ms\"", "poll_interval = \"1h\"")
}

/// `created <key>` / `removed <key>` of each event, sorted.
fn changes(received: &[Received]) -> Vec<String> {
    let mut out: Vec<String> = received
        .iter()
        .map(|r| {
            let event = r.json();
            let what = match event["type"].as_str().unwrap() {
                "com.amazonaws.s3.ObjectRemoved" => "removed",
                _ => "created",
            };
            format!("{what} {}", event["subject"].as_str().unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Waits for exactly `expected` (see `changes`), then 2s more in which nothing else
/// may arrive. The bridge polls every hour, so after the edit there is one poll: what
/// it did not publish, it does not publish later either.
async fn expect_changes(
    rabbit: &Rabbit,
    queue: &str,
    expected: &[&str],
    daemon: &Daemon,
    what: &str,
) -> Vec<Received> {
    let mut received = rabbit
        .take(queue, expected.len(), Duration::from_secs(20))
        .await;
    received.extend(rabbit.take(queue, 1, Duration::from_secs(2)).await);
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        changes(&received),
        expected,
        "{what}; log: {}",
        daemon.log()
    );
    received
}

async fn delete(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
}

/// Which filter key a scenario edits, and object names in and out of its narrow value.
#[derive(Debug, Clone, Copy)]
enum Filter {
    Prefix,
    Suffix,
}

impl Filter {
    fn key(self) -> &'static str {
        match self {
            Filter::Prefix => "prefix",
            Filter::Suffix => "suffix",
        }
    }
    /// The narrow value; the wide one is "" (everything).
    fn narrow(self) -> &'static str {
        match self {
            Filter::Prefix => "in/",
            Filter::Suffix => ".csv",
        }
    }
    /// A key the narrow filter includes.
    fn inside(self, name: &str) -> String {
        match self {
            Filter::Prefix => format!("in/{name}"),
            Filter::Suffix => format!("{name}.csv"),
        }
    }
    /// A key the narrow filter leaves out.
    fn outside(self, name: &str) -> String {
        match self {
            Filter::Prefix => format!("out/{name}"),
            Filter::Suffix => format!("{name}.txt"),
        }
    }
}

/// Narrow, widen, narrow, widen again, with objects pending (written or removed but
/// not published yet) at every edit. Accounting at each step: every pending object in
/// the new scope is published after the edit; one outside it stays in the bucket and is
/// published when a later edit includes it; nothing is published twice.
async fn filter_edits_keep_the_cursor(filter: Filter, how: Edit) {
    let s3 = client();
    let bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    let table = |value: &str| {
        rare_poll_table(
            &bridge,
            &bucket,
            &format!("{} = \"{value}\"\nremoved = true", filter.key()),
        )
    };
    let (a, b, c, d) = (
        filter.inside("a"),
        filter.inside("b"),
        filter.inside("c"),
        filter.inside("d"),
    );
    let (x, y, z) = (
        filter.outside("x"),
        filter.outside("y"),
        filter.outside("z"),
    );
    for key in [&a, &b, &x] {
        put(&s3, &bucket, key, "1", "text/plain").await;
    }
    let mut daemon = start(AMQP_URL, &exchange, &table(filter.narrow())).await;
    let first = expect_changes(
        &rabbit,
        &queue,
        &[&format!("created {a}"), &format!("created {b}")],
        &daemon,
        "the first poll, narrow",
    )
    .await;
    let index = daemon.dir.path().join(format!("state/s3/{bridge}.index"));
    eventually(Duration::from_secs(10), "the first poll finished", || {
        std::fs::read_to_string(&index).is_ok_and(|t| t.contains(&format!("\"{b}\"")))
    })
    .await;

    // Widen. Pending: c created (in both scopes), y created (only in the new one), a
    // removed. Already published and unchanged: b. Never published, now in scope: x.
    put(&s3, &bucket, &c, "1", "text/plain").await;
    put(&s3, &bucket, &y, "1", "text/plain").await;
    delete(&s3, &bucket, &a).await;
    edit(&mut daemon, how, &bridge, &table("")).await;
    expect_changes(
        &rabbit,
        &queue,
        &[
            &format!("removed {a}"),
            &format!("created {c}"),
            &format!("created {x}"),
            &format!("created {y}"),
        ],
        &daemon,
        "widened: what is newly in scope, the pending removal, and not b again",
    )
    .await;
    assert!(
        daemon.log().contains("filter changed"),
        "the edit is logged: {}",
        daemon.log()
    );

    // Narrow. Pending: d (in scope) and z (left out by the new filter).
    put(&s3, &bucket, &d, "1", "text/plain").await;
    put(&s3, &bucket, &z, "1", "text/plain").await;
    edit(&mut daemon, how, &bridge, &table(filter.narrow())).await;
    expect_changes(
        &rabbit,
        &queue,
        &[&format!("created {d}")],
        &daemon,
        "narrowed: the pending d only; b and c are not published again",
    )
    .await;

    // Widen again: z, still in the bucket, is published now; x and y, published while
    // they were in scope, are not published again.
    edit(&mut daemon, how, &bridge, &table("")).await;
    expect_changes(
        &rabbit,
        &queue,
        &[&format!("created {z}")],
        &daemon,
        "widened again: z only",
    )
    .await;
    // b's event of the first poll was its only one.
    assert!(first.iter().any(|r| {
        r.json()["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{bucket}/{b}@"))
    }));
}

#[tokio::test]
async fn prefix_edits_on_reload_publish_what_is_newly_in_scope_and_nothing_twice() {
    filter_edits_keep_the_cursor(Filter::Prefix, Edit::Reload).await;
}

#[tokio::test]
async fn prefix_edits_across_a_restart_publish_what_is_newly_in_scope_and_nothing_twice() {
    filter_edits_keep_the_cursor(Filter::Prefix, Edit::Restart).await;
}

#[tokio::test]
async fn suffix_edits_on_reload_publish_what_is_newly_in_scope_and_nothing_twice() {
    filter_edits_keep_the_cursor(Filter::Suffix, Edit::Reload).await;
}

#[tokio::test]
async fn suffix_edits_across_a_restart_publish_what_is_newly_in_scope_and_nothing_twice() {
    filter_edits_keep_the_cursor(Filter::Suffix, Edit::Restart).await;
}

/// Another bucket starts afresh: every object in it is published, none skipped. The
/// object left pending in the old bucket is reported by the log line and published when
/// the bridge is pointed at that bucket again, together with the objects published
/// before (again, with their ids: the cursor holds one bucket, as documented).
async fn a_bucket_edit_starts_afresh(how: Edit) {
    let s3 = client();
    let first_bucket = bucket(&s3).await;
    let second_bucket = bucket(&s3).await;
    let rabbit = Rabbit::connect().await;
    let exchange = unique("ex");
    let bridge = unique("b");
    let queue = rabbit
        .bind(&exchange, &format!("event.acme.{bridge}.#"))
        .await;
    put(&s3, &first_bucket, "a1", "1", "text/plain").await;
    put(&s3, &first_bucket, "a2", "1", "text/plain").await;
    put(&s3, &second_bucket, "b1", "1", "text/plain").await;
    let mut daemon = start(
        AMQP_URL,
        &exchange,
        &rare_poll_table(&bridge, &first_bucket, ""),
    )
    .await;
    let first = expect_changes(
        &rabbit,
        &queue,
        &["created a1", "created a2"],
        &daemon,
        "the first bucket",
    )
    .await;
    let index = daemon.dir.path().join(format!("state/s3/{bridge}.index"));
    eventually(Duration::from_secs(10), "the first poll finished", || {
        std::fs::read_to_string(&index).is_ok_and(|t| t.contains("\"a2\""))
    })
    .await;

    // Pending: a3 in the first bucket, b2 in the second.
    put(&s3, &first_bucket, "a3", "1", "text/plain").await;
    put(&s3, &second_bucket, "b2", "1", "text/plain").await;
    edit(
        &mut daemon,
        how,
        &bridge,
        &rare_poll_table(&bridge, &second_bucket, ""),
    )
    .await;
    let second = expect_changes(
        &rabbit,
        &queue,
        &["created b1", "created b2"],
        &daemon,
        "the second bucket: every object in it",
    )
    .await;
    assert!(
        second
            .iter()
            .all(|r| r.json()["source"] == format!("s3://{second_bucket}"))
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("cursor is for bucket `{first_bucket}`")),
        "the bucket change is reported: {log}"
    );

    edit(
        &mut daemon,
        how,
        &bridge,
        &rare_poll_table(&bridge, &first_bucket, ""),
    )
    .await;
    let back = expect_changes(
        &rabbit,
        &queue,
        &["created a1", "created a2", "created a3"],
        &daemon,
        "back on the first bucket: a3 at last, a1 and a2 again",
    )
    .await;
    let ids = |received: &[Received], key: &str| -> Vec<Value> {
        received
            .iter()
            .map(Received::json)
            .filter(|e| e["subject"] == key)
            .map(|e| e["id"].clone())
            .collect()
    };
    for key in ["a1", "a2"] {
        assert_eq!(ids(&back, key), ids(&first, key), "{key} again, same id");
    }
}

#[tokio::test]
async fn a_bucket_edit_on_reload_publishes_every_object_of_the_new_bucket() {
    a_bucket_edit_starts_afresh(Edit::Reload).await;
}

#[tokio::test]
async fn a_bucket_edit_across_a_restart_publishes_every_object_of_the_new_bucket() {
    a_bucket_edit_starts_afresh(Edit::Restart).await;
}

/// A bucket as the conformance checks and the poison corpus drive it: each message
/// becomes an object, under the message's id as its key when it has one.
struct Objects {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Objects {
    async fn new() -> Objects {
        let s3 = client();
        let bucket = bucket(&s3).await;
        Objects { s3, bucket }
    }

    /// Writes an object; returns its ETag (without quotes).
    async fn put_object(&self, key: &str, body: &[u8], content_type: Option<&str>) -> String {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(content_type.map(str::to_owned))
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap();
        let head = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        head.e_tag().unwrap().trim_matches('"').to_owned()
    }
}

impl SourceUnderTest for Objects {
    fn kind(&self) -> &'static str {
        "s3"
    }
    fn at_least_once(&self) -> bool {
        true
    }
    fn bridge_keys(&self) -> String {
        format!(
            "bucket = \"{}\"\nendpoint_url = \"{ENDPOINT}\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\npoll_interval = \"300ms\"\ninline_max_bytes = 262144",
            self.bucket
        )
    }
    fn subject(&self) -> String {
        "poison/".into()
    }
    /// Writes an object; a JSON payload as `application/json`, as a client would label
    /// it, so that the event inlines it as JSON (`payload_in`).
    async fn send(&self, payload: &[u8], _headers: &[(&str, &str)]) {
        let content_type = serde_json::from_slice::<Value>(payload)
            .is_ok()
            .then_some("application/json");
        self.put_object(
            &format!("poison/{}", unique("object")),
            payload,
            content_type,
        )
        .await;
    }
    fn data_is_not_the_payload(&self) -> Option<&'static str> {
        Some(
            "an event describes the object (key, size, ETag, the body inlined as JSON, text or base64): the bytes written are not its data, and a body that is not JSON is described, not dead-lettered (the poison corpus covers descriptions over max_message_bytes)",
        )
    }
    fn payload_in<'e>(&self, event: &'e Value) -> &'e Value {
        &event["data"]["body"]
    }
    fn carries(&self) -> Carries {
        Carries {
            // The key makes the id (`<bucket>/<key>@<etag>`); S3 keys hold at most 1024
            // bytes.
            max_id: 1024,
            // Objects have no headers the bridge reads: only their content type, which
            // goes into `data`.
            content_type_is_object_metadata: true,
            describes_objects: true,
            ..Default::default()
        }
    }
    async fn send_poison(&self, message: &PoisonMessage) -> Sent {
        let key = message
            .id
            .clone()
            .unwrap_or_else(|| format!("poison/{}", unique("object")));
        let etag = self
            .put_object(&key, &message.payload, message.content_type.as_deref())
            .await;
        Sent {
            transport_id: Some(format!("{}/{key}@{etag}", self.bucket)),
            subject: Some(key),
            ..Default::default()
        }
    }
}

// The shared contract (tests/common/conformance.rs), with the objects' inlined bodies as
// the messages.
conformance_suite!(Objects::new().await);

/// The poison corpus (issue 13) through object keys and metadata: keys that make the
/// derived id longer than 255 bytes (published under a `sha256:` id with `originalid`),
/// keys with `#`, `*`, `.` and spaces, a content type of 300 bytes, empty objects and
/// control bytes. After a restart the cursor publishes nothing again.
#[tokio::test]
async fn poison_corpus_is_published_or_dead_lettered() {
    let objects = Objects::new().await;
    let mut run = poison::poison_corpus(&objects).await;
    run.restart_delivers_nothing().await;
}
