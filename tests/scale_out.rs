//! Two processes in the same consumer groups share the work; when one stops, its partitions
//! and its in-flight sagas move to the other and every order still completes.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::{ChildProcess, TestEnv, eventually, order_body};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_orders_and_one_stopping_hands_its_sagas_over() {
    let env = TestEnv::new().await;
    // Slow payments keep sagas in flight while the first process stops.
    let slow = [("ORDERFLOW_PAYMENT_LATENCY_MS", "300")];
    let a = ChildProcess::start(&env, "all", &slow).await;
    let b = ChildProcess::start(&env, "all", &slow).await;
    let http = support::admin_client();
    support::create_product(&a.base, "SHARED", 100, 1_000).await;

    let mut ids = Vec::new();
    for i in 0..60 {
        let target = if i % 2 == 0 { &a } else { &b };
        let resp = http
            .post(target.url("/v1/orders"))
            .json(&order_body(&format!("c{i}"), &[("SHARED", 1)]))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), 201);
        let v: Value = resp.json().await.unwrap_or_default();
        ids.push(v["order_id"].as_str().unwrap_or_default().to_owned());
    }
    // Both processes worked on sagas before one of them stops.
    eventually(WAIT, "some orders confirmed", || async {
        (env.count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .await
            >= 5)
            .then_some(())
    })
    .await;
    assert!(a.terminate().await, "the first process stops cleanly");

    eventually(
        WAIT,
        "every order completes on the remaining process",
        || async {
            (env.count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
                .await
                == 60)
                .then_some(())
        },
    )
    .await;
    let initial: HashMap<String, i64> = [("SHARED".to_owned(), 1_000)].into();
    eventually(WAIT, "the invariants hold", || async {
        let r = orderflow::invariants::check(&env.pool, Some(&initial))
            .await
            .ok()?;
        r.is_clean().then_some(())
    })
    .await;
    // Orders placed through either API are readable through the survivor.
    for id in &ids {
        let o: Value = http
            .get(b.url(&format!("/v1/orders/{id}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_default();
        assert_eq!(o["status"], "CONFIRMED");
    }
    assert!(b.terminate().await);
    env.cleanup().await;
}
