use super::*;
use crate::cloudevent::BINARY_HEADER_PREFIXES;

fn mapping() -> Mapping {
    Mapping {
        tenant: TenantRule::Template(Template::fixed("acme")),
        subject_separator: Some('.'),
        source_name: "orders".into(),
        source_uri: None,
        event_type: Template::parse("{subject}").unwrap(),
        type_configured: false,
        time_pointer: None,
        format: PayloadFormat::Auto,
        default_content_type: None,
        max_message_bytes: 1024,
    }
}

fn meta() -> Metadata {
    Metadata {
        subject: Some("orders.created".into()),
        source_uri: "nats://127.0.0.1:4222/orders.created".into(),
        received: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
        ..Default::default()
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(mapping: &Mapping, meta: &Metadata, payload: &[u8]) -> Normalized {
    normalize(mapping, meta, &Bytes::copy_from_slice(payload)).expect("normalizes")
}

fn rejected(mapping: &Mapping, meta: &Metadata, payload: &[u8]) -> RejectReason {
    normalize(mapping, meta, &Bytes::copy_from_slice(payload))
        .expect_err("rejected")
        .reason
}

#[test]
fn json_stays_json_byte_for_byte() {
    let payload = br#"{ "n" : 1.50, "s": "\u00e9" }"#;
    let out = ok(&mapping(), &meta(), payload);
    assert_eq!(out.event.data, Data::Json(Bytes::copy_from_slice(payload)));
    assert_eq!(
        out.event.datacontenttype.as_deref(),
        Some("application/json")
    );
    let structured = out.event.to_structured_json();
    let needle = [b"\"data\":".as_slice(), payload].concat();
    assert!(structured.windows(needle.len()).any(|w| w == needle));
    assert!(!String::from_utf8_lossy(&structured).contains("data_base64"));
}

#[test]
fn a_message_without_data_has_no_data_and_no_content_type() {
    let meta = Metadata {
        no_data: true,
        ..meta()
    };
    let mut strict = mapping();
    strict.format = PayloadFormat::Json;
    strict.default_content_type = Some("text/plain".into());
    for mapping in [mapping(), strict] {
        let out = ok(&mapping, &meta, b"");
        assert_eq!(out.event.data, Data::None);
        assert_eq!(out.event.datacontenttype, None);
        let json: Value = serde_json::from_slice(&out.event.to_structured_json()).unwrap();
        let object = json.as_object().unwrap();
        for absent in ["data", "data_base64", "datacontenttype"] {
            assert!(!object.contains_key(absent), "{absent} in {json}");
        }
    }
}

#[test]
fn json_with_a_json_content_type_keeps_that_content_type() {
    let mut meta = meta();
    meta.content_type = Some("application/vnd.acme+json; charset=utf-8".into());
    let out = ok(&mapping(), &meta, b"[1,2]");
    assert_eq!(out.event.data, Data::Json(Bytes::from_static(b"[1,2]")));
    assert_eq!(
        out.event.datacontenttype.as_deref(),
        Some("application/vnd.acme+json; charset=utf-8")
    );
}

#[test]
fn non_json_travels_as_bytes_with_its_content_type() {
    let text = "grüße".as_bytes();
    let out = ok(&mapping(), &meta(), text);
    assert_eq!(out.event.data, Data::Binary(Bytes::copy_from_slice(text)));
    assert_eq!(
        out.event.datacontenttype.as_deref(),
        Some("application/octet-stream")
    );

    let mut meta = meta();
    meta.content_type = Some("text/plain".into());
    // JSON-looking bytes under a non-JSON content type are that content type's bytes.
    let out = ok(&mapping(), &meta, b"42");
    assert_eq!(out.event.data, Data::Binary(Bytes::from_static(b"42")));
    assert_eq!(out.event.datacontenttype.as_deref(), Some("text/plain"));

    let binary = [0u8, 0xff, 0x10, 0x80];
    let out = ok(&mapping(), &meta, &binary);
    assert_eq!(
        out.event.data,
        Data::Binary(Bytes::copy_from_slice(&binary))
    );
    let json: Value = serde_json::from_slice(&out.event.to_structured_json()).unwrap();
    assert_eq!(json["data_base64"], "AP8QgA==");
}

#[test]
fn bridge_content_type_applies_when_the_message_has_none() {
    let mut mapping = mapping();
    mapping.default_content_type = Some("text/csv".into());
    let out = ok(&mapping, &meta(), b"a,b\n1,2\n");
    assert_eq!(out.event.datacontenttype.as_deref(), Some("text/csv"));
    assert!(matches!(out.event.data, Data::Binary(_)));
}

#[test]
fn empty_payload_is_empty_binary_data() {
    let out = ok(&mapping(), &meta(), b"");
    assert_eq!(out.event.data, Data::Binary(Bytes::new()));
}

#[test]
fn payload_formats() {
    let mut strict = mapping();
    strict.format = PayloadFormat::Json;
    assert_eq!(
        rejected(&strict, &meta(), b"{ not json"),
        RejectReason::InvalidJson
    );
    assert_eq!(rejected(&strict, &meta(), b""), RejectReason::InvalidJson);
    let out = ok(&strict, &meta(), br#"{"a":1}"#);
    assert!(matches!(out.event.data, Data::Json(_)));

    let mut raw = mapping();
    raw.format = PayloadFormat::Raw;
    let out = ok(&raw, &meta(), br#"{"a":1}"#);
    assert_eq!(
        out.event.data,
        Data::Binary(Bytes::from_static(br#"{"a":1}"#))
    );

    // Auto: a JSON content type over bytes that are not JSON is poison.
    let mut meta = meta();
    meta.content_type = Some("application/json".into());
    let reject = normalize(&mapping(), &meta, &Bytes::from_static(b"nope")).unwrap_err();
    assert_eq!(reject.reason, RejectReason::InvalidJson);
    assert!(
        reject.detail.contains("application/json"),
        "{}",
        reject.detail
    );
}

#[test]
fn messages_over_max_message_bytes_are_rejected() {
    let mut mapping = mapping();
    mapping.max_message_bytes = 4;
    assert_eq!(
        ok(&mapping, &meta(), b"1234").event.data,
        Data::Json(Bytes::from_static(b"1234"))
    );
    let reject = normalize(&mapping, &meta(), &Bytes::from_static(b"12345")).unwrap_err();
    assert_eq!(reject.reason, RejectReason::TooLarge);
    assert!(reject.detail.contains("max_message_bytes = 4"));
}

#[test]
fn type_from_fixed_subject_header_and_json_pointer() {
    let mut meta = meta();
    meta.headers = headers(&[("X-Event", "shipped")]);
    let payload = br#"{"kind":{"name":"refund"}}"#;
    for (template, expected) in [
        ("com.acme.order", "com.acme.order"),
        ("{subject}", "orders.created"),
        ("com.acme.{subject[1]}", "com.acme.created"),
        ("com.acme.{header:x-event}", "com.acme.shipped"),
        ("com.acme.{json:/kind/name}", "com.acme.refund"),
    ] {
        let mut mapping = mapping();
        mapping.event_type = Template::parse(template).unwrap();
        let out = ok(&mapping, &meta, payload);
        assert_eq!(out.event.ty, expected, "{template}");
    }
}

#[test]
fn unresolved_type_is_rejected() {
    for template in ["{header:X-Missing}", "{json:/nope}", "{subject[9]}"] {
        let mut mapping = mapping();
        mapping.event_type = Template::parse(template).unwrap();
        assert_eq!(
            rejected(&mapping, &meta(), br#"{"a":1}"#),
            RejectReason::UnresolvedTemplate,
            "{template}"
        );
    }
    // A JSON pointer cannot resolve in a payload that is not JSON.
    let mut mapping = mapping();
    mapping.event_type = Template::parse("{json:/a}").unwrap();
    assert_eq!(
        rejected(&mapping, &meta(), b"plain"),
        RejectReason::UnresolvedTemplate
    );
}

#[test]
fn time_comes_from_time_field_then_transport_then_receipt() {
    let transport = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut with_transport_time = meta();
    with_transport_time.time = Some(transport);

    // No time_field: the transport time, else the receive time.
    let out = ok(
        &mapping(),
        &with_transport_time,
        br#"{"ts":"2020-05-06T07:08:09Z"}"#,
    );
    assert_eq!(out.event.time.as_deref(), Some("2026-01-01T00:00:00Z"));
    let out = ok(&mapping(), &meta(), b"{}");
    assert_eq!(out.event.time.as_deref(), Some("2026-03-04T05:06:07Z"));

    let mut mapping = mapping();
    mapping.time_pointer = Some("/ts".into());
    for (payload, expected) in [
        (
            br#"{"ts":"2020-05-06T07:08:09+02:00"}"#.as_slice(),
            "2020-05-06T05:08:09Z",
        ),
        (br#"{"ts":1588748889}"#.as_slice(), "2020-05-06T07:08:09Z"),
        (
            br#"{"ts":1588748889123}"#.as_slice(),
            "2020-05-06T07:08:09.123Z",
        ),
    ] {
        let out = ok(&mapping, &with_transport_time, payload);
        assert_eq!(out.event.time.as_deref(), Some(expected));
    }
    // A missing or unusable field falls back to the transport time.
    let out = ok(&mapping, &with_transport_time, br#"{"ts":"soon"}"#);
    assert_eq!(out.event.time_utc, Some(transport));
    let out = ok(&mapping, &with_transport_time, br#"{"other":1}"#);
    assert_eq!(out.event.time_utc, Some(transport));
}

#[test]
fn attributes_id_source_subject_and_tenant() {
    let out = ok(&mapping(), &meta(), b"{}");
    let event = &out.event;
    assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "{}", event.id);
    assert_eq!(event.source, "nats://127.0.0.1:4222/orders.created");
    assert_eq!(event.subject.as_deref(), Some("orders.created"));
    assert_eq!(
        event.extensions["tenant"],
        ExtensionValue::String("acme".into())
    );
    assert_eq!(out.routing_key, "event.acme.orders.orders_created");

    let mut meta = meta();
    meta.id = Some("ORDERS:17".into());
    meta.extensions = vec![("partitionkey".into(), "k1".into())];
    let mut mapping = mapping();
    mapping.source_uri = Some("/shop/orders".into());
    let event = ok(&mapping, &meta, b"{}").event;
    assert_eq!(event.id, "ORDERS:17");
    assert_eq!(event.source, "/shop/orders");
    assert_eq!(
        event.extensions["partitionkey"],
        ExtensionValue::String("k1".into())
    );
}

#[test]
fn routing_keys_escape_the_type_and_are_never_cut() {
    let mut mapping = mapping();
    mapping.event_type = Template::fixed("com.github.push *#");
    assert_eq!(
        ok(&mapping, &meta(), b"{}").routing_key,
        "event.acme.orders.com_github_push~20~2A~23"
    );
    mapping.event_type = Template::fixed("pull_request");
    assert_eq!(
        ok(&mapping, &meta(), b"{}").routing_key,
        "event.acme.orders.pull~5Frequest"
    );
    mapping.event_type = Template::fixed(&"t".repeat(300));
    assert_eq!(rejected(&mapping, &meta(), b"{}"), RejectReason::TooLong);
    assert_eq!(mapping.deadletter_key(&meta()), "deadletter.acme.orders");
}

#[test]
fn long_transport_ids_become_digests_and_long_passed_through_ids_are_refused() {
    let mut meta = meta();
    let long = "k".repeat(300);
    meta.id = Some(long.clone());
    let event = ok(&mapping(), &meta, b"{}").event;
    assert_eq!(event.id, short_string::fitting_id(&long));
    assert_eq!(
        event.extensions.get(ORIGINAL_ID_EXTENSION),
        Some(&ExtensionValue::String(long.clone()))
    );
    assert_eq!(ok(&mapping(), &meta, b"{}").event.id, event.id, "stable");
    meta.id = Some("k".repeat(MAX_ORIGINAL_ID_BYTES + 1));
    let event = ok(&mapping(), &meta, b"{}").event;
    assert!(event.id.starts_with("sha256:"));
    assert!(
        !event.extensions.contains_key(ORIGINAL_ID_EXTENSION),
        "bounded"
    );

    let mut meta = self::meta();
    meta.content_type = Some("application/cloudevents+json".into());
    let payload =
        format!(r#"{{"specversion":"1.0","id":"{long}","source":"/s","type":"t","data":{{}}}}"#);
    assert_eq!(
        rejected(&mapping(), &meta, payload.as_bytes()),
        RejectReason::TooLong
    );
    let mut meta = self::meta();
    meta.content_type = Some(format!("application/x-{}", "c".repeat(300)));
    assert_eq!(rejected(&mapping(), &meta, b"abc"), RejectReason::TooLong);
}

#[test]
fn structured_cloudevents_pass_through_with_the_tenant_added() {
    let payload = br#"{"specversion":"1.0","id":"up-1","source":"/devices/7","type":"com.acme.reading","subject":"temp","time":"2026-02-03T04:05:06.789+01:00","myext":5,"data":{ "c" : 21.50 }}"#;
    let mut meta = meta();
    meta.content_type = Some("application/cloudevents+json; charset=utf-8".into());
    meta.id = Some("transport-id".into());
    let mut mapping = mapping();
    mapping.event_type = Template::fixed("ignored.for.cloudevents");
    let out = ok(&mapping, &meta, payload);
    let event = &out.event;
    assert_eq!(event.id, "up-1");
    assert_eq!(event.source, "/devices/7");
    assert_eq!(event.ty, "com.acme.reading");
    assert_eq!(event.subject.as_deref(), Some("temp"));
    assert_eq!(event.time.as_deref(), Some("2026-02-03T04:05:06.789+01:00"));
    assert_eq!(event.extensions["myext"], ExtensionValue::Json("5".into()));
    assert_eq!(
        event.extensions["tenant"],
        ExtensionValue::String("acme".into())
    );
    assert_eq!(
        event.data,
        Data::Json(Bytes::from_static(b"{ \"c\" : 21.50 }"))
    );
    assert_eq!(out.routing_key, "event.acme.orders.com_acme_reading");
}

/// An empty type (a notification record without an `eventName`) is an invalid
/// CloudEvent, not a routing problem.
#[test]
fn an_empty_type_is_an_invalid_cloudevent() {
    let mut meta = meta();
    meta.default_type = Some(String::new());
    assert_eq!(
        rejected(&mapping(), &meta, b"{}"),
        RejectReason::InvalidCloudEvent
    );
}

#[test]
fn binary_cloudevents_pass_through_for_every_header_prefix() {
    for prefix in BINARY_HEADER_PREFIXES {
        let mut meta = meta();
        meta.content_type = Some("text/plain".into());
        meta.headers = vec![
            (format!("{prefix}specversion"), "1.0".into()),
            (format!("{prefix}id"), "b-1".into()),
            (format!("{prefix}source"), "/edge".into()),
            (format!("{prefix}type"), "com.acme.ping".into()),
            (format!("{prefix}traceparent"), "00-abc-def-01".into()),
        ];
        let out = ok(&mapping(), &meta, b"pong");
        assert_eq!(out.event.id, "b-1", "{prefix}");
        assert_eq!(out.event.ty, "com.acme.ping");
        assert_eq!(out.event.data, Data::Binary(Bytes::from_static(b"pong")));
        assert_eq!(out.event.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(
            out.event.extensions["traceparent"].as_text(),
            "00-abc-def-01"
        );
        assert_eq!(out.event.extensions["tenant"].as_text(), "acme");
    }
}

#[test]
fn malformed_inbound_cloudevents_are_rejected() {
    let mut structured = meta();
    structured.content_type = Some("application/cloudevents+json".into());
    for payload in [
        b"not json".as_slice(),
        br#"{"specversion":"1.0","id":"1","source":"/s"}"#,
        br#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
    ] {
        assert_eq!(
            rejected(&mapping(), &structured, payload),
            RejectReason::InvalidCloudEvent
        );
    }
    let mut binary = meta();
    binary.headers = headers(&[("ce-specversion", "1.0"), ("ce-id", "1")]);
    let reject = normalize(&mapping(), &binary, &Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(reject.reason, RejectReason::InvalidCloudEvent);
    assert!(reject.detail.contains("source"), "{}", reject.detail);
}

#[test]
fn tenant_from_a_subject_token_or_a_header() {
    let mut mapping = mapping();
    mapping.tenant = TenantRule::Template(Template::parse("{subject[1]}").unwrap());
    mapping.subject_separator = Some('/');
    let mut meta = meta();
    meta.subject = Some("tenants/globex/sensors/t1".into());
    let out = ok(&mapping, &meta, b"{}");
    assert_eq!(out.event.extensions["tenant"].as_text(), "globex");
    assert!(out.routing_key.starts_with("event.globex.orders."));
    assert_eq!(mapping.deadletter_key(&meta), "deadletter.globex.orders");

    mapping.tenant = TenantRule::Template(Template::parse("{header:X-Tenant}").unwrap());
    let reject = normalize(&mapping, &meta, &Bytes::from_static(b"{}")).unwrap_err();
    assert_eq!(reject.reason, RejectReason::UnresolvedTemplate);
    assert!(reject.detail.starts_with("tenant:"), "{}", reject.detail);
    assert_eq!(mapping.deadletter_key(&meta), "deadletter._.orders");
    meta.headers = headers(&[("x-tenant", "initech")]);
    assert_eq!(
        ok(&mapping, &meta, b"{}").event.extensions["tenant"].as_text(),
        "initech"
    );
}

/// `acme.eu` and `acme_eu` can never share a routing word: the one that is not a
/// valid word is dead-lettered as `invalid_tenant` under `deadletter._.<source>`,
/// the other routes as it stands.
#[test]
fn invalid_tenants_are_dead_lettered_never_rewritten() {
    let mut mapping = mapping();
    mapping.tenant = TenantRule::Template(Template::parse("{header:X-Tenant}").unwrap());
    let with_tenant = |tenant: &str| {
        let mut meta = meta();
        meta.headers = headers(&[("X-Tenant", tenant)]);
        meta
    };
    let out = ok(&mapping, &with_tenant("acme_eu"), b"{}");
    assert!(out.routing_key.starts_with("event.acme_eu.orders."));
    assert_eq!(out.event.extensions["tenant"].as_text(), "acme_eu");
    for invalid in ["acme.eu", "acme eu", "*", "#", "é", "_", &"t".repeat(65)] {
        let meta = with_tenant(invalid);
        let reject = normalize(&mapping, &meta, &Bytes::from_static(b"{}")).unwrap_err();
        assert_eq!(reject.reason, RejectReason::InvalidTenant, "{invalid}");
        assert_eq!(mapping.deadletter_key(&meta), "deadletter._.orders");
    }
    assert_eq!(RejectReason::InvalidTenant.label(), "invalid_tenant");
    assert!(RejectReason::ALL.contains(&RejectReason::InvalidTenant));
}

/// `{subject[N]}` splits on the transport's separator only: on MQTT (`/`) the topic
/// `a.b/c` has the level `a.b`, which is not a valid tenant, never the tenant `b`.
#[test]
fn subject_tenants_split_on_the_transport_separator_only() {
    let mut mapping = mapping();
    mapping.tenant = TenantRule::Template(Template::parse("{subject[0]}").unwrap());
    mapping.subject_separator = Some('/');
    let mut meta = meta();
    meta.subject = Some("a.b/c".into());
    assert_eq!(
        rejected(&mapping, &meta, b"{}"),
        RejectReason::InvalidTenant
    );
    meta.subject = Some("acme/c".into());
    assert!(
        ok(&mapping, &meta, b"{}")
            .routing_key
            .starts_with("event.acme.")
    );
    // Kafka: a topic is one token.
    mapping.subject_separator = None;
    mapping.tenant = TenantRule::Template(Template::parse("{subject[1]}").unwrap());
    meta.subject = Some("orders.acme".into());
    assert_eq!(
        rejected(&mapping, &meta, b"{}"),
        RejectReason::UnresolvedTemplate
    );
}

const NOTIFICATION: &[u8] = br#"{"Records":[
    {"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"uploads"},
     "object":{"key":"globex/x.json","sequencer":"01"}}},
    {"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"photos"},
     "object":{"key":"initech/y.json","sequencer":"02"}}}]}"#;

fn notifications(mapping: &Mapping, meta: &Metadata) -> Result<Vec<Normalized>, Reject> {
    normalize_message(mapping, meta, &Bytes::from_static(NOTIFICATION))
}

/// s3-notification: without `bucket_tenants` the tenant template resolves against the
/// transport (the subject the notification arrived on), never the record's key;
/// `{subject[N]}` in `type` splits the record's key on `/`.
#[test]
fn notification_tenants_come_from_the_transport_not_the_document() {
    let mut mapping = mapping();
    mapping.format = PayloadFormat::S3Notification;
    mapping.tenant = TenantRule::Template(Template::parse("{subject[1]}").unwrap());
    mapping.event_type = Template::parse("com.acme.{subject[0]}").unwrap();
    mapping.type_configured = true;
    let mut meta = meta();
    meta.subject = Some("minio.acme".into());
    let events = notifications(&mapping, &meta).unwrap();
    assert_eq!(events.len(), 2);
    for (out, folder) in events.iter().zip(["globex", "initech"]) {
        assert_eq!(out.event.extensions["tenant"].as_text(), "acme");
        assert_eq!(out.event.ty, format!("com.acme.{folder}"));
        assert!(out.routing_key.starts_with("event.acme.orders."));
    }
    meta.subject = Some("minio".into());
    let reject = notifications(&mapping, &meta).unwrap_err();
    assert_eq!(reject.reason, RejectReason::UnresolvedTemplate);
    assert_eq!(mapping.deadletter_key(&meta), "deadletter._.orders");
    // A test event has no records, so no tenant to resolve.
    let test_event = Bytes::from_static(br#"{"Event":"s3:TestEvent"}"#);
    assert_eq!(normalize_message(&mapping, &meta, &test_event), Ok(vec![]));
}

/// `bucket_tenants`: each record's tenant is its bucket's; a record of a bucket
/// without one dead-letters the whole message as `invalid_tenant`.
#[test]
fn notification_tenants_by_bucket() {
    let mut mapping = mapping();
    mapping.format = PayloadFormat::S3Notification;
    mapping.tenant = TenantRule::Buckets(
        [("uploads", "acme"), ("photos", "globex")]
            .map(|(b, t)| (b.to_owned(), t.to_owned()))
            .into(),
    );
    let events = notifications(&mapping, &meta()).unwrap();
    let tenants: Vec<&str> = events
        .iter()
        .map(|out| out.event.extensions["tenant"].as_text())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(
        events[1].routing_key,
        "event.globex.orders.s3~3AObjectCreated~3APut"
    );
    mapping.tenant = TenantRule::Buckets([("uploads".into(), "acme".into())].into());
    let reject = notifications(&mapping, &meta()).unwrap_err();
    assert_eq!(reject.reason, RejectReason::InvalidTenant);
    assert!(reject.detail.contains("photos"), "{}", reject.detail);
    assert_eq!(mapping.deadletter_key(&meta()), "deadletter._.orders");
}

#[test]
fn an_inbound_tenant_extension_is_replaced_by_the_configured_tenant() {
    // The tenant comes from configuration, never from unchecked message content.
    let mut meta = meta();
    meta.headers = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-tenant", "evil"),
    ]);
    let out = ok(&mapping(), &meta, b"{}");
    assert_eq!(out.event.extensions["tenant"].as_text(), "acme");
    assert!(out.routing_key.starts_with("event.acme."));
}
