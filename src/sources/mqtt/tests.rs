use bytes::Bytes;

use super::Mqtt;
use super::connection::check_suback;
use super::session::{
    Plan, RECORDS, SessionMemory, SessionRecord, keep_record, previous_record, record_path,
};
use super::source::with_cloudevent_aliases;
use super::spec::{DEFAULT_SESSION_EXPIRY, Endpoint, MqttSpec, Protocol};
use crate::sources::common::kind::SourceKind;

fn parse(value: serde_json::Value) -> Result<MqttSpec, String> {
    Mqtt::parse(value.as_object().unwrap().clone())
}

#[test]
fn defaults_are_qos_1_on_local_mosquitto() {
    let spec = parse(serde_json::json!({"topics": ["a/#"]})).unwrap();
    assert_eq!(spec.url.expose(), "mqtt://127.0.0.1:1883");
    assert_eq!(spec.protocol, Protocol::V311);
    assert_eq!(spec.qos, 1);
    assert_eq!(spec.client_id("orders"), "broker-bridge-orders");
    assert_eq!(spec.filters(), vec![("a/#".to_owned(), 1)]);
    assert_eq!(spec.session_expiry(), DEFAULT_SESSION_EXPIRY);
}

#[test]
fn protocol_is_text_or_the_number_5() {
    for (given, expected) in [
        (serde_json::json!("3.1.1"), Protocol::V311),
        (serde_json::json!("5"), Protocol::V5),
        (serde_json::json!(5), Protocol::V5),
    ] {
        let spec = parse(serde_json::json!({"topics": ["a"], "protocol": given})).unwrap();
        assert_eq!(spec.protocol, expected);
    }
    let err = parse(serde_json::json!({"topics": ["a"], "protocol": "3"})).unwrap_err();
    assert!(
        err.contains("key `protocol`") && err.contains("3.1.1"),
        "{err}"
    );
}

#[test]
fn settings_that_would_be_ignored_or_lose_messages_are_refused() {
    for (table, needle) in [
        (serde_json::json!({"topics": []}), "at least one"),
        (serde_json::json!({"topics": ["a", "a"]}), "twice"),
        (serde_json::json!({"topics": ["a/#/b"]}), "`#`"),
        (serde_json::json!({"topics": ["a+/b"]}), "`+`"),
        (
            serde_json::json!({"topics": ["$share/g/a"]}),
            "shared_group",
        ),
        (
            serde_json::json!({"topics": ["a"], "qos": 2}),
            "exactly-once",
        ),
        (serde_json::json!({"topics": ["a"], "qos": 3}), "key `qos`"),
        (
            serde_json::json!({"topics": ["a"], "client_id": ""}),
            "client_id",
        ),
        (
            serde_json::json!({"topics": ["a"], "shared_group": "g"}),
            "protocol = \"5\"",
        ),
        (
            serde_json::json!({"topics": ["a"], "protocol": "5", "shared_group": "a/b"}),
            "shared_group",
        ),
        (
            serde_json::json!({"topics": ["a"], "session_expiry": "1h"}),
            "only for protocol",
        ),
        (
            serde_json::json!({"topics": ["a"], "protocol": "5", "session_expiry": 0}),
            "lost",
        ),
        (
            serde_json::json!({"topics": ["a"], "keep_alive": "1s"}),
            "keep_alive",
        ),
        (
            serde_json::json!({"topics": ["a"], "password": "p"}),
            "needs `user`",
        ),
        (
            serde_json::json!({"topics": ["a"], "url": "mqtts://h", "tls": {"cert_file": "c"}}),
            "go together",
        ),
        (
            serde_json::json!({"topics": ["a"], "tls": {"ca_file": "ca.pem"}}),
            "mqtts://",
        ),
        (
            serde_json::json!({"topics": ["a"], "tls": {"required": true}}),
            "mqtts://",
        ),
        (
            serde_json::json!({"topics": ["a"], "url": "mqtt://u:p@h:1883"}),
            "credentials",
        ),
        (
            serde_json::json!({"topics": ["a"], "url": "http://h"}),
            "scheme",
        ),
        (
            serde_json::json!({"topics": ["a"], "subject": "a"}),
            "unknown key",
        ),
    ] {
        let err = parse(table.clone()).unwrap_err();
        assert!(err.contains(needle), "{table}: {err}");
    }
    // A user without a password is fine (brokers that authenticate by user name).
    assert!(parse(serde_json::json!({"topics": ["a"], "user": "u"})).is_ok());
}

#[test]
fn urls_give_host_port_and_tls() {
    let endpoint = Endpoint::parse("mqtts://broker.example").unwrap();
    assert_eq!(endpoint.label(), "broker.example:8883");
    assert!(endpoint.tls);
    assert_eq!(endpoint.scheme(), "mqtts");
    let endpoint = Endpoint::parse("mqtt://10.0.0.1:1884/").unwrap();
    assert_eq!((endpoint.host.as_str(), endpoint.port), ("10.0.0.1", 1884));
    assert!(!endpoint.tls);
    let endpoint = Endpoint::parse("tcp://[::1]").unwrap();
    assert_eq!(endpoint.label(), "[::1]:1883");
    assert!(Endpoint::parse("mqtt://h:0").is_err());
    assert!(Endpoint::parse("mqtt://:1883").is_err());
    assert!(Endpoint::parse("mqtt://h/topic").is_err());
    assert!(Endpoint::parse("h:1883").is_err());
}

#[test]
fn shared_group_prefixes_every_filter() {
    let spec = parse(serde_json::json!({
        "topics": ["a/+", "b/#"], "protocol": "5", "shared_group": "bb", "qos": 0
    }))
    .unwrap();
    assert_eq!(
        spec.filters(),
        vec![
            ("$share/bb/a/+".to_owned(), 0),
            ("$share/bb/b/#".to_owned(), 0)
        ]
    );
}

#[test]
fn describe_names_the_guarantee() {
    let spec = parse(serde_json::json!({"topics": ["a/#", "b/+"], "client_id": "x"})).unwrap();
    assert_eq!(
        Mqtt::describe(&spec),
        "topics `a/#`, `b/+` on 127.0.0.1:1883 (MQTT 3.1.1, QoS 1, client id `x`, \
         persistent session); at-least-once: PUBACK after the exchange confirmed, in \
         arrival order"
    );
    let spec = parse(serde_json::json!({
        "topics": ["a"], "protocol": "5", "qos": 0, "url": "mqtts://h",
        "shared_group": "g", "session_expiry": "2h"
    }))
    .unwrap();
    let text = Mqtt::describe(&spec);
    assert!(text.starts_with("topics `a` on h:8883 (MQTT 5, QoS 0, shared group `g`, client id `broker-bridge-<bridge name>`, persistent session, expiry 2h, TLS); at-most-once"), "{text}");
}

#[test]
fn the_password_is_not_serialized() {
    let spec =
        parse(serde_json::json!({"topics": ["a"], "user": "u", "password": "s3cret"})).unwrap();
    assert!(!serde_json::to_string(&spec).unwrap().contains("s3cret"));
}

#[test]
fn a_known_session_is_not_subscribed_again() {
    let mut memory = SessionMemory::default();
    let wanted = vec![("a/#".to_owned(), 1), ("b".to_owned(), 1)];
    let plan = |subscribe: &[(String, u8)], unsubscribe: &[&str]| Plan {
        subscribe: subscribe.to_vec(),
        unsubscribe: unsubscribe.iter().map(|f| f.to_string()).collect(),
        session_lost: false,
        filters_unknown: false,
    };
    // First connection of the process without a record: everything, and what the
    // session had before is unknown.
    assert_eq!(
        memory.plan(true, &wanted, None),
        Plan {
            filters_unknown: true,
            ..plan(&wanted, &[])
        }
    );
    memory.subscribed = wanted.clone();
    // Reconnect to the kept session: nothing.
    assert_eq!(memory.plan(true, &wanted, None), plan(&[], &[]));
    // The config changed: only the difference, and the removed filter goes.
    let changed = vec![("a/#".to_owned(), 1), ("c".to_owned(), 0)];
    assert_eq!(
        memory.plan(true, &changed, None),
        plan(&[("c".to_owned(), 0)], &["b"])
    );
    // A QoS change subscribes the filter again and removes nothing.
    let requalified = vec![("a/#".to_owned(), 0), ("b".to_owned(), 1)];
    assert_eq!(
        memory.plan(true, &requalified, None),
        plan(&[("a/#".to_owned(), 0)], &[])
    );
    // The broker lost the session: everything again, and that is reported.
    assert_eq!(
        memory.plan(false, &changed, None),
        Plan {
            session_lost: true,
            ..plan(&changed, &[])
        }
    );
}

#[test]
fn a_recorded_filter_removed_while_stopped_is_unsubscribed() {
    let wanted = vec![("b".to_owned(), 1), ("c".to_owned(), 1)];
    let recorded = ["a".to_owned(), "b".to_owned()];
    // First connection of a new process to the recorded session: every filter, and
    // the recorded one no longer wanted goes.
    let plan = SessionMemory::default().plan(true, &wanted, Some(&recorded));
    assert_eq!(plan.subscribe, wanted);
    assert_eq!(plan.unsubscribe, vec!["a".to_owned()]);
    assert!(!plan.session_lost && !plan.filters_unknown);
    // What this process subscribed wins over the record.
    let mut memory = SessionMemory {
        subscribed: wanted.clone(),
        ..Default::default()
    };
    assert!(
        memory
            .plan(true, &wanted, Some(&recorded))
            .unsubscribe
            .is_empty()
    );
    // No session although one was recorded: lost, and reported.
    let plan = SessionMemory::default().plan(false, &wanted, Some(&recorded));
    assert!(plan.session_lost && plan.unsubscribe.is_empty());
    // No session and nothing known: a first start, nothing to report.
    assert!(
        !SessionMemory::default()
            .plan(false, &wanted, None)
            .session_lost
    );
}

#[test]
fn the_session_record_survives_in_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("record-{}", uuid::Uuid::now_v7());
    let path = record_path(dir.path(), &bridge);
    let record = SessionRecord {
        server: "h:1883".into(),
        client_id: "id".into(),
        filters: vec!["a/#".into()],
    };
    keep_record(&path, &bridge, record.clone(), None);
    // A new process (no copy in memory) reads it from the file.
    RECORDS.lock().unwrap().remove(&bridge);
    assert_eq!(previous_record(&path, &bridge), Some(record.clone()));
    assert!(record.same_session("h:1883", "id"));
    assert!(!record.same_session("h:1883", "other"));
    // A damaged file is ignored (and written again on the next subscription).
    std::fs::write(&path, "{not json").unwrap();
    RECORDS.lock().unwrap().remove(&bridge);
    assert_eq!(previous_record(&path, &bridge), None);
    // A state_dir that cannot be written: the process still remembers.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "a file, not a directory").unwrap();
    let path = record_path(&blocked, &bridge);
    keep_record(&path, &bridge, record.clone(), None);
    assert!(!path.exists());
    assert_eq!(previous_record(&path, &bridge), Some(record));
}

#[test]
fn a_resent_message_keeps_its_id() {
    let mut memory = SessionMemory::default();
    let first = memory.id_for(7, false, 42);
    assert_eq!(memory.id_for(7, true, 42), first, "DUP resend");
    assert_ne!(memory.id_for(8, true, 42), first, "another packet");
    // The same packet id with other bytes is another message.
    let other = memory.id_for(7, true, 43);
    assert_ne!(other, first);
    memory.acknowledged(7, &first);
    assert!(memory.unacked.contains_key(&7), "a reused packet id stays");
    memory.acknowledged(7, &other);
    assert!(!memory.unacked.contains_key(&7));
    // Without DUP it is a new message even with the same bytes.
    let fresh = memory.id_for(9, false, 1);
    assert_ne!(memory.id_for(9, false, 1), fresh);
    // A new session forgets everything.
    memory.plan(false, &[], None);
    assert!(memory.unacked.is_empty());
}

#[test]
fn mqtt5_cloudevent_properties_get_binary_mode_names() {
    let properties = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), "x1".to_owned()),
        ("source".to_owned(), "/s".to_owned()),
        ("type".to_owned(), "t".to_owned()),
        ("myext".to_owned(), "v".to_owned()),
        ("X-Trace".to_owned(), "abc".to_owned()),
    ];
    let headers = with_cloudevent_aliases(properties.clone());
    assert_eq!(&headers[..properties.len()], &properties[..]);
    let event = crate::cloudevent::parse_binary(
        &headers,
        Some("application/json"),
        &Bytes::from_static(b"{\"a\":1}"),
    )
    .unwrap()
    .expect("a binary-mode CloudEvent");
    assert_eq!((event.id.as_str(), event.ty.as_str()), ("x1", "t"));
    assert_eq!(event.extensions["myext"].as_text(), "v");
    assert!(!event.extensions.contains_key("x-trace"));
    // Without specversion, user properties are only headers.
    let plain = vec![("type".to_owned(), "t".to_owned())];
    assert_eq!(with_cloudevent_aliases(plain.clone()), plain);
}

#[test]
fn suback_refusals_name_the_filter() {
    let filters = vec![("a".to_owned(), 1), ("b".to_owned(), 1)];
    assert!(check_suback(&filters, vec![Ok(1), Ok(0)]).is_ok());
    let err =
        check_suback(&filters, vec![Ok(1), Err("refused (NotAuthorized)".into())]).unwrap_err();
    assert!(err.contains("`b` refused (NotAuthorized)"), "{err}");
    assert!(check_suback(&filters, vec![Ok(1)]).is_err());
}
