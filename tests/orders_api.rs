//! Order intake against the real servers: an accepted order is in PostgreSQL and its
//! `OrderPlaced` is on Kafka with the saga's first step recorded once; bad requests get
//! problem+json and leave nothing behind; reads paginate; operations endpoints answer.

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use orderflow::domain::envelope::topics;
use serde_json::{Value, json};
use support::{TestEnv, eventually, order_body, read_topic, topic_size};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_order_is_stored_published_and_recorded_by_its_saga() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;

    let resp = app
        .http
        .post(app.url("/v1/orders"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&order_body("cust-1", &[("SKU-A", 2), ("SKU-B", 1)]))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 201);
    let location = resp.headers()["location"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    let body: Value = resp.json().await.unwrap_or_default();
    let id = body["order_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(location, format!("/v1/orders/{id}"));
    assert_eq!(body["status"], "PENDING");
    assert_eq!(body["lines"][0], json!({"sku": "SKU-A", "quantity": 2}));

    // In PostgreSQL, readable through the API.
    let got: Value = app
        .http
        .get(app.url(&location))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(got["order_id"], id.as_str());
    assert_eq!(got["lines"].as_array().map(Vec::len), Some(2));

    // On the topic, keyed by order id, with the caller's trace continued.
    let seen = read_topic(&env.config, topics::ORDER_EVENTS, WAIT, |s| {
        s.iter().any(|r| r.key == id)
    })
    .await;
    let record = seen
        .iter()
        .find(|r| r.key == id)
        .unwrap_or_else(|| unreachable!());
    assert_eq!(record.envelope.kind, "OrderPlaced");
    assert_eq!(record.envelope.version, 1);
    assert_eq!(record.envelope.order_id.to_string(), id);
    assert_eq!(record.envelope.payload["customer_id"], "cust-1");
    let traceparent = record
        .headers
        .get("traceparent")
        .cloned()
        .unwrap_or_default();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "trace not propagated: {traceparent:?}"
    );
    assert_eq!(
        record.headers.get("message-id").map(String::as_str),
        Some(record.envelope.id.to_string().as_str())
    );

    // The saga's first step was taken once, by the intake, in the order's transaction.
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_journal").await,
        1
    );
    // Its command (ReserveStock) is published with OrderPlaced right after the commit.
    eventually(WAIT, "every outbox row is published", || async {
        (env.count("SELECT count(*) FROM orders.outbox").await == 0).then_some(())
    })
    .await;

    app.app.shutdown().await;
    env.cleanup().await;
}

/// What is wrong, the HTTP method, the content type, the body, the expected status and code.
type BadRequest = (
    &'static str,
    &'static str,
    Option<&'static str>,
    String,
    u16,
    &'static str,
);

fn bad_requests() -> Vec<BadRequest> {
    let line = r#"[{"sku":"A","quantity":1}]"#;
    let with = |customer: &str, currency: &str, lines: &str| {
        format!(r#"{{"customer_id":{customer},"currency":{currency},"lines":{lines}}}"#)
    };
    let many: Vec<String> = (0..101)
        .map(|i| format!(r#"{{"sku":"S{i}","quantity":1}}"#))
        .collect();
    vec![
        ("bad json", "POST", Some("application/json"), "{\"customer_id\":".into(), 400, "malformed_json"),
        ("not an object", "POST", Some("application/json"), "[1,2]".into(), 400, "invalid_field_type"),
        ("unknown field", "POST", Some("application/json"),
            r#"{"customer_id":"c","currency":"EUR","lines":[{"sku":"A","quantity":1}],"coupon":"FREE"}"#.into(), 400, "unknown_field"),
        ("unknown line field", "POST", Some("application/json"),
            with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":1,"price":0}]"#), 400, "unknown_field"),
        ("missing lines", "POST", Some("application/json"), r#"{"customer_id":"c","currency":"EUR"}"#.into(), 400, "missing_field"),
        ("empty lines", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", "[]"), 422, "no_order_lines"),
        ("too many lines", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", &format!("[{}]", many.join(","))), 422, "too_many_order_lines"),
        ("zero quantity", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":0}]"#), 422, "invalid_quantity"),
        ("negative quantity", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":-3}]"#), 422, "invalid_quantity"),
        ("huge quantity", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":99999999999999999999999}]"#), 422, "invalid_quantity"),
        ("fractional quantity", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":1.5}]"#), 422, "invalid_quantity"),
        ("quantity as string", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":"1"}]"#), 400, "invalid_field_type"),
        ("unknown currency", "POST", Some("application/json"), with("\"c\"", "\"XBT\"", line), 422, "unknown_currency"),
        ("lowercase currency", "POST", Some("application/json"), with("\"c\"", "\"eur\"", line), 422, "unknown_currency"),
        ("empty customer", "POST", Some("application/json"), with("\"\"", "\"EUR\"", line), 422, "invalid_customer_id"),
        ("customer with spaces", "POST", Some("application/json"), with("\"bob smith\"", "\"EUR\"", line), 422, "invalid_customer_id"),
        ("bad sku", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A B","quantity":1}]"#), 422, "invalid_sku"),
        ("duplicate sku", "POST", Some("application/json"), with("\"c\"", "\"EUR\"", r#"[{"sku":"A","quantity":1},{"sku":"A","quantity":2}]"#), 422, "duplicate_sku"),
        ("wrong content type", "POST", Some("text/plain"), with("\"c\"", "\"EUR\"", line), 415, "unsupported_media_type"),
        ("no content type", "POST", None, with("\"c\"", "\"EUR\"", line), 415, "unsupported_media_type"),
        ("oversized body", "POST", Some("application/json"),
            with("\"c\"", "\"EUR\"", &format!(r#"[{{"sku":"{}","quantity":1}}]"#, "A".repeat(70_000))), 413, "body_too_large"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_order_requests_get_problem_json_and_store_and_publish_nothing() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;

    for (what, _method, content_type, body, status, code) in bad_requests() {
        let mut req = app.http.post(app.url("/v1/orders")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status().as_u16(), status, "{what}");
        if status == 413 {
            // The body was refused unread: the client must not reuse the connection.
            assert_eq!(
                resp.headers()
                    .get("connection")
                    .and_then(|v| v.to_str().ok()),
                Some("close"),
                "{what}"
            );
        }
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        let problem: Value = resp.json().await.unwrap_or_default();
        assert_eq!(problem["code"], code, "{what}: {problem}");
        assert_eq!(problem["status"], status, "{what}");
        assert_eq!(problem["type"], format!("/problems/{code}"), "{what}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}"
        );
    }

    // Bad ids, cursors and query parameters on the read side.
    for (path, status, code) in [
        ("/v1/orders/not-a-uuid", 400, "invalid_order_id"),
        (
            "/v1/orders/01a21639-68f9-70af-af53-cbc825194678",
            404,
            "order_not_found",
        ),
        ("/v1/orders?cursor=garbage", 400, "invalid_cursor"),
        (
            "/v1/orders?cursor=c1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            400,
            "invalid_cursor",
        ),
        ("/v1/orders?status=SHIPPED", 400, "invalid_query"),
        ("/v1/orders?limit=0", 400, "invalid_query"),
        ("/v1/orders?limit=100000", 400, "invalid_query"),
        ("/v1/orders?sort=asc", 400, "invalid_query"),
        ("/v1/nothing-here", 404, "route_not_found"),
    ] {
        let resp = app
            .http
            .get(app.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let problem: Value = resp.json().await.unwrap_or_default();
        assert_eq!(problem["code"], code, "{path}");
    }
    let resp = app
        .http
        .delete(app.url("/v1/orders"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 405);

    // Every problem type resolves to its documentation.
    let doc = app.get_json("/problems/invalid_quantity").await;
    assert!(
        doc["description"]
            .as_str()
            .is_some_and(|d| d.contains("1 to 1000"))
    );

    // Nothing was stored and nothing was published.
    assert_eq!(env.count("SELECT count(*) FROM orders.orders").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM orders.outbox").await, 0);
    // A good order afterwards proves the pipeline was live while the bad ones were refused.
    let ok = app.place_order(&order_body("c", &[("A", 1)])).await;
    assert_eq!(ok.status().as_u16(), 201);
    eventually(WAIT, "the good order is published", || async {
        (env.count("SELECT count(*) FROM orders.outbox").await == 0
            && topic_size(&env.config, topics::ORDER_EVENTS) == 1)
            .then_some(())
    })
    .await;
    assert_eq!(topic_size(&env.config, topics::ORDER_EVENTS), 1);

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_list_newest_first_with_cursor_pagination_and_filters() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;

    let mut ids = Vec::new();
    for i in 0..7 {
        let customer = if i % 2 == 0 { "even" } else { "odd" };
        let resp = app
            .place_order(&order_body(customer, &[("SKU", i + 1)]))
            .await;
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap_or_default();
        ids.push(body["order_id"].as_str().unwrap_or_default().to_owned());
    }
    ids.reverse(); // newest first

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url("/v1/orders?limit=3");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_default();
        pages += 1;
        for item in page["items"].as_array().cloned().unwrap_or_default() {
            listed.push(item["order_id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(listed, ids, "every order once, newest first");
    assert_eq!(pages, 3);

    let odd: Value = app
        .http
        .get(app.url("/v1/orders?customer_id=odd&status=PENDING"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    let odd_items = odd["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(odd_items.len(), 3);
    assert!(odd_items.iter().all(|o| o["customer_id"] == "odd"));
    let confirmed: Value = app
        .http
        .get(app.url("/v1/orders?status=CONFIRMED"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(confirmed["items"].as_array().map(Vec::len), Some(0));

    // An api-only process runs no relay: its writer publishes each intake's row right after
    // the commit, and deletes it once the broker acknowledged it.
    eventually(
        WAIT,
        "every OrderPlaced is on the topic, none left behind",
        || async {
            let left = env.count("SELECT count(*) FROM orders.outbox").await;
            (left == 0 && topic_size(&env.config, topics::ORDER_EVENTS) == 7).then_some(())
        },
    )
    .await;

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_reflect_the_running_system() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;

    let live = app
        .http
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(live.status().as_u16(), 200);
    let ready = app
        .http
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.unwrap_or_default();
    for dep in ["postgres", "kafka", "redis", "s3"] {
        assert_eq!(ready["checks"][dep]["status"], "up", "{dep}: {ready}");
    }

    let ok = app.place_order(&order_body("m", &[("A", 1)])).await;
    assert_eq!(ok.status().as_u16(), 201);
    // The intake took the saga's first step; the order service consumes the `OrderPlaced`.
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_journal").await,
        1
    );
    let text = eventually(WAIT, "the order service consumes the order", || async {
        let text = app.metrics().await;
        text.contains("orderflow_bridge_records_total{")
            .then_some(text)
    })
    .await;
    for name in [
        "orderflow_orders_accepted_total",
        "orderflow_http_requests_total",
        "orderflow_outbox_published_total",
        "orderflow_bridge_records_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        !text.contains(&env.config.kafka.topic_prefix),
        "no per-test names leak into labels"
    );

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_dependency_that_is_down() {
    let mut env = TestEnv::new().await;
    // Point Redis and S3 at ports nothing listens on.
    env.config.redis.url = orderflow::config::SecretUrl::new("redis://127.0.0.1:1");
    env.config.s3.endpoint = "http://127.0.0.1:9".into();
    env.config.http.ready_timeout_ms = 1_000;
    let app = env.spawn(&[Service::Api]).await;
    let resp = app
        .http
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap_or_default();
    assert_eq!(body["checks"]["postgres"]["status"], "up");
    assert_eq!(body["checks"]["kafka"]["status"], "up");
    assert_eq!(body["checks"]["redis"]["status"], "down");
    assert_eq!(body["checks"]["s3"]["status"], "down");
    // The API keeps taking orders: Redis and S3 are not on the intake path.
    let ok = app.place_order(&order_body("c", &[("A", 1)])).await;
    assert_eq!(ok.status().as_u16(), 201);
    app.app.shutdown().await;
    env.cleanup().await;
}

/// The saga reads `order.commands` (and the replies of the services it commands), never its
/// own `order.events`: a cancel request delivered six times is handled once, and the order
/// service's consumer group never subscribes to `order.events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_saga_command_deliveries_have_one_effect() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;
    let resp = app.place_order(&order_body("dup", &[("A", 1)])).await;
    assert_eq!(resp.status().as_u16(), 201);
    let id: Value = resp.json().await.unwrap_or_default();
    let id = id["order_id"].as_str().unwrap_or_default().to_owned();
    let cancel = app
        .http
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cancel.status().as_u16(), 202);
    let seen = read_topic(&env.config, topics::ORDER_COMMANDS, WAIT, |s| {
        s.iter().any(|r| r.key == id)
    })
    .await;
    let original = seen
        .iter()
        .find(|r| r.key == id)
        .unwrap_or_else(|| unreachable!())
        .clone();
    assert_eq!(original.envelope.kind, "CancelRequested");

    // Publish the very same message five more times.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.config.kafka.brokers)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let topic = env.config.topic(topics::ORDER_COMMANDS);
    let payload = original.envelope.encode();
    for _ in 0..5 {
        producer
            .send(
                FutureRecord::to(&topic).key(&id).payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    let group = env.config.group("order");
    eventually(WAIT, "the order service commits all six copies", || async {
        support::group_caught_up(&env.config, &group, topics::ORDER_COMMANDS).then_some(())
    })
    .await;
    assert_eq!(topic_size(&env.config, topics::ORDER_COMMANDS), 6);
    // The intake's first step and the cancel request, once.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM orders.saga_journal WHERE message_type = 'CancelRequested'"
        )
        .await,
        1
    );
    // The journal is the saga's inbox: the first step and the cancel request, each once.
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_journal").await,
        2
    );
    assert!(
        !support::group_caught_up(&env.config, &group, topics::ORDER_EVENTS),
        "the order service does not consume its own events"
    );

    app.app.shutdown().await;
    env.cleanup().await;
}

/// Orders placed while the intake is busy are stored as one set: one statement (and one
/// transaction) for all of them, each order whole — its lines, its saga's first step, inbox row,
/// journal entry and outbox rows in its own order — and an idempotency key's response stored
/// with its order. A current-thread runtime queues every intake before the group task runs.
#[tokio::test]
async fn orders_placed_together_are_stored_as_one_set_each_whole() {
    use orderflow::actors::order::saga;
    use orderflow::domain::envelope::{Envelope, OrderPlaced};
    use orderflow::domain::ids::OrderId;
    use orderflow::domain::order::PlaceOrder;
    use orderflow::infra::db::idempotency::{self, KeyRef};
    use orderflow::infra::db::messaging::Schema;
    use orderflow::infra::db::orders::{Intakes, OutboxMessage, SagaStart};

    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let writers = support::writers(&env.pool);
    let intakes = Intakes::start(writers.get(Schema::Orders).clone(), 64, 1);
    let now = chrono::Utc::now();
    let orders: Vec<_> = (0..40_usize)
        .map(|i| {
            let lines: Vec<(String, u32)> = (0..=(i % 3))
                .map(|l| (format!("SKU-{l}"), u32::try_from(i + 1).unwrap_or(1)))
                .collect();
            let lines: Vec<(&str, u32)> = lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
            let request: PlaceOrder =
                serde_json::from_value(order_body(&format!("cust-{i}"), &lines))
                    .unwrap_or_else(|e| panic!("{e}"));
            let order = request.validate().unwrap_or_else(|e| panic!("{e}"));
            let id = OrderId::new();
            let placed = OrderPlaced::of(&order);
            let envelope = Envelope::new(id, &placed, now);
            let first = saga::first_step(id, &placed, &env.config.saga, now);
            // Every fifth order carries an idempotency key.
            let key = (i % 5 == 0).then(|| KeyRef {
                subject: format!("cust-{i}"),
                route: "POST /v1/orders".into(),
                key: format!("key-{i}"),
            });
            (id, order, envelope, first, key)
        })
        .collect();
    for (_, _, _, _, key) in &orders {
        if let Some(key) = key {
            let claim = idempotency::claim(&env.pool, key, &[7; 32], 3600, 60)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(claim, idempotency::Claim::Claimed);
        }
    }
    let stored =
        futures::future::join_all(orders.iter().map(|(id, order, envelope, first, key)| {
            let intakes = &intakes;
            async move {
                let messages: Vec<OutboxMessage<'_>> =
                    std::iter::once((topics::ORDER_EVENTS, envelope))
                        .chain(first.commands.iter().map(|(topic, e)| (*topic, e)))
                        .map(|(topic, envelope)| OutboxMessage {
                            topic,
                            envelope,
                            traceparent: None,
                        })
                        .collect();
                let start = SagaStart {
                    state: &first.state,
                    deadline: first.deadline,
                    message_id: envelope.id,
                    message_type: &envelope.kind,
                };
                intakes
                    .insert_order(*id, order, now, "trace", &start, &messages, key.as_ref())
                    .await
            }
        }))
        .await;
    for (record, (id, order, ..)) in stored.iter().zip(&orders) {
        let record = record.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(record.order_id, id.as_uuid());
        assert_eq!(record.lines.len(), order.lines.len());
    }
    // One transaction for the whole set.
    assert_eq!(
        env.count("SELECT count(DISTINCT xmin::text) FROM orders.orders")
            .await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM orders.orders").await, 40);
    // 40 orders of 1, 2 and 3 lines: 14 + 13 * 2 + 13 * 3.
    assert_eq!(
        env.count("SELECT count(*) FROM orders.order_lines").await,
        79
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM orders.orders o JOIN orders.saga_state s ON s.order_id = o.id
             JOIN orders.saga_journal j ON j.order_id = o.id
             WHERE j.message_type = 'OrderPlaced'"
        )
        .await,
        40
    );
    // Each order's lines numbered from 0 with its own quantities, and its two outbox rows
    // (OrderPlaced, then ReserveStock) under its key, in that order.
    for (id, order, envelope, ..) in &orders {
        let lines: Vec<(i32, String, i32)> = sqlx::query_as(
            "SELECT line_no, sku, quantity FROM orders.order_lines WHERE order_id = $1
             ORDER BY line_no",
        )
        .bind(id.as_uuid())
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let expected: Vec<(i32, String, i32)> = order
            .lines
            .iter()
            .enumerate()
            .map(|(n, l)| {
                (
                    i32::try_from(n).unwrap_or(-1),
                    l.sku.to_string(),
                    i32::try_from(l.quantity).unwrap_or(-1),
                )
            })
            .collect();
        assert_eq!(lines, expected, "order {id}");
        let outbox: Vec<(String, uuid::Uuid)> = sqlx::query_as(
            "SELECT message_type, message_id FROM orders.outbox WHERE message_key = $1
             ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(outbox.len(), 2, "order {id}");
        assert_eq!(outbox[0], ("OrderPlaced".to_owned(), envelope.id));
        assert_eq!(outbox[1].0, "ReserveStock");
    }
    // The keyed orders' responses are stored with them.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM api.idempotency_keys WHERE status = 201 AND location LIKE '/v1/orders/%'"
        )
        .await,
        8
    );
    env.cleanup().await;
}
