//! The order saga end to end, all services in one process against the real servers: each way
//! an order can end, with stock and payments consistent afterwards.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use orderflow::actors::Service;
use orderflow::domain::envelope::topics;
use serde_json::{Value, json};
use support::{TestApp, TestEnv, eventually};

const WAIT: Duration = Duration::from_secs(60);
const ALL: &[Service] = support::SAGA;

async fn env_with_short_timeouts() -> TestEnv {
    let mut env = TestEnv::new().await;
    env.config.saga.payment_timeout_ms = 1_500;
    env.config.saga.timer_interval_ms = 100;
    env.config.payment.latency_ms = 5;
    env.config.payment.slow_latency_ms = 4_000;
    env
}

async fn stock(app: &TestApp, sku: &str, price: i64, on_hand: i64) {
    support::create_product(&app.base, sku, price, on_hand).await;
}

async fn order(app: &TestApp, lines: &[(&str, u32)], card: &str) -> String {
    let body = json!({
        "customer_id": "saga-customer", "currency": "EUR", "card_token": card,
        "lines": lines.iter().map(|(s, q)| json!({"sku": s, "quantity": q})).collect::<Vec<_>>(),
    });
    let resp = app
        .http
        .post(app.url("/v1/orders"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 201);
    let v: Value = resp.json().await.unwrap_or_default();
    v["order_id"].as_str().unwrap_or_default().to_owned()
}

/// Waits for the order's terminal status and returns the order.
async fn ended(app: &TestApp, id: &str) -> Value {
    eventually(WAIT, &format!("order {id} ends"), || async {
        let o = app.get_json(&format!("/v1/orders/{id}")).await;
        (o["status"] != "PENDING").then_some(o)
    })
    .await
}

async fn clean(env: &TestEnv, initial: &HashMap<String, i64>) {
    eventually(WAIT, "orders, payments and stock reconcile", || async {
        let r = orderflow::invariants::check(&env.pool, Some(initial))
            .await
            .ok()?;
        r.is_clean().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_confirms_sells_the_stock_and_keeps_the_payment() {
    let env = env_with_short_timeouts().await;
    let app = env.spawn(ALL).await;
    stock(&app, "BOOK", 3_990, 10).await;
    stock(&app, "MUG", 1_250, 10).await;
    let id = order(&app, &[("BOOK", 1), ("MUG", 2)], "tok_visa").await;
    let o = ended(&app, &id).await;
    assert_eq!(o["status"], "CONFIRMED");
    let payment = app.get_json(&format!("/v1/orders/{id}/payment")).await;
    assert_eq!(payment["status"], "AUTHORIZED");
    assert_eq!(payment["amount_minor"], 3_990 + 2 * 1_250);
    eventually(WAIT, "the stock is sold", || async {
        let b = app.get_json("/v1/products/BOOK").await;
        (b["on_hand"] == 9 && b["reserved"] == 0).then_some(())
    })
    .await;
    // The announcement carries what an invoice needs: the buyer and the priced, named lines.
    let events = support::read_topic(&env.config, topics::ORDER_EVENTS, WAIT, |seen| {
        seen.iter().any(|s| s.envelope.kind == "OrderConfirmed")
    })
    .await;
    let confirmed = events
        .iter()
        .find(|s| s.envelope.kind == "OrderConfirmed")
        .map(|s| s.envelope.payload.clone())
        .unwrap_or_default();
    assert_eq!(confirmed["customer_id"], "saga-customer");
    assert_eq!(confirmed["total_minor"], 3_990 + 2 * 1_250);
    let lines: Vec<(String, String, u64, i64)> = confirmed["lines"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| {
            (
                l["sku"].as_str().unwrap_or_default().to_owned(),
                l["name"].as_str().unwrap_or_default().to_owned(),
                l["quantity"].as_u64().unwrap_or_default(),
                l["unit_price_minor"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("BOOK".into(), "Product BOOK".into(), 1, 3_990),
            ("MUG".into(), "Product MUG".into(), 2, 1_250),
        ]
    );
    clean(&env, &[("BOOK".into(), 10), ("MUG".into(), 10)].into()).await;
    app.app.shutdown().await;
    env.cleanup().await;
}

/// Table statistics of the test database: (rows read by sequential scans, rows inserted) of
/// `table`. (Rows, not scans: the migrations' index builds scan the tables while empty.)
async fn scans_and_inserts(env: &TestEnv, table: &str) -> (i64, i64) {
    use sqlx::Row;
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    sqlx::query(
        "SELECT seq_tup_read, n_tup_ins FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(schema)
    .bind(name)
    .fetch_one(&env.pool)
    .await
    .and_then(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
    .unwrap_or_else(|e| panic!("statistics of {table}: {e}"))
}

/// The steps' statements are planned once per connection (generic plans) while the tables are
/// still nearly empty; they must find the journal and the saga states by their keys all the
/// same. (Planned as scans, they read both tables whole on every step until the first ANALYZE.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_steps_find_the_journal_and_states_by_key_on_a_new_database() {
    let mut env = TestEnv::new().await;
    // The deadline sweep reads the (tiny) state table by a scan while it is tiny, which is
    // right for it; here it would blur what the steps read, so it does not run.
    env.config.saga.timer_interval_ms = 600_000;
    let app = env.spawn(ALL).await;
    stock(&app, "KEYED", 500, 1_000).await;
    let n = 40;
    let ids: Vec<String> =
        futures::future::join_all((0..n).map(|_| order(&app, &[("KEYED", 1)], "tok_visa"))).await;
    for id in &ids {
        assert_eq!(ended(&app, id).await["status"], "CONFIRMED");
    }
    // The services' connections close with them; each flushes its statistics as it ends.
    app.app.shutdown().await;
    let journalled = 3 * n as i64; // the intake's entry and two steps per order
    let (journal_scanned, _) = eventually(WAIT, "the journal's statistics are flushed", || async {
        let (scanned, inserted) = scans_and_inserts(&env, "orders.saga_journal").await;
        (inserted >= journalled).then_some((scanned, inserted))
    })
    .await;
    let (state_scanned, _) = scans_and_inserts(&env, "orders.saga_state").await;
    assert_eq!(
        journal_scanned, 0,
        "rows of orders.saga_journal read by scans"
    );
    assert_eq!(state_scanned, 0, "rows of orders.saga_state read by scans");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_cancels_without_charging() {
    let env = env_with_short_timeouts().await;
    let app = env.spawn(ALL).await;
    stock(&app, "RARE", 100, 1).await;
    stock(&app, "PLENTY", 100, 100).await;
    let id = order(&app, &[("PLENTY", 5), ("RARE", 2)], "tok_visa").await;
    let o = ended(&app, &id).await;
    assert_eq!(o["status"], "CANCELLED");
    assert!(
        o["cancel_reason"]
            .as_str()
            .is_some_and(|r| r.contains("RARE INSUFFICIENT_STOCK")),
        "{o}"
    );
    let resp = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/payment")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 404, "no payment was attempted");
    assert_eq!(app.get_json("/v1/products/PLENTY").await["reserved"], 0);
    clean(&env, &[("RARE".into(), 1), ("PLENTY".into(), 100)].into()).await;
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_payment_releases_the_stock_and_cancels() {
    let env = env_with_short_timeouts().await;
    let app = env.spawn(ALL).await;
    stock(&app, "GADGET", 9_900, 3).await;
    let id = order(&app, &[("GADGET", 2)], "tok_decline").await;
    let o = ended(&app, &id).await;
    assert_eq!(o["status"], "CANCELLED");
    assert_eq!(o["cancel_reason"], "payment_declined: card_declined");
    assert_eq!(
        app.get_json(&format!("/v1/orders/{id}/payment")).await["status"],
        "DECLINED"
    );
    let g = app.get_json("/v1/products/GADGET").await;
    assert_eq!(
        (g["on_hand"].as_i64(), g["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    clean(&env, &[("GADGET".into(), 3)].into()).await;
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_timeout_releases_stock_and_refunds_the_late_authorization() {
    let env = env_with_short_timeouts().await;
    let app = env.spawn(ALL).await;
    stock(&app, "SLOWPOKE", 700, 5).await;
    let id = order(&app, &[("SLOWPOKE", 1)], "tok_slow").await;
    let o = ended(&app, &id).await;
    assert_eq!(o["status"], "CANCELLED");
    assert_eq!(o["cancel_reason"], "payment_timeout");
    // The card network answers after the saga gave up: the charge is refunded.
    eventually(WAIT, "the late authorization is refunded", || async {
        (app.get_json(&format!("/v1/orders/{id}/payment")).await["status"] == "REFUNDED")
            .then_some(())
    })
    .await;
    clean(&env, &[("SLOWPOKE".into(), 5)].into()).await;
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_cancel_before_confirmation_compensates() {
    let env = env_with_short_timeouts().await;
    let app = env.spawn(ALL).await;
    stock(&app, "CHAIR", 5_000, 4).await;
    let id = order(&app, &[("CHAIR", 2)], "tok_slow").await;
    let resp = app
        .http
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 202);
    let o = ended(&app, &id).await;
    assert_eq!(o["status"], "CANCELLED");
    assert_eq!(o["cancel_reason"], "customer_cancelled");
    // A final order cannot be cancelled again.
    let resp = app
        .http
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 409);
    let problem: Value = resp.json().await.unwrap_or_default();
    assert_eq!(problem["code"], "order_not_cancellable");
    for (path, status) in [
        ("/v1/orders/nope/cancel", 400),
        (&*format!("/v1/orders/{}/cancel", uuid::Uuid::now_v7()), 404),
    ] {
        let resp = app
            .http
            .post(app.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    clean(&env, &[("CHAIR".into(), 4)].into()).await;
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_killed_mid_flight_is_restarted_and_its_order_completes() {
    let mut env = env_with_short_timeouts().await;
    env.config.payment.slow_latency_ms = 1_000;
    env.config.saga.payment_timeout_ms = 20_000;
    let app = env.spawn(ALL).await;
    stock(&app, "LAMP", 2_000, 10).await;
    let ids: Vec<String> =
        futures::future::join_all((0..5).map(|_| order(&app, &[("LAMP", 1)], "tok_slow"))).await;
    // Kill every saga while it waits for the slow card network.
    for id in &ids {
        let name = format!("{}/order-saga/{id}", app.app.instance());
        let saga = eventually(WAIT, "the saga is waiting for its payment", || async {
            ractor::registry::where_is(name.clone())
        })
        .await;
        saga.kill();
    }
    for id in &ids {
        assert_eq!(ended(&app, id).await["status"], "CONFIRMED", "order {id}");
    }
    clean(&env, &[("LAMP".into(), 10)].into()).await;
    app.app.shutdown().await;
    env.cleanup().await;
}

/// The set-based write of a group of saga steps decides each step on its own: a fresh step
/// applies (and only it writes journal and outbox rows), a step computed from an old version
/// conflicts, a message handled before is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_steps_written_together_apply_conflict_or_repeat_each() {
    use orderflow::domain::envelope::{Envelope, StockRejected};
    use orderflow::domain::ids::OrderId;
    use orderflow::domain::saga::{SagaState, SagaStatus};
    use orderflow::infra::db::messaging::{OutboxMessage, Schema};
    use orderflow::infra::db::orders::{SagaStep, SagaSteps, StepOutcome};
    use sqlx::Row;

    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    let ids: Vec<String> =
        futures::future::join_all((0..3).map(|_| order(&app, &[("X", 1)], "tok_visa"))).await;
    let writers = support::writers(&env.pool);
    let steps = SagaSteps::start(writers.get(Schema::Orders).clone(), 16);
    // The intake stored each saga at version 1 (RESERVING) with its OrderPlaced journalled.
    let placed_id = |order: String| {
        let pool = env.pool.clone();
        async move {
            sqlx::query("SELECT message_id FROM orders.saga_journal WHERE order_id = $1::uuid")
                .bind(order)
                .fetch_one(&pool)
                .await
                .and_then(|r| r.try_get::<uuid::Uuid, _>(0))
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let cancelled = SagaState {
        status: SagaStatus::Cancelled,
        ..SagaState::new()
    };
    let order_ids: Vec<uuid::Uuid> = ids
        .iter()
        .map(|i| uuid::Uuid::parse_str(i).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let announcement = Envelope::new(
        OrderId::from_uuid(order_ids[0]),
        &StockRejected { lines: Vec::new() },
        chrono::Utc::now(),
    );
    let repeated = placed_id(ids[2].clone()).await;
    let step = |order: uuid::Uuid, message_id: uuid::Uuid, version: i32| SagaStep {
        message_id,
        message_type: "StockRejected",
        order_id: order,
        expected_version: Some(version),
        from: SagaStatus::Reserving,
        to: &cancelled,
        deadline: None,
        trace_id: None,
        messages: if order == order_ids[0] {
            vec![OutboxMessage {
                topic: topics::ORDER_EVENTS,
                envelope: &announcement,
                traceparent: None,
            }]
        } else {
            Vec::new()
        },
        order_update: None,
    };
    let (fresh, stale, again) = (
        step(order_ids[0], uuid::Uuid::now_v7(), 1),
        step(order_ids[1], uuid::Uuid::now_v7(), 7),
        step(order_ids[2], repeated, 1),
    );
    let outcomes = futures::future::join_all([
        steps.record(&fresh),
        steps.record(&stale),
        steps.record(&again),
    ])
    .await;
    let outcomes: Vec<StepOutcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            StepOutcome::Applied { version: 2 },
            StepOutcome::Conflict,
            StepOutcome::Duplicate
        ]
    );
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_state WHERE status = 'CANCELLED'")
            .await,
        1
    );
    // Three OrderPlaced journal entries from the intake, one for the applied step.
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_journal").await,
        4
    );
    let announced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.outbox WHERE message_id = $1")
            .bind(announcement.id)
            .fetch_one(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(announced, 1);
    app.app.shutdown().await;
    env.cleanup().await;
}
