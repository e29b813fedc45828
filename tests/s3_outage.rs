//! S3 stops while orders flow: the circuit opens, orders still confirm, and once S3 is back
//! every confirmed order has exactly one invoice. The test runs its own S3 server (the same
//! s3s-fs binary as the local infrastructure, on a free loopback port) so stopping it touches
//! nothing else.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use orderflow::actors::Service;
use serde_json::json;
use support::{Daemon, TestApp, TestEnv, eventually, free_port};

const WAIT: Duration = Duration::from_secs(90);
const ALL: &[Service] = support::THROUGH_FILES;

async fn start_s3(port: u16, dir: &std::path::Path) -> Daemon {
    let args = [
        "--host".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--access-key".to_owned(),
        "orderflow".to_owned(),
        "--secret-key".to_owned(),
        "orderflow-secret".to_owned(),
        dir.display().to_string(),
    ];
    Daemon::start("ORDERFLOW_TEST_S3S_BIN", &args, &[port]).await
}

async fn place(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({
            "customer_id": format!("c{i}"), "currency": "EUR", "card_token": "tok_visa",
            "lines": [{"sku": "PAPER", "quantity": 1}],
        });
        ids.push(app.place_order_id(&body).await);
    }
    ids
}

async fn confirmed(app: &TestApp, ids: &[String]) -> usize {
    let mut n = 0;
    for id in ids {
        if app.get_json(&format!("/v1/orders/{id}")).await["status"] == "CONFIRMED" {
            n += 1;
        }
    }
    n
}

async fn s3_circuit(app: &TestApp) -> String {
    app.get_json("/health/ready").await["circuits"]["s3"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_opens_the_circuit_orders_still_confirm_and_every_invoice_is_stored_once_after() {
    let dir = std::env::temp_dir().join(format!("orderflow-s3-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let s3 = start_s3(port, &dir).await;

    let mut env = TestEnv::new().await;
    env.config.s3.endpoint = format!("http://127.0.0.1:{port}");
    env.config.s3.bucket = "outage-test".into();
    env.config.s3.breaker_failures = 2;
    env.config.s3.breaker_open_ms = 300;
    env.config.bridge.retry_max_ms = 500;
    let app = env.spawn(ALL).await;
    support::create_product(&app.base, "PAPER", 100, 1_000).await;

    let mut ids = place(&app, 5).await;
    eventually(WAIT, "the first invoices are stored", || async {
        (env.count("SELECT count(*) FROM files.documents WHERE kind = 'invoice'")
            .await
            == 5)
            .then_some(())
    })
    .await;

    // S3 goes away; orders keep coming and keep confirming.
    s3.stop().await;
    ids.extend(place(&app, 20).await);
    eventually(WAIT, "orders confirm while S3 is down", || async {
        (confirmed(&app, &ids).await == ids.len()).then_some(())
    })
    .await;
    eventually(WAIT, "the S3 circuit opens", || async {
        (s3_circuit(&app).await == "open").then_some(())
    })
    .await;
    assert!(
        env.count("SELECT count(*) FROM files.documents WHERE kind = 'invoice'")
            .await
            < ids.len() as i64,
        "no invoice can be stored while S3 is down"
    );

    // S3 is back (same port, same data): the waiting invoices are stored, each exactly once.
    let s3 = start_s3(port, &dir).await;
    eventually(
        WAIT,
        "every confirmed order has its invoice and receipt",
        || async {
            (env.count("SELECT count(*) FROM files.documents").await == 2 * ids.len() as i64)
                .then_some(())
        },
    )
    .await;
    assert_eq!(s3_circuit(&app).await, "closed");
    let documented: i64 = env
        .count("SELECT count(DISTINCT order_id) FROM files.documents WHERE kind = 'invoice'")
        .await;
    assert_eq!(documented, ids.len() as i64, "one invoice per order");
    let wanted: HashSet<&String> = ids.iter().collect();
    assert_eq!(wanted.len(), ids.len());
    for id in ids.iter().take(3) {
        let resp = app
            .http
            .get(app.url(&format!("/v1/orders/{id}/invoice?inline")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), 200, "invoice of {id}");
    }
    // Nothing went to the dead-letter topic: the records waited instead.
    assert_eq!(
        support::topic_size(&env.config, "order.events.dlq"),
        0,
        "no dead letters"
    );

    app.app.shutdown().await;
    s3.stop().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
