//! Whole-process kills: orders whose transaction committed are never lost, whatever instant the
//! process dies at. After a restart every committed order's `OrderPlaced` is on the topic
//! (duplicates allowed), every saga reaches a terminal state, no order is charged twice, and
//! stock is conserved (the invariant checker is clean).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use orderflow::domain::envelope::topics;
use serde_json::Value;
use sqlx::Row;
use support::{ChildProcess, TestEnv, eventually, order_body, read_topic, topic_size};

const WAIT: Duration = Duration::from_secs(120);

async fn order_ids(env: &TestEnv) -> HashSet<String> {
    sqlx::query("SELECT id::text FROM orders.orders")
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
        .collect()
}

/// After restart: every committed order is on the topic, every saga ends, and the invariant
/// checker finds orders, payments and stock consistent.
async fn assert_nothing_lost(
    env: &TestEnv,
    committed: &HashSet<String>,
    initial: &HashMap<String, i64>,
) {
    let seen = read_topic(&env.config, topics::ORDER_EVENTS, WAIT, |s| {
        let placed: HashSet<&str> = s
            .iter()
            .filter(|r| r.envelope.kind == "OrderPlaced")
            .map(|r| r.key.as_str())
            .collect();
        committed.iter().all(|id| placed.contains(id.as_str()))
    })
    .await;
    assert!(!seen.is_empty());
    eventually(
        WAIT,
        "every committed order reaches a terminal state",
        || async {
            (env.count("SELECT count(*) FROM orders.orders WHERE status = 'PENDING'")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
    // Compensation and commits finish after the order's status is final.
    let report = eventually(WAIT, "orders, payments and stock reconcile", || async {
        let report = orderflow::invariants::check(&env.pool, Some(initial))
            .await
            .ok()?;
        report.is_clean().then_some(report)
    })
    .await;
    assert_eq!(report.orders, committed.len() as i64);
    assert_eq!(report.confirmed + report.cancelled, report.orders);
    // The sagas' last outbox rows (their announcements) are published shortly after.
    eventually(WAIT, "every outbox row is published", || async {
        (env.count("SELECT count(*) FROM orders.outbox").await == 0).then_some(())
    })
    .await;
}

async fn stock(url: &str, sku: &str, on_hand: i64) {
    support::create_product(url, sku, 500, on_hand).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_committed_but_unpublished_at_sigkill_are_published_and_recorded_once_after_restart()
{
    let env = TestEnv::new().await;
    // An intake-only process that leaves publishing to the relay (which only processes of the
    // order service run): orders commit with their outbox rows and nothing publishes them —
    // the window a crash between commit and publish leaves open, held open on purpose.
    let intake = ChildProcess::start(
        &env,
        "api",
        &[("ORDERFLOW_OUTBOX_PUBLISH_ON_COMMIT", "false")],
    )
    .await;
    let initial: HashMap<String, i64> =
        [("SKU-1".to_owned(), 30), ("SKU-2".to_owned(), 1_000)].into();
    for (sku, n) in &initial {
        stock(&intake.base, sku, *n).await;
    }
    let http = support::admin_client();
    let mut accepted = HashSet::new();
    for i in 0..40 {
        let resp = http
            .post(intake.url("/v1/orders"))
            .json(&order_body(
                &format!("c{}", i % 4),
                &[("SKU-1", 1), ("SKU-2", 2)],
            ))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap_or_default();
        accepted.insert(body["order_id"].as_str().unwrap_or_default().to_owned());
    }
    // Per order `OrderPlaced` and the saga's first command, `ReserveStock`.
    assert_eq!(env.count("SELECT count(*) FROM orders.outbox").await, 80);
    intake.kill().await;
    assert_eq!(
        topic_size(&env.config, topics::ORDER_EVENTS),
        0,
        "nothing was published before the kill"
    );
    assert_eq!(order_ids(&env).await, accepted);

    let full = ChildProcess::start(&env, "all", &[]).await;
    assert_nothing_lost(&env, &accepted, &initial).await;
    // 40 orders of one SKU-1 each against 30 in stock: exactly 30 sold.
    assert_eq!(
        env.count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
            .await,
        30
    );
    assert!(full.terminate().await, "SIGTERM ends the process cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_committed_order() {
    let env = TestEnv::new().await;
    let first = ChildProcess::start(&env, "all", &[]).await;
    let initial: HashMap<String, i64> = [("SKU-L".to_owned(), 3_000)].into();
    stock(&first.base, "SKU-L", 3_000).await;
    let url = first.url("/v1/orders");
    let accepted = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicUsize::new(0));

    // Eight clients post as fast as they can; the process is killed mid-stream.
    let mut clients = Vec::new();
    for c in 0..8 {
        let (url, accepted, count) = (url.clone(), accepted.clone(), count.clone());
        clients.push(tokio::spawn(async move {
            let http = support::admin_client();
            for i in 0..300 {
                let mut body = order_body(&format!("load-{c}"), &[("SKU-L", i % 5 + 1)]);
                if i % 10 == 0 {
                    body["card_token"] = "tok_decline".into();
                }
                match http.post(&url).json(&body).send().await {
                    Ok(resp) if resp.status().as_u16() == 201 => {
                        let v: Value = resp.json().await.unwrap_or_default();
                        if let Some(id) = v["order_id"].as_str() {
                            accepted
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(id.to_owned());
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(resp) => panic!("unexpected status {}", resp.status()),
                    Err(_) => break, // the process is gone
                }
            }
        }));
    }
    eventually(WAIT, "1,000 orders accepted before the kill", || async {
        (count.load(Ordering::Relaxed) >= 1_000).then_some(())
    })
    .await;
    first.kill().await;
    for c in clients {
        let _ = c.await;
    }
    let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // A COMMIT the killed process sent may still be running in its server backend: wait until
    // no statement of anyone else runs on this database before reading what committed.
    eventually(
        WAIT,
        "the killed process's last statements finish",
        || async {
            (env.count(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'",
            )
            .await
                == 0)
                .then_some(())
        },
    )
    .await;
    let committed = order_ids(&env).await;
    // Every 201 is durable; a request cut off by the kill may have committed too.
    assert!(
        accepted.is_subset(&committed),
        "an accepted order is missing from PostgreSQL"
    );
    assert!(committed.len() >= 1_000);

    let second = ChildProcess::start(&env, "all", &[]).await;
    assert_nothing_lost(&env, &committed, &initial).await;
    assert!(second.terminate().await);
    env.cleanup().await;
}
