//! The oversell race through the whole saga: 1,000 orders of one unit race for a stock of 100.
//! Exactly 100 are confirmed, the other 900 are cancelled, and stock never goes negative.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use support::{TestEnv, eventually, order_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_for_a_hundred_units_confirm_exactly_a_hundred() {
    let mut env = TestEnv::new().await;
    env.config.payment.latency_ms = 2;
    let app = env.spawn(support::SAGA).await;
    support::create_product(&app.base, "HOT", 1_000, 100).await;

    let statuses: Vec<u16> = futures::stream::iter(0..1_000)
        .map(|i| {
            let app = &app;
            async move {
                app.place_order(&order_body(&format!("racer-{i}"), &[("HOT", 1)]))
                    .await
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 201));

    eventually(Duration::from_secs(180), "all 1,000 orders end", || async {
        (env.count("SELECT count(*) FROM orders.orders WHERE status = 'PENDING'")
            .await
            == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .await,
        100
    );
    assert_eq!(
        env.count("SELECT count(*) FROM orders.orders WHERE status = 'CANCELLED'")
            .await,
        900
    );
    assert_eq!(
        env.count("SELECT min(on_hand - reserved)::bigint FROM inventory.products")
            .await,
        0
    );
    let initial: HashMap<String, i64> = [("HOT".to_owned(), 100)].into();
    let report = eventually(Duration::from_secs(60), "the invariants hold", || async {
        let r = orderflow::invariants::check(&env.pool, Some(&initial))
            .await
            .ok()?;
        r.is_clean().then_some(r)
    })
    .await;
    assert_eq!(report.confirmed, 100);
    app.app.shutdown().await;
    env.cleanup().await;
}
