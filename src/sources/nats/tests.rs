use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};

use super::jetstream::{ConsumerPlan, plan_existing_consumer};
use super::*;

#[test]
fn server_labels_drop_scheme_and_credentials() {
    let label = |url: &str| server_label(&url.into());
    assert_eq!(label("nats://u:p@127.0.0.1:4222"), "127.0.0.1:4222");
    assert_eq!(label("nats://u:p,w@127.0.0.1:4222"), "127.0.0.1:4222");
    assert_eq!(label("tls://a:4222, tls://b:4222"), "a:4222");
    assert_eq!(label("localhost:4222"), "localhost:4222");
}

#[test]
fn half_given_credentials_are_refused() {
    for (table, key) in [
        (serde_json::json!({"subject": "a", "user": "u"}), "user"),
        (
            serde_json::json!({"subject": "a", "password": "p"}),
            "password",
        ),
        (
            serde_json::json!({"subject": "a", "user": "u", "password": "p", "token": "t"}),
            "creds_file",
        ),
        (
            serde_json::json!({"subject": "a", "tls": {"cert_file": "c.pem"}}),
            "key_file",
        ),
    ] {
        let err = Nats::parse(table.as_object().unwrap().clone()).unwrap_err();
        assert!(err.contains(key), "{err}");
    }
    let fine = serde_json::json!({"subject": "a", "user": "u", "password": "p"});
    assert!(Nats::parse(fine.as_object().unwrap().clone()).is_ok());
}

#[test]
fn keys_are_split_between_connection_and_kind() {
    let table = serde_json::json!({"url": "nats://x:4222", "subject": "a.>", "queue_group": "g"});
    let spec = Nats::parse(table.as_object().unwrap().clone()).unwrap();
    assert_eq!(spec.connection.url.expose(), "nats://x:4222");
    assert_eq!(spec.keys.queue_group.as_deref(), Some("g"));
    let table = serde_json::json!({"subject": "a", "stream": "S"});
    let err = Nats::parse(table.as_object().unwrap().clone()).unwrap_err();
    assert!(err.starts_with("key `stream`: unknown key"), "{err}");
    assert!(err.contains("url") && err.contains("queue_group"), "{err}");
}

fn jetstream_spec(filter: Option<&str>) -> JetStreamSpec {
    let mut table = serde_json::json!({"stream": "ORDERS", "consumer": "c1"});
    if let Some(filter) = filter {
        table["filter_subject"] = filter.into();
    }
    JetStream::parse(table.as_object().unwrap().clone()).unwrap()
}

/// An existing consumer as the server reports it: `config`, ack floor 10, 100 pending.
fn existing(config: impl jetstream::consumer::IntoConsumerConfig) -> jetstream::consumer::Info {
    let config = serde_json::to_value(config.into_consumer_config()).unwrap();
    serde_json::from_value(serde_json::json!({
        "stream_name": "ORDERS",
        "name": "c1",
        "created": "2026-12-01T00:00:00Z",
        "config": config,
        "delivered": {"consumer_seq": 10, "stream_seq": 10},
        "ack_floor": {"consumer_seq": 10, "stream_seq": 10},
        "num_ack_pending": 0,
        "num_redelivered": 0,
        "num_waiting": 0,
        "num_pending": 100,
        "cluster": null
    }))
    .unwrap()
}

#[test]
fn an_unchanged_consumer_of_ours_is_used_as_it_is() {
    let spec = jetstream_spec(Some("orders.a"));
    let wanted = spec.consumer_config("b", 256);
    let plan = plan_existing_consumer(&existing(wanted.clone()), &wanted, "ORDERS").unwrap();
    assert!(
        matches!(plan, ConsumerPlan::UseAsItIs { ref notes } if notes.is_empty()),
        "{plan:?}"
    );
}

#[test]
fn a_changed_filter_is_refused_naming_key_consumer_and_pending() {
    let created = jetstream_spec(Some("orders.a")).consumer_config("b", 256);
    for filter in [Some("orders.>"), None, Some("orders.b")] {
        let wanted = jetstream_spec(filter).consumer_config("b", 256);
        let refusal =
            plan_existing_consumer(&existing(created.clone()), &wanted, "ORDERS").unwrap_err();
        assert!(refusal.starts_with("key `filter_subject`"), "{refusal}");
        assert!(
            refusal.contains("`c1`") && refusal.contains("`ORDERS`"),
            "{refusal}"
        );
        assert!(refusal.contains("100 message(s) pending"), "{refusal}");
        assert!(refusal.contains("stream sequence 10"), "{refusal}");
    }
}

#[test]
fn our_consumer_is_updated_only_in_settings_that_cannot_move_it() {
    let created = jetstream_spec(Some("orders.a")).consumer_config("b", 256);
    let mut spec = jetstream_spec(Some("orders.a"));
    spec.keys.ack_wait = Duration::from_secs(45);
    spec.keys.start = StartPosition::New;
    let wanted = spec.consumer_config("b", 16);
    let plan = plan_existing_consumer(&existing(created.clone()), &wanted, "ORDERS").unwrap();
    let ConsumerPlan::Update { config, changes } = plan else {
        panic!("expected an update, got {plan:?}");
    };
    assert_eq!(config.max_ack_pending, 16);
    assert_eq!(config.ack_wait, Duration::from_secs(45));
    assert_eq!(config.filter_subject, "orders.a");
    // `start` only applies to a new consumer: the existing deliver policy stays.
    assert_eq!(config.deliver_policy, created.deliver_policy);
    assert_eq!(changes.len(), 2, "{changes:?}");
}

#[test]
fn a_consumer_someone_else_made_is_never_updated() {
    let operator = pull::Config {
        durable_name: Some("c1".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        max_ack_pending: 4096,
        max_deliver: 5,
        ..Default::default()
    };
    let wanted = jetstream_spec(None).consumer_config("b", 256);
    let plan = plan_existing_consumer(&existing(operator), &wanted, "ORDERS").unwrap();
    let ConsumerPlan::UseAsItIs { notes } = plan else {
        panic!("expected use as it is, got {plan:?}");
    };
    assert!(
        notes.iter().any(|n| n.contains("max_ack_pending 4096")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("max_deliver 5")),
        "{notes:?}"
    );
}

#[test]
fn consumers_that_cannot_be_acked_one_by_one_are_refused() {
    let wanted = jetstream_spec(None).consumer_config("b", 256);
    let ack_all = pull::Config {
        durable_name: Some("c1".into()),
        ack_policy: jetstream::consumer::AckPolicy::All,
        ..Default::default()
    };
    let refusal = plan_existing_consumer(&existing(ack_all), &wanted, "ORDERS").unwrap_err();
    assert!(refusal.contains("explicit"), "{refusal}");
    let push = jetstream::consumer::push::Config {
        durable_name: Some("c1".into()),
        deliver_subject: "out".into(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    let refusal = plan_existing_consumer(&existing(push), &wanted, "ORDERS").unwrap_err();
    assert!(refusal.contains("push consumer"), "{refusal}");
}
