use super::testing::{PATIENCE, TestExchange, text_header};
use super::*;

fn header(outbound: &Outbound, name: &str) -> Option<String> {
    match outbound.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into()),
        _ => None,
    }
}

#[tokio::test]
async fn dead_letters_always_fit() {
    let publisher = Publisher::start(
        ExchangeConfig {
            // Nothing listens there: encoding needs no connection.
            url: "amqp://127.0.0.1:1/%2f".into(),
            ..Default::default()
        },
        Arc::new(Registry::default()),
    );
    let detail = "é".repeat(3000);
    let subject = "s".repeat(70_000);
    let letter = |payload: &[u8], sample_bytes| DeadLetter {
        routing_key: "deadletter.acme.orders".into(),
        payload: bytes::Bytes::copy_from_slice(payload),
        content_type: Some("application/x-long-content-type-that-does-not-fit"),
        bridge: "orders",
        reason: "too_large",
        detail: &detail,
        subject: Some(&subject),
        sample_bytes,
    };
    let out = publisher.deadletter_message(letter(b"abc", usize::MAX));
    let error = header(&out, ERROR_HEADER).unwrap();
    assert!(error.len() <= MAX_DEADLETTER_HEADER_BYTES && error.ends_with('…'));
    assert!(header(&out, SUBJECT_HEADER).unwrap().len() <= MAX_DEADLETTER_HEADER_BYTES);
    assert_eq!(&out.body[..], b"abc", "a small payload travels whole");
    assert_eq!(header(&out, TRUNCATED_HEADER), None);

    let big = vec![7u8; 10_000];
    let out = publisher.deadletter_message(letter(&big, 100));
    assert_eq!(out.body.len(), 100);
    assert_eq!(header(&out, ORIGINAL_SIZE_HEADER).as_deref(), Some("10000"));
    assert_eq!(
        header(&out, ORIGINAL_SHA256_HEADER).map(|h| h.len()),
        Some(64)
    );
    assert_eq!(header(&out, TRUNCATED_HEADER).as_deref(), Some("true"));
    publisher.shutdown();
}

// Against the real RabbitMQ (`testing`): each test has its own exchange and queues.

/// A publisher for `config`, once it is connected.
async fn connected(config: ExchangeConfig) -> Arc<Publisher> {
    let publisher = Publisher::start(config, Arc::new(Registry::default()));
    tokio::time::timeout(PATIENCE, publisher.connected())
        .await
        .expect("the publisher connects to RabbitMQ on 127.0.0.1:5672")
        .expect("the publisher is not shut down");
    publisher
}

fn outbound(exchange: &str, routing_key: &str, body: &[u8]) -> Outbound {
    Outbound {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        properties: BasicProperties::default().with_delivery_mode(2),
        body: bytes::Bytes::copy_from_slice(body),
    }
}

#[tokio::test]
async fn a_publish_to_a_bound_queue_is_confirmed_routed_and_on_the_queue() {
    let exchange = TestExchange::declare().await;
    let queue = exchange.bind("event.acme.#").await;
    let publisher = connected(exchange.config()).await;

    let message = outbound(&exchange.name, "event.acme.orders.created", br#"{"n":1}"#);
    assert_eq!(
        publisher.publish(&message).await.unwrap(),
        Delivered::Routed
    );

    // Confirmed means enqueued: it is there without waiting.
    let got = exchange.take(&queue).await.expect("the confirmed message");
    assert_eq!(
        got.delivery.routing_key.as_str(),
        "event.acme.orders.created"
    );
    assert_eq!(got.delivery.data, br#"{"n":1}"#);
    assert_eq!(
        *got.delivery.properties.delivery_mode(),
        Some(2),
        "persistent"
    );
    assert_eq!(got.message_count, 0, "published once");
    publisher.shutdown();
}

#[tokio::test]
async fn messages_sent_in_order_arrive_in_order_while_their_confirms_are_awaited_together() {
    let exchange = TestExchange::declare().await;
    let queue = exchange.bind("event.#").await;
    let publisher = connected(exchange.config()).await;

    let mut pending = Vec::new();
    for n in 0..5 {
        let message = outbound(
            &exchange.name,
            "event.acme.orders.n",
            n.to_string().as_bytes(),
        );
        pending.push(publisher.send(&message).await.unwrap());
    }
    let confirms = futures::future::join_all(pending.into_iter().map(PendingConfirm::confirmed));
    for confirmed in confirms.await {
        assert_eq!(confirmed.unwrap(), Delivered::Routed);
    }
    for n in 0..5 {
        let got = exchange
            .take(&queue)
            .await
            .expect("every confirmed message");
        assert_eq!(got.delivery.data, n.to_string().as_bytes());
    }
    assert!(exchange.take(&queue).await.is_none(), "each once");
    publisher.shutdown();
}

#[tokio::test]
async fn a_publish_no_queue_is_bound_for_is_confirmed_unroutable() {
    let exchange = TestExchange::declare().await;
    let acme = exchange.bind("event.acme.#").await;
    let publisher = connected(exchange.config()).await;

    // Mandatory: RabbitMQ returns it before the confirm, which says so.
    let message = outbound(&exchange.name, "event.globex.orders.created", b"{}");
    assert_eq!(
        publisher.publish(&message).await.unwrap(),
        Delivered::Unroutable
    );
    assert!(exchange.take(&acme).await.is_none());

    // The channel goes on: the next routed publish is confirmed as routed.
    let message = outbound(&exchange.name, "event.acme.orders.created", b"{}");
    assert_eq!(
        publisher.publish(&message).await.unwrap(),
        Delivered::Routed
    );
    assert!(exchange.take(&acme).await.is_some());
    publisher.shutdown();
}

#[tokio::test]
async fn a_publish_the_broker_refuses_is_nacked_and_permanent() {
    let exchange = TestExchange::declare().await;
    exchange.bind_refusing("#").await;
    let publisher = connected(exchange.config()).await;

    let message = outbound(&exchange.name, "event.acme.orders.created", b"{}");
    let error = publisher.publish(&message).await.unwrap_err();
    assert!(matches!(error, PublishError::Nacked), "{error}");
    assert!(error.is_permanent(), "publishing it again cannot help");
    assert_eq!(publisher.connects(), 1, "a nack keeps the connection");
    publisher.shutdown();
}

#[tokio::test]
async fn a_dead_letter_goes_to_the_dead_letter_exchange_with_its_reason_headers() {
    let events = TestExchange::declare().await;
    let deadletters = TestExchange::declare().await;
    let events_queue = events.bind("#").await;
    let deadletter_queue = deadletters.bind("deadletter.acme.orders").await;
    let publisher = connected(ExchangeConfig {
        deadletter: Some(deadletters.name.clone()),
        ..events.config()
    })
    .await;

    let letter = publisher.deadletter_message(DeadLetter {
        routing_key: "deadletter.acme.orders".into(),
        payload: bytes::Bytes::from_static(b"{not json"),
        content_type: Some("application/json"),
        bridge: "orders",
        reason: "invalid_json",
        detail: "key must be a string at line 1 column 2",
        subject: Some("orders.created"),
        sample_bytes: usize::MAX,
    });
    assert_eq!(letter.exchange, deadletters.name);
    assert_eq!(publisher.publish(&letter).await.unwrap(), Delivered::Routed);

    let got = deadletters
        .take(&deadletter_queue)
        .await
        .expect("the confirmed dead letter");
    let properties = &got.delivery.properties;
    assert_eq!(got.delivery.routing_key.as_str(), "deadletter.acme.orders");
    assert_eq!(got.delivery.data, b"{not json", "the original bytes");
    assert_eq!(
        properties.content_type().as_ref().map(|ct| ct.as_str()),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        text_header(properties, ERROR_HEADER).as_deref(),
        Some("key must be a string at line 1 column 2")
    );
    assert_eq!(
        text_header(properties, REASON_HEADER).as_deref(),
        Some("invalid_json")
    );
    assert_eq!(
        text_header(properties, BRIDGE_HEADER).as_deref(),
        Some("orders")
    );
    assert_eq!(
        text_header(properties, SUBJECT_HEADER).as_deref(),
        Some("orders.created")
    );
    assert_eq!(
        text_header(properties, TRUNCATED_HEADER),
        None,
        "sent whole"
    );
    assert!(
        events.take(&events_queue).await.is_none(),
        "not on the events exchange"
    );
    publisher.shutdown();
}

#[tokio::test]
async fn an_event_over_the_max_message_size_is_refused_without_publishing() {
    let exchange = TestExchange::declare().await;
    let queue = exchange.bind("#").await;
    let publisher = connected(ExchangeConfig {
        max_message_size: 1024,
        ..exchange.config()
    })
    .await;

    let over = outbound(&exchange.name, "event.acme.orders.big", &[b'x'; 1025]);
    let error = publisher.publish(&over).await.unwrap_err();
    assert!(
        matches!(
            error,
            PublishError::TooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{error}"
    );
    assert!(error.is_permanent(), "publishing it again cannot help");

    // One at the limit goes out on the same channel, and is all the queue holds.
    let at_limit = outbound(&exchange.name, "event.acme.orders.big", &[b'y'; 1024]);
    assert_eq!(
        publisher.publish(&at_limit).await.unwrap(),
        Delivered::Routed
    );
    let got = exchange
        .take(&queue)
        .await
        .expect("the message at the limit");
    assert_eq!(got.delivery.data, [b'y'; 1024]);
    assert_eq!(
        got.message_count, 0,
        "the one over the limit was never sent"
    );
    assert_eq!(publisher.connects(), 1, "the channel was never closed");
    publisher.shutdown();
}
