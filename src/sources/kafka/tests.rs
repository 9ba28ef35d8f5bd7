//! Unit tests of the Kafka kind: settings, in-order offsets, generations, the position
//! assessment, lag and the record mapping.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use rdkafka::TopicPartitionList;
use serde_json::Value;
use tokio::sync::watch;

use super::offsets::{Partitions, Statistics};
use super::position::{Assessment, LastRead, Standing, Survey, assess};
use super::Kafka;
use super::spec::{KafkaSpec, Security, Start};
use crate::sources::common::kind::SourceKind;
use super::stream::{Record, header_texts, metadata};
use crate::sources::common::in_order::Ticket;

fn parse(value: Value) -> Result<KafkaSpec, String> {
    Kafka::parse(value.as_object().unwrap().clone())
}

#[test]
fn defaults_read_a_local_broker_from_the_earliest_offset() {
    let spec = parse(serde_json::json!({"topics": ["orders", "^audit-.*"]})).unwrap();
    assert_eq!(spec.brokers, vec!["127.0.0.1:9092"]);
    assert_eq!(spec.start, Start::Earliest);
    assert_eq!(spec.security, Security::Plaintext);
    assert_eq!(spec.group_id("orders"), "broker-bridge-orders");
    assert_eq!(spec.cluster(), "127.0.0.1:9092");
    assert_eq!(spec.literal_topics(), vec!["orders"]);
    assert!(spec.read_committed());
    let config = spec.client_config("orders");
    for (name, value) in [
        ("bootstrap.servers", "127.0.0.1:9092"),
        ("group.id", "broker-bridge-orders"),
        ("enable.auto.offset.store", "false"),
        ("enable.auto.commit", "true"),
        ("auto.offset.reset", "earliest"),
        ("auto.commit.interval.ms", "1000"),
        ("statistics.interval.ms", "1000"),
        ("security.protocol", "plaintext"),
        ("client.id", "broker-bridge-orders"),
    ] {
        assert_eq!(config.get(name), Some(value), "{name}");
    }
    assert_eq!(config.get("sasl.username"), None);
}

#[test]
fn security_tls_and_properties_become_librdkafka_settings() {
    let spec = parse(serde_json::json!({
        "brokers": "k1:9093, k2:9093",
        "topics": ["orders"],
        "group_id": "shop",
        "start": "latest",
        "cluster": "prod",
        "security": "sasl_ssl",
        "sasl_mechanism": "SCRAM-SHA-512",
        "user": "bridge",
        "password": "s3cret",
        "tls": {"ca_file": "/etc/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"},
        "properties": {
            "session.timeout.ms": 10000,
            "fetch": {"wait": {"max": {"ms": "50"}}},
            "check.crcs": true,
            "isolation.level": "read_uncommitted",
            "auto.commit.interval.ms": 250,
        },
    }))
    .unwrap();
    assert_eq!(spec.brokers, vec!["k1:9093", "k2:9093"]);
    assert_eq!(spec.cluster(), "prod");
    assert!(!spec.read_committed());
    let config = spec.client_config("b");
    for (name, value) in [
        ("bootstrap.servers", "k1:9093,k2:9093"),
        ("group.id", "shop"),
        ("auto.offset.reset", "latest"),
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "bridge"),
        ("sasl.password", "s3cret"),
        ("ssl.ca.location", "/etc/ca.pem"),
        ("ssl.certificate.location", "/c.pem"),
        ("ssl.key.location", "/k.pem"),
        ("session.timeout.ms", "10000"),
        ("fetch.wait.max.ms", "50"),
        ("check.crcs", "true"),
        ("auto.commit.interval.ms", "250"),
    ] {
        assert_eq!(config.get(name), Some(value), "{name}");
    }
    assert!(
        !serde_json::to_string(&spec).unwrap().contains("s3cret"),
        "the password is not shown"
    );
    let plain = parse(serde_json::json!({
        "topics": ["t"], "security": "sasl_plaintext", "sasl_mechanism": "PLAIN",
        "user": "u", "password": "p",
    }))
    .unwrap();
    assert_eq!(
        plain.client_config("b").get("sasl.mechanisms"),
        Some("PLAIN")
    );
}

#[test]
fn wrong_or_ignored_settings_are_refused() {
    for (table, needle) in [
        (
            serde_json::json!({"topics": []}),
            "key `topics`: give at least one",
        ),
        (serde_json::json!({"topics": ["a", "a"]}), "twice"),
        (
            serde_json::json!({"topics": ["a b"]}),
            "not a Kafka topic name",
        ),
        (
            serde_json::json!({"topics": [".."]}),
            "not a Kafka topic name",
        ),
        (
            serde_json::json!({"topics": ["^"]}),
            "empty regular expression",
        ),
        (
            serde_json::json!({"topics": ["a"], "brokers": []}),
            "key `brokers`",
        ),
        (
            serde_json::json!({"topics": ["a"], "brokers": "kafka://h:9092"}),
            "scheme",
        ),
        (
            serde_json::json!({"topics": ["a"], "brokers": "h:0"}),
            "port",
        ),
        (
            serde_json::json!({"topics": ["a"], "brokers": "h:x"}),
            "port",
        ),
        (
            serde_json::json!({"topics": ["a"], "brokers": "a,,b"}),
            "is empty",
        ),
        (
            serde_json::json!({"topics": ["a"], "group_id": ""}),
            "key `group_id`",
        ),
        (
            serde_json::json!({"topics": ["a"], "cluster": "a/b"}),
            "key `cluster`",
        ),
        (
            serde_json::json!({"topics": ["a"], "start": "oldest"}),
            "key `start`",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "tls"}),
            "key `security`",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "sasl_ssl", "user": "u", "password": "p"}),
            "key `sasl_mechanism`",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "sasl_ssl", "sasl_mechanism": "PLAIN", "password": "p"}),
            "key `user`",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "sasl_plaintext", "sasl_mechanism": "PLAIN", "user": "u"}),
            "key `password`",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "sasl_ssl", "sasl_mechanism": "GSSAPI", "user": "u", "password": "p"}),
            "key `sasl_mechanism`",
        ),
        (
            serde_json::json!({"topics": ["a"], "user": "u", "password": "p"}),
            "key `user`: only used with security",
        ),
        (
            serde_json::json!({"topics": ["a"], "sasl_mechanism": "PLAIN"}),
            "key `sasl_mechanism`: only used",
        ),
        (
            serde_json::json!({"topics": ["a"], "tls": {"ca_file": "/ca.pem"}}),
            "TLS settings need security",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "sasl_plaintext", "sasl_mechanism": "PLAIN", "user": "u", "password": "p", "tls": {"required": true}}),
            "key `tls.required`",
        ),
        (
            serde_json::json!({"topics": ["a"], "security": "ssl", "tls": {"cert_file": "/c.pem"}}),
            "`cert_file` and `key_file`",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"group.id": "x"}}),
            "`group.id` is set by broker-bridge; use `group_id`",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"enable": {"auto": {"offset": {"store": true}}}}}),
            "`enable.auto.offset.store` is set by broker-bridge",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"enable.auto.commit": false}}),
            "`enable.auto.commit` is set by broker-bridge",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"sasl.password": "p"}}),
            "use `password`",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"no.such.property": "1"}}),
            "librdkafka refuses them",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"session.timeout.ms": "soon"}}),
            "librdkafka refuses them",
        ),
        (
            serde_json::json!({"topics": ["a"], "properties": {"x": [1]}}),
            "must be text, a number or true/false",
        ),
        (
            serde_json::json!({"topics": ["a"], "url": "x"}),
            "unknown key",
        ),
    ] {
        let err = parse(table.clone()).unwrap_err();
        assert!(err.contains(needle), "{table}: {err}");
    }
    // TLS without files (the system's CAs) is fine, and IPv6 brokers too.
    parse(serde_json::json!({"topics": ["a"], "security": "ssl", "tls": {"required": true}}))
        .unwrap();
    parse(serde_json::json!({"topics": ["a"], "brokers": ["[::1]:9092", "kafka"]})).unwrap();
}

#[test]
fn describe_names_topics_group_start_security_and_guarantee() {
    let spec = parse(serde_json::json!({"topics": ["a", "^b.*"], "group_id": "g"})).unwrap();
    assert_eq!(
        Kafka::describe(&spec),
        "topics `a`, `^b.*` on 127.0.0.1:9092 (group `g`, new groups start at earliest); \
         at-least-once: offsets stored only for the contiguous confirmed prefix of each \
         partition; event id `<topic>:<partition>:<offset>`, the same when a record is \
         read again"
    );
    let spec = parse(serde_json::json!({
        "topics": ["a"], "start": "latest", "security": "sasl_ssl",
        "sasl_mechanism": "SCRAM-SHA-256", "user": "u", "password": "p",
    }))
    .unwrap();
    let text = Kafka::describe(&spec);
    assert!(
        text.contains("(group `broker-bridge-<bridge name>`, new groups start at latest, SASL SCRAM-SHA-256 over TLS)"),
        "{text}"
    );
    assert!(!text.contains('p') || !text.contains("\"p\""));
}

#[test]
fn confirms_out_of_order_store_only_the_contiguous_prefix() {
    let mut partitions = Partitions::default();
    let generation = partitions.assign("t", 0);
    let tickets: Vec<Ticket> = (10..15)
        .map(|offset| partitions.take("t", 0, generation, offset).unwrap())
        .collect();
    // 12 and 11 confirmed first: 10 is still out, nothing may be stored.
    assert_eq!(partitions.confirm("t", 0, generation, tickets[2]), None);
    assert_eq!(partitions.confirm("t", 0, generation, tickets[1]), None);
    // 10 confirmed: 10, 11, 12 are the prefix; store 13, the next to read.
    assert_eq!(partitions.confirm("t", 0, generation, tickets[0]), Some(13));
    assert_eq!(partitions.confirm("t", 0, generation, tickets[4]), None);
    assert_eq!(partitions.confirm("t", 0, generation, tickets[3]), Some(15));
    // A repeated confirm changes nothing.
    assert_eq!(partitions.confirm("t", 0, generation, tickets[3]), None);
}

#[test]
fn an_unconfirmed_record_holds_back_every_later_offset() {
    let mut partitions = Partitions::default();
    let generation = partitions.assign("t", 3);
    // Offsets with gaps (compaction, transaction markers): order is what counts.
    let offsets = [5, 7, 8, 20, 21];
    let tickets: Vec<Ticket> = offsets
        .iter()
        .map(|offset| partitions.take("t", 3, generation, *offset).unwrap())
        .collect();
    assert_eq!(partitions.confirm("t", 3, generation, tickets[0]), Some(6));
    // 7 fails (never confirmed): however many later ones succeed, nothing moves.
    for ticket in &tickets[2..] {
        assert_eq!(partitions.confirm("t", 3, generation, *ticket), None);
    }
    // Other partitions are independent.
    let other = partitions.assign("t", 4);
    let ticket = partitions.take("t", 4, other, 0).unwrap();
    assert_eq!(partitions.confirm("t", 4, other, ticket), Some(1));
    // When 7 is confirmed after all, the whole run goes at once.
    assert_eq!(partitions.confirm("t", 3, generation, tickets[1]), Some(22));
}

#[test]
fn a_new_generation_ignores_handles_and_records_of_the_old_one() {
    let mut partitions = Partitions::default();
    let old = partitions.assign("t", 0);
    let a = partitions.take("t", 0, old, 0).unwrap();
    let b = partitions.take("t", 0, old, 1).unwrap();
    assert!(partitions.is_current("t", 0, old));
    // Revoked: confirms of the old assignment store nothing, records read before
    // the revocation are not taken.
    assert!(partitions.revoke("t", 0));
    assert!(!partitions.is_current("t", 0, old));
    assert_eq!(partitions.confirm("t", 0, old, a), None);
    assert_eq!(partitions.take("t", 0, old, 2), None);
    // Assigned again (the group reads from the committed offset again): a fresh
    // tracker; the old handles still store nothing, even with matching tickets.
    let new = partitions.assign("t", 0);
    assert_ne!(new, old);
    assert_eq!(partitions.take("t", 0, old, 0), None);
    let fresh = partitions.take("t", 0, new, 0).unwrap();
    assert_eq!(partitions.confirm("t", 0, old, b), None);
    assert_eq!(partitions.confirm("t", 0, old, fresh), None);
    assert_eq!(partitions.confirm("t", 0, new, fresh), Some(1));
    // An assignment without a revocation first also starts a new generation.
    let newer = partitions.assign("t", 0);
    let ticket = partitions.take("t", 0, newer, 1).unwrap();
    assert_eq!(partitions.confirm("t", 0, new, ticket), None);
    assert_eq!(partitions.confirm("t", 0, newer, ticket), Some(2));
    assert!(!partitions.revoke("t", 9));
}

fn standing(topic: &str, partition: i32, committed: Option<i64>, end: i64) -> Standing {
    Standing {
        topic: topic.into(),
        partition,
        committed,
        low: 0,
        end,
    }
}

fn last(group: &str, topics: &[&str], start: Start) -> LastRead {
    LastRead {
        group: group.into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        start,
        closed: watch::channel(true).1,
    }
}

fn survey(start: Start, topics: &[&str], now: Vec<Standing>) -> Survey {
    Survey {
        group: "g2".into(),
        start,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        now,
        before: None,
        default_group: None,
    }
}

#[test]
fn a_new_group_starting_at_the_end_of_the_old_groups_unread_records_is_refused() {
    let mut edit = survey(
        Start::Latest,
        &["t"],
        vec![standing("t", 0, None, 30), standing("t", 1, None, 4)],
    );
    edit.before = Some((
        last("g1", &["t"], Start::Latest),
        vec![standing("t", 0, Some(10), 30), standing("t", 1, Some(4), 4)],
    ));
    let refusal = assess(&edit).refusal.expect("refused");
    for needle in [
        "key `group_id`: changing it from `g1` to `g2` would skip 20 record(s)",
        "`g2` has no committed offset on t[0]",
        "t[0] at 10 (20 unread)",
        "Nothing was changed",
        "start = \"earliest\"",
    ] {
        assert!(refusal.contains(needle), "{needle} in {refusal}");
    }
    assert!(
        !refusal.contains("t[1]"),
        "nothing unread on t[1]: {refusal}"
    );

    // The new group already has offsets there: it goes on from them; the old
    // group's place is reported, not refused.
    edit.now = vec![standing("t", 0, Some(25), 30), standing("t", 1, Some(4), 4)];
    let assessed = assess(&edit);
    assert_eq!(assessed.refusal, None);
    let warning = &assessed.warnings[0];
    assert!(
        warning.contains("key `group_id` changed from `g1` to `g2`")
            && warning.contains("t[0] at 10 (20 unread)")
            && warning.contains("which it has on every partition"),
        "{warning}"
    );
}

#[test]
fn a_new_group_starting_at_the_earliest_offset_is_reported_not_refused() {
    let mut edit = survey(Start::Earliest, &["t"], vec![standing("t", 0, None, 30)]);
    edit.before = Some((
        last("g1", &["t", "gone"], Start::Earliest),
        vec![
            standing("gone", 0, Some(1), 8),
            standing("t", 0, Some(10), 30),
        ],
    ));
    let assessed = assess(&edit);
    assert_eq!(assessed.refusal, None);
    assert_eq!(assessed.warnings.len(), 1, "{assessed:?}");
    let warning = &assessed.warnings[0];
    for needle in [
        "key `group_id` changed from `g1` to `g2`",
        "`g1` keeps its committed offsets (gone[0] at 1 (7 unread), t[0] at 10 (20 unread))",
        "has none on t[0]: it starts there at the earliest offset",
        "bridged again, with the same ids",
        "7 record(s) unread by `g1` on topics no longer read stay with it",
    ] {
        assert!(warning.contains(needle), "{needle} in {warning}");
    }
}

#[test]
fn a_removed_topic_keeps_its_offsets_and_is_reported_with_what_it_holds() {
    let mut edit = survey(Start::Earliest, &["a"], vec![standing("a", 0, Some(5), 5)]);
    edit.group = "g".into();
    edit.before = Some((
        last("g", &["a", "b", "^c.*"], Start::Earliest),
        vec![standing("b", 0, Some(3), 10), standing("b", 1, Some(2), 2)],
    ));
    let assessed = assess(&edit);
    assert_eq!(assessed.refusal, None);
    assert_eq!(
        assessed.warnings,
        vec![
            "key `topics`: `b` is no longer read; group `g` keeps its committed offsets there (b[0] at 3 (7 unread), b[1] at 2 (0 unread)), and listing it again resumes from them; until then 7 record(s) there are not bridged"
                .to_owned()
        ]
    );
    assert_eq!(assessed.notes.len(), 1);
    assert!(assessed.notes[0].contains("`^c.*` is no longer read"));
}

#[test]
fn start_applies_only_where_the_group_has_no_offset() {
    let mut edit = survey(
        Start::Latest,
        &["a", "b"],
        vec![standing("a", 0, Some(5), 9), standing("b", 0, None, 4)],
    );
    edit.group = "g".into();
    edit.before = Some((last("g", &["a"], Start::Earliest), Vec::new()));
    let assessed = assess(&edit);
    assert_eq!(assessed.refusal, None);
    assert_eq!(
        assessed.notes,
        vec![
            "key `start` changed from \"earliest\" to \"latest\": group `g` goes on from its committed offsets; start applies only where it has none (b[0])"
                .to_owned()
        ]
    );
    // b was added: the group starts at its end, and says what it does not bridge.
    assert_eq!(
        assessed.warnings,
        vec![
            "group `g` has no committed offset on b[0]: it starts at their end (start = \"latest\"), so the 4 record(s) they hold now are not bridged"
                .to_owned()
        ]
    );
    // From the earliest offset: a note with the number of records.
    let fresh = survey(Start::Earliest, &["b"], vec![standing("b", 0, None, 4)]);
    assert_eq!(
        assess(&fresh).notes,
        vec![
            "group `g2` has no committed offset on b[0]: it starts at their oldest record (start = \"earliest\"): 4 record(s)"
                .to_owned()
        ]
    );
    // Nothing new, nothing edited: nothing to say.
    let steady = survey(Start::Latest, &["a"], vec![standing("a", 0, Some(5), 9)]);
    assert_eq!(assess(&steady), Assessment::default());
}

#[test]
fn after_a_restart_the_default_groups_unread_records_are_named() {
    let mut edit = survey(Start::Latest, &["t"], vec![standing("t", 0, None, 12)]);
    edit.default_group = Some((
        "broker-bridge-b".into(),
        vec![standing("t", 0, Some(9), 12)],
    ));
    let warning = &assess(&edit).warnings[0];
    assert!(
        warning.contains("the 12 record(s) they hold now are not bridged")
            && warning.contains(
                "the default group `broker-bridge-b` has 3 unread record(s) on these topics (t[0] at 9 (3 unread))"
            )
            && warning.contains("set `group_id = \"broker-bridge-b\"`"),
        "{warning}"
    );
}

#[test]
fn a_start_is_pinned_only_before_anything_is_stored_in_the_assignment() {
    let mut partitions = Partitions::default();
    partitions.pins.insert(("t".into(), 0), 7);
    let generation = partitions.assign("t", 0);
    partitions.assign("t", 1);
    let mut list = TopicPartitionList::new();
    list.add_partition("t", 0);
    list.add_partition("t", 1);
    assert_eq!(
        partitions.pins_of(&list),
        vec![("t".to_owned(), 0, generation, 7)]
    );
    let ticket = partitions.take("t", 0, generation, 9).unwrap();
    assert!(
        partitions.may_pin("t", 0, generation),
        "taken is not stored"
    );
    // A confirmed record stored an offset past the pin: the pin is not stored.
    assert_eq!(partitions.confirm("t", 0, generation, ticket), Some(10));
    assert!(!partitions.may_pin("t", 0, generation));
    // A new assignment may pin (nothing stored in it yet); the old one may not.
    let newer = partitions.assign("t", 0);
    assert!(partitions.may_pin("t", 0, newer));
    assert!(!partitions.may_pin("t", 0, generation));
    partitions.pinned("t", 0);
    assert!(!partitions.may_pin("t", 0, newer));
    assert!(partitions.pins_of(&list).is_empty());
}

fn statistics(json: Value) -> Statistics {
    serde_json::from_value(json).unwrap()
}

#[test]
fn lag_is_end_offset_minus_the_next_record_to_bridge() {
    let mut partitions = Partitions::default();
    assert_eq!(partitions.lag(), Some(0), "nothing assigned, nothing waits");
    let g0 = partitions.assign("t", 0);
    partitions.assign("t", 1);
    assert_eq!(partitions.lag(), None, "unknown until the statistics come");
    let stats = statistics(serde_json::json!({"topics": {"t": {"partitions": {
        "0": {"hi_offset": 120, "ls_offset": 100, "lo_offset": 0, "committed_offset": 40},
        "1": {"hi_offset": 7, "ls_offset": 7, "lo_offset": 2, "committed_offset": -1001},
        "-1": {"hi_offset": -1, "ls_offset": -1, "lo_offset": -1, "committed_offset": -1},
    }}}}));
    partitions.statistics(&stats, true, Start::Earliest);
    // 100 - 40 on partition 0; nothing committed on 1: from the log start, 7 - 2.
    assert_eq!(partitions.lag(), Some(65));
    // High watermarks under read_uncommitted; `latest` counts nothing uncommitted.
    partitions.statistics(&stats, false, Start::Latest);
    assert_eq!(partitions.lag(), Some(80));
    partitions.statistics(&stats, true, Start::Earliest);
    // Records taken count from the position after the last one.
    partitions.take("t", 0, g0, 97).unwrap();
    assert_eq!(partitions.lag(), Some(2 + 5));
    partitions.take("t", 0, g0, 99).unwrap();
    assert_eq!(partitions.lag(), Some(5));
    // A stale end (the statistics lag behind the records) never goes negative.
    partitions.take("t", 0, g0, 130).unwrap();
    assert_eq!(partitions.lag(), Some(5));
    partitions.revoke("t", 1);
    assert_eq!(partitions.lag(), Some(0));
}

fn sample_record(key: Option<&[u8]>, headers: &[(&str, &str)], timestamp: Option<i64>) -> Record {
    Record {
        topic: Arc::from("orders"),
        partition: 2,
        offset: 41,
        generation: 1,
        payload: Bytes::from_static(b"{}"),
        key: key.map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timestamp,
    }
}

#[test]
fn records_map_to_metadata() {
    let received = Utc::now();
    let record = sample_record(
        Some(b"customer-7"),
        &[("Content-Type", "text/plain"), ("tenant", "acme")],
        Some(1_700_000_000_123),
    );
    let meta = metadata(&record, "prod", received);
    assert_eq!(meta.id.as_deref(), Some("orders:2:41"));
    assert_eq!(meta.subject.as_deref(), Some("orders"));
    assert_eq!(meta.source_uri, "kafka://prod/orders");
    assert_eq!(meta.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        meta.time,
        Utc.timestamp_millis_opt(1_700_000_000_123).single()
    );
    assert_eq!(
        meta.extensions,
        vec![("partitionkey".to_owned(), "customer-7".to_owned())]
    );
    assert_eq!(meta.headers.len(), 2);
    assert_eq!(meta.received, received);

    let bare = metadata(&record_without_extras(), "c", received);
    assert_eq!((bare.content_type, bare.time), (None, None));
    assert!(bare.extensions.is_empty(), "no key, no partitionkey");
    let binary = metadata(&sample_record(Some(&[0xff, 0]), &[], None), "c", received);
    assert_eq!(
        binary.extensions[0].1, "/wA=",
        "a key that is not UTF-8 is base64"
    );
    let empty = metadata(&sample_record(Some(b""), &[], None), "c", received);
    assert!(
        empty.extensions.is_empty(),
        "an empty key is no partitionkey"
    );
}

fn record_without_extras() -> Record {
    sample_record(None, &[], None)
}

#[test]
fn binary_mode_cloudevent_headers_are_recognised() {
    let record = sample_record(
        None,
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "x-1"),
            ("ce_source", "/s"),
            ("ce_type", "t"),
            ("content-type", "application/json"),
        ],
        None,
    );
    let meta = metadata(&record, "c", Utc::now());
    let event = crate::cloudevent::parse_binary(
        &meta.headers,
        meta.content_type.as_deref(),
        &record.payload,
    )
    .unwrap()
    .expect("a binary-mode event");
    assert_eq!((event.id.as_str(), event.ty.as_str()), ("x-1", "t"));
}

#[test]
fn header_values_are_text_or_left_out() {
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "text",
            value: Some("grüße"),
        })
        .insert(rdkafka::message::Header {
            key: "binary",
            value: Some(&[0xffu8, 0xfe][..]),
        })
        .insert(rdkafka::message::Header::<&str> {
            key: "none",
            value: None,
        });
    assert_eq!(
        header_texts(&headers),
        vec![
            ("text".to_owned(), "grüße".to_owned()),
            ("none".to_owned(), String::new())
        ]
    );
}
