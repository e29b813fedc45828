//! Admission control against the real servers: beyond `http.max_open_orders` orders in
//! progress the intake answers 503 `overloaded` at once and stores nothing; once orders reach
//! their end (seen by the status hub on Kafka) it takes new ones again.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{SAGA, TestEnv, create_product, eventually, metric_sum, order_body};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_beyond_the_bound_are_refused_until_open_ones_finish() {
    let mut env = TestEnv::new().await;
    env.config.http.max_open_orders = 2;
    // Two orders on the slow card stay open long enough to fill the bound.
    env.config.payment.slow_latency_ms = 1_500;
    let app = env.spawn(SAGA).await;
    create_product(&app.base, "OVER-1", 1_000, 100).await;
    let slow = |customer: &str| {
        let mut body = order_body(customer, &[("OVER-1", 1)]);
        body["card_token"] = "tok_slow".into();
        body
    };
    let first = app.place_order_id(&slow("over-a")).await;
    let second = app.place_order_id(&slow("over-b")).await;

    let refused = app
        .place_order(&order_body("over-c", &[("OVER-1", 1)]))
        .await;
    assert_eq!(refused.status().as_u16(), 503);
    let header = |name: &str| {
        refused
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/problem+json")
    );
    let problem: Value = refused.json().await.unwrap_or_default();
    assert_eq!(problem["code"], "overloaded", "{problem}");
    assert_eq!(
        env.count("SELECT count(*) FROM orders.orders WHERE customer_id = 'over-c'")
            .await,
        0,
        "a refused order leaves nothing behind"
    );
    let text = app.metrics().await;
    assert_eq!(
        metric_sum(
            &text,
            "orderflow_orders_rejected_total",
            &["code=\"overloaded\""]
        ),
        1.0
    );
    assert_eq!(metric_sum(&text, "orderflow_intake_open_orders", &[]), 2.0);

    for id in [&first, &second] {
        eventually(WAIT, "the slow orders confirmed", || async {
            let order = app.get_json(&format!("/v1/orders/{id}")).await;
            (order["status"] == "CONFIRMED").then_some(())
        })
        .await;
    }
    // Their terminal events reach the hub shortly after the state is stored.
    eventually(Duration::from_secs(15), "an order taken again", || async {
        let resp = app
            .place_order(&order_body("over-d", &[("OVER-1", 1)]))
            .await;
        (resp.status().as_u16() == 201).then_some(())
    })
    .await;
    app.app.shutdown().await;
    env.cleanup().await;
}
