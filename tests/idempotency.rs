//! Idempotency-Key on POST /v1/orders and POST /v1/files against the real PostgreSQL and S3:
//! the same key and request answer the first response again, a different request is refused,
//! concurrent requests with one key make one order, and keys are per subject, expire, and are
//! taken over when their first request was abandoned.

mod support;

use orderflow::actors::Service;
use orderflow::auth::scopes;
use serde_json::Value;
use support::{TestApp, TestEnv, client_as, order_body};

async fn post_order(
    http: &reqwest::Client,
    app: &TestApp,
    key: &str,
    body: &Value,
) -> (u16, Value, bool) {
    let resp = http
        .post(app.url("/v1/orders"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/orders: {e}"));
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    (status, resp.json().await.unwrap_or_default(), replayed)
}

#[tokio::test]
async fn an_order_key_answers_its_first_response_and_makes_one_order() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    let alice = client_as("alice", &[scopes::ORDERS_WRITE, scopes::ORDERS_READ]);
    let body = order_body("alice", &[("SKU-1", 2)]);

    let (status, first, replayed) = post_order(&alice, &app, "key-1", &body).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, again, replayed) = post_order(&alice, &app, "key-1", &body).await;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(again, first, "the replay is the first response");
    assert_eq!(env.count("SELECT count(*) FROM orders.orders").await, 1);

    // The same key with another body is refused; nothing is created.
    let other = order_body("alice", &[("SKU-1", 3)]);
    let (status, problem, _) = post_order(&alice, &app, "key-1", &other).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Keys belong to their subject: bob's "key-1" is his own.
    let bob = client_as("bob", &[scopes::ORDERS_WRITE]);
    let (status, bobs, replayed) =
        post_order(&bob, &app, "key-1", &order_body("bob", &[("SKU-1", 2)])).await;
    assert_eq!((status, replayed), (201, false));
    assert_ne!(bobs["order_id"], first["order_id"]);
    // A malformed key.
    let (status, problem, _) = post_order(&alice, &app, "has spaces", &body).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );
    // Without a key every request is a new order.
    for _ in 0..2 {
        let resp = alice
            .post(app.url("/v1/orders"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), 201);
    }
    assert_eq!(env.count("SELECT count(*) FROM orders.orders").await, 4);

    // An expired key is a new key.
    sqlx::query("UPDATE api.idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, fresh, replayed) = post_order(&alice, &app, "key-1", &other).await;
    assert_eq!((status, replayed), (201, false));
    assert_ne!(fresh["order_id"], first["order_id"]);

    // A key whose first request was abandoned (no response after abandon_after_secs) is
    // taken over; one still running is answered 409 with Retry-After.
    let sent = serde_json::to_vec(&body).unwrap_or_default();
    let fingerprint = orderflow::api::idempotency::fingerprint(&[&sent]);
    sqlx::query(
        "INSERT INTO api.idempotency_keys (subject, route, key, request_sha256, created_at, expires_at)
         VALUES ('alice', 'POST /v1/orders', 'stuck', $1, now(), now() + interval '1 day'),
                ('alice', 'POST /v1/orders', 'dead', $1, now() - interval '1 hour',
                 now() + interval '1 day')",
    )
    .bind(&fingerprint[..])
    .execute(&env.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let resp = alice
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "stuck")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 409);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (status, _, replayed) = post_order(&alice, &app, "dead", &body).await;
    assert_eq!((status, replayed), (201, false));
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_order() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    let alice = client_as("alice", &[scopes::ORDERS_WRITE]);
    let body = order_body("alice", &[("SKU-1", 1)]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url, body) = (alice.clone(), app.url("/v1/orders"), body.clone());
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("idempotency-key", "same-key")
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            let v: Value = resp.json().await.unwrap_or_default();
            (
                status,
                v["order_id"].as_str().map(str::to_owned),
                retry_after,
            )
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, id, retry_after) = t.await.unwrap_or_else(|e| panic!("{e}"));
        match status {
            201 => {
                ids.insert(id.unwrap_or_default());
            }
            409 => assert!(retry_after, "409 without Retry-After"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "every 201 names the same order: {ids:?}");
    assert_eq!(env.count("SELECT count(*) FROM orders.orders").await, 1);
    // One order's outbox rows at most: `OrderPlaced` and `ReserveStock`.
    assert!(env.count("SELECT count(*) FROM orders.outbox").await <= 2);
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn an_upload_key_stores_one_file() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    let carol = client_as("carol", &[scopes::FILES_WRITE, scopes::FILES_READ]);
    let upload = |text: &'static str| {
        let (http, url) = (carol.clone(), app.url("/v1/files"));
        async move {
            let resp = http
                .post(url)
                .query(&[("name", "notes.txt")])
                .header("content-type", "text/plain")
                .header("idempotency-key", "upload-1")
                .body(text)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let status = resp.status().as_u16();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let v: Value = resp.json().await.unwrap_or_default();
            (status, v, replayed)
        }
    };
    let (status, first, replayed) = upload("hello").await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, again, replayed) = upload("hello").await;
    assert_eq!((status, replayed), (201, true));
    assert_eq!(again["id"], first["id"]);
    let (status, problem, _) = upload("other bytes").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(env.count("SELECT count(*) FROM files.user_files").await, 1);
    drop(app);
    env.cleanup().await;
}
