//! A rebalance that takes partitions away lets their in-flight records finish and commits
//! their offsets before another consumer starts on them, so the new owner does not handle
//! them again. (Its own test binary: it reads the process-wide metrics.)

mod support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use orderflow::domain::envelope::topics;
use support::{TestEnv, eventually, order_body};

const ORDERS: i64 = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_drain_before_they_move_and_nothing_is_handled_twice() {
    let mut env = TestEnv::new().await;
    // One slow card-network worker: payment commands queue up in the bridges, so a rebalance
    // finds records in flight.
    env.config.payment.latency_ms = 250;
    env.config.payment.workers = 1;
    env.config.bridge.drain_timeout_ms = 30_000;
    let a = env.spawn(support::SAGA).await;
    support::create_product(&a.base, "RB", 10, 1_000).await;
    a.place_orders("rb", "RB", ORDERS as usize).await;
    eventually(
        Duration::from_secs(30),
        "the first payment is decided",
        || async { (env.count("SELECT count(*) FROM payment.payments").await > 0).then_some(()) },
    )
    .await;
    let pending = ORDERS - env.count("SELECT count(*) FROM payment.payments").await;
    assert!(
        pending > 4,
        "payments still queued when the second process joins"
    );

    // A second process joins the consumer groups: the first one's partitions are revoked
    // while its payment bridges still have records in flight.
    let b = env.spawn(support::SAGA).await;
    eventually(Duration::from_secs(120), "every order confirms", || async {
        let confirmed = env
            .count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .await;
        (confirmed == ORDERS).then_some(())
    })
    .await;

    // The second process takes partitions over once the group has settled: more orders reach
    // its payment bridges (created on a partition's first record).
    let topic = env.config.topic(topics::PAYMENT_COMMANDS);
    let partitions = env.config.kafka.partitions;
    let placed = AtomicI64::new(ORDERS);
    eventually(
        Duration::from_secs(60),
        "the second process handles payment partitions",
        || async {
            let n = placed.fetch_add(1, Ordering::SeqCst);
            let resp = b
                .place_order(&order_body(&format!("rb{n}"), &[("RB", 1)]))
                .await;
            assert_eq!(resp.status().as_u16(), 201);
            tokio::time::sleep(Duration::from_millis(300)).await;
            (0..partitions)
                .any(|p| {
                    let name = format!("{}/payment-bridge/{topic}/{p}", b.app.instance());
                    ractor::registry::where_is(name).is_some()
                })
                .then_some(())
        },
    )
    .await;
    let placed = placed.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(60),
        "the later orders confirm",
        || async {
            let confirmed = env
                .count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
                .await;
            (confirmed == placed).then_some(())
        },
    )
    .await;

    // Nothing the first process had in flight was handed to the second one again.
    let metrics = a.metrics().await;
    let handled = |outcome: &str| -> f64 {
        support::metric_sum(
            &metrics,
            "orderflow_bridge_records_total",
            &["service=\"payment\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(
        handled("applied"),
        placed as f64,
        "each payment command applied once"
    );
    assert_eq!(handled("duplicate"), 0.0, "payment commands redelivered");
    assert_eq!(
        env.count("SELECT count(*) FROM payment.payments").await,
        placed
    );

    b.app.shutdown().await;
    a.app.shutdown().await;
    env.cleanup().await;
}
