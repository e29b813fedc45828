//! Dead letters: a record that can never be handled, or that keeps failing, goes to its
//! topic's `.dlq` with the error, the partition keeps flowing, and `dlq list|replay` see and
//! re-drive it.

mod support;

use std::time::Duration;

use chrono::Utc;
use orderflow::domain::envelope::{AuthorizePayment, Envelope, OrderConfirmed, topics};
use orderflow::domain::ids::OrderId;
use orderflow::domain::money::Currency;
use orderflow::infra::dlq;
use support::{TestEnv, eventually, publish};

const WAIT: Duration = Duration::from_secs(60);

async fn publish_raw(env: &TestEnv, logical: &str, key: &str, payload: &[u8]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.config.kafka.brokers)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    producer
        .send(
            FutureRecord::to(&env.config.topic(logical))
                .key(key)
                .payload(payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_exhausted_records_are_dead_lettered_listed_and_replayed() {
    let mut env = TestEnv::new().await;
    env.config.bridge.max_attempts = 2;
    env.config.bridge.retry_initial_ms = 50;
    env.config.bridge.retry_max_ms = 200;
    let app = env.spawn(support::SAGA).await;

    // Not an envelope at all, and an envelope the inventory service does not handle.
    let key = OrderId::new().to_string();
    publish_raw(&env, topics::ORDER_COMMANDS, &key, b"{this is not json").await;
    let eur = Currency::parse("EUR").unwrap_or_else(|| unreachable!());
    let stray = Envelope::new(
        OrderId::new(),
        &OrderConfirmed {
            total_minor: 1,
            currency: eur,
            customer_id: None,
            lines: Vec::new(),
        },
        Utc::now(),
    );
    publish(&env.config, topics::INVENTORY_COMMANDS, &stray).await;
    // A payment whose network never answers: retried, then dead-lettered.
    let unavailable = Envelope::new(
        OrderId::new(),
        &AuthorizePayment {
            amount_minor: 100,
            currency: eur,
            card_token: "tok_unavailable".into(),
        },
        Utc::now(),
    );
    publish(&env.config, topics::PAYMENT_COMMANDS, &unavailable).await;

    let letters = eventually(WAIT, "three dead letters", || async {
        let l = dlq::list(&env.config).await.ok()?;
        (l.len() >= 3).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 3);
    let by_source = |t: &str| {
        letters
            .iter()
            .find(|l| l.source_topic == env.config.topic(t))
            .unwrap_or_else(|| panic!("no dead letter from {t}: {letters:?}"))
    };
    assert!(
        by_source(topics::ORDER_COMMANDS)
            .error
            .contains("not a valid envelope")
    );
    assert!(
        by_source(topics::INVENTORY_COMMANDS)
            .error
            .contains("does not handle OrderConfirmed")
    );
    let payment = by_source(topics::PAYMENT_COMMANDS);
    assert_eq!(payment.attempts, "2");
    assert!(payment.error.contains("unavailable"), "{}", payment.error);
    assert_eq!(
        payment.order_id.as_deref(),
        Some(unavailable.order_id.to_string().as_str())
    );

    // The partitions kept flowing: a normal order after the poison completes.
    support::create_product(&app.base, "OK", 1, 5).await;
    let placed = app
        .place_order(&support::order_body("c", &[("OK", 1)]))
        .await;
    let id: serde_json::Value = placed.json().await.unwrap_or_default();
    let id = id["order_id"].as_str().unwrap_or_default().to_owned();
    eventually(WAIT, "the order after the poison confirms", || async {
        let o: serde_json::Value = app
            .http
            .get(app.url(&format!("/v1/orders/{id}")))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (o["status"] == "CONFIRMED").then_some(())
    })
    .await;

    // Replay re-drives all three once; they fail again and come back as new dead letters.
    let producer =
        orderflow::infra::kafka::producer(&env.config.kafka).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dlq::replay(&env.config, &producer)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        3
    );
    eventually(
        WAIT,
        "the replayed records are dead-lettered again",
        || async { (dlq::list(&env.config).await.ok()?.len() == 6).then_some(()) },
    )
    .await;
    // The second replay only re-drives what arrived since the first.
    assert_eq!(
        dlq::replay(&env.config, &producer)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        3
    );

    app.app.shutdown().await;
    env.cleanup().await;
}

/// Records waiting behind others for a busy worker are not failing: the handler timeout runs
/// from when a worker starts on a record, so a backlog is neither retried nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_waiting_for_a_busy_worker_is_not_timed_out() {
    const ORDERS: i64 = 16;
    let mut env = TestEnv::new().await;
    // One card-network worker at 200 ms a payment: the last command waits ≈ 3 s for it,
    // three times the handler timeout; two timeouts would dead-letter a command.
    env.config.payment.latency_ms = 200;
    env.config.payment.workers = 1;
    env.config.bridge.handler_timeout_ms = 1_000;
    env.config.bridge.max_attempts = 2;
    env.config.saga.payment_timeout_ms = 60_000;
    let app = env.spawn(support::SAGA).await;
    support::create_product(&app.base, "BACKLOG", 10, 1_000).await;
    app.place_orders("bl", "BACKLOG", ORDERS as usize).await;
    eventually(WAIT, "every order confirms", || async {
        let confirmed = env
            .count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .await;
        (confirmed == ORDERS).then_some(())
    })
    .await;
    let dlq = format!("{}{}", topics::PAYMENT_COMMANDS, topics::DLQ_SUFFIX);
    assert_eq!(
        support::topic_size(&env.config, &dlq),
        0,
        "queued payment commands were dead-lettered"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM card_network.charges").await,
        ORDERS
    );
    drop(app);
    env.cleanup().await;
}
