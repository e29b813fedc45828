//! The inventory service against the real servers: the catalogue API, reservations all-or-none
//! with their replies on `inventory.events`, release and commit, duplicate commands, expiry, and
//! the oversell race.

mod support;

use std::time::Duration;

use chrono::Utc;
use orderflow::actors::Service;
use orderflow::domain::envelope::{
    CommitStock, Envelope, ReleaseStock, ReserveStock, StockRejected, StockReserved, topics,
};
use orderflow::domain::ids::{OrderId, Sku};
use orderflow::domain::money::Currency;
use orderflow::domain::order::OrderLine;
use serde_json::{Value, json};
use support::{Seen, TestApp, TestEnv, eventually, publish, publish_all, read_topic};

const WAIT: Duration = Duration::from_secs(60);

async fn create(app: &TestApp, sku: &str, price: i64, on_hand: i64) {
    support::create_product(&app.base, sku, price, on_hand).await;
}

async fn product(app: &TestApp, sku: &str) -> Value {
    app.get_json(&format!("/v1/products/{sku}")).await
}

fn reserve(order: OrderId, lines: &[(&str, u32)]) -> Envelope {
    let lines = lines
        .iter()
        .map(|(sku, q)| OrderLine {
            sku: Sku::parse(sku).unwrap_or_else(|| panic!("bad test sku {sku}")),
            quantity: *q,
        })
        .collect();
    let currency = Currency::parse("EUR").unwrap_or_else(|| unreachable!());
    Envelope::new(order, &ReserveStock { currency, lines }, Utc::now())
}

/// Waits for the replies to `orders` on `inventory.events`.
async fn replies(app_env: &TestEnv, n: usize) -> Vec<Seen> {
    read_topic(&app_env.config, topics::INVENTORY_EVENTS, WAIT, |s| {
        s.len() >= n
    })
    .await
}

fn reply_for(seen: &[Seen], order: OrderId) -> &Seen {
    seen.iter()
        .find(|r| r.envelope.order_id == order)
        .unwrap_or_else(|| panic!("no reply for {order}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_api_creates_replaces_reads_and_lists_products() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    for (i, sku) in ["BOOK-1", "BOOK-2", "MUG-1", "PEN-1", "PEN-2"]
        .iter()
        .enumerate()
    {
        create(&app, sku, 1000 + i as i64, 10).await;
    }
    let p = product(&app, "MUG-1").await;
    assert_eq!(p["unit_price_minor"], 1002);
    assert_eq!(p["available"], 10);

    let resp = app
        .http
        .put(app.url("/v1/products/MUG-1"))
        .json(&json!({"name": "Ferris mug", "unit_price_minor": 1500, "currency": "EUR", "on_hand": 25}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let p = product(&app, "MUG-1").await;
    assert_eq!(
        (p["name"].as_str(), p["on_hand"].as_i64()),
        (Some("Ferris mug"), Some(25))
    );

    // Pagination in sku order.
    let mut skus = Vec::new();
    let mut url = app.url("/v1/products?limit=2");
    loop {
        let page: Value = app
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_default();
        for item in page["items"].as_array().cloned().unwrap_or_default() {
            skus.push(item["sku"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => url = app.url(&format!("/v1/products?limit=2&cursor={c}")),
            None => break,
        }
    }
    assert_eq!(skus, ["BOOK-1", "BOOK-2", "MUG-1", "PEN-1", "PEN-2"]);

    // Bad input.
    for (method, path, body, status, code) in [
        (
            "POST",
            "/v1/products",
            json!({"sku": "BOOK-1", "name": "x", "unit_price_minor": 1, "currency": "EUR", "on_hand": 1}),
            409,
            "product_exists",
        ),
        (
            "POST",
            "/v1/products",
            json!({"sku": "NEW", "name": "x", "unit_price_minor": 1, "currency": "XYZ", "on_hand": 1}),
            422,
            "invalid_product",
        ),
        (
            "POST",
            "/v1/products",
            json!({"sku": "NEW", "name": "", "unit_price_minor": 1, "currency": "EUR", "on_hand": 1}),
            422,
            "invalid_product",
        ),
        (
            "POST",
            "/v1/products",
            json!({"sku": "NEW", "name": "x", "unit_price_minor": -1, "currency": "EUR", "on_hand": 1}),
            422,
            "invalid_product",
        ),
        (
            "POST",
            "/v1/products",
            json!({"sku": "NEW", "name": "x", "unit_price_minor": 1, "currency": "EUR", "on_hand": -5}),
            422,
            "invalid_product",
        ),
        (
            "POST",
            "/v1/products",
            json!({"sku": "BAD SKU", "name": "x", "unit_price_minor": 1, "currency": "EUR", "on_hand": 1}),
            422,
            "invalid_product",
        ),
        (
            "POST",
            "/v1/products",
            json!({"sku": "NEW", "name": "x", "unit_price_minor": 1, "currency": "EUR", "on_hand": 1, "color": "red"}),
            400,
            "unknown_field",
        ),
        (
            "PUT",
            "/v1/products/NOPE",
            json!({"name": "x", "unit_price_minor": 1, "currency": "EUR", "on_hand": 1}),
            404,
            "product_not_found",
        ),
    ] {
        let req = match method {
            "POST" => app.http.post(app.url(path)),
            _ => app.http.put(app.url(path)),
        };
        let resp = req
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let problem: Value = resp.json().await.unwrap_or_default();
        assert_eq!(problem["code"], code, "{body}");
    }
    for (path, status, code) in [
        ("/v1/products/NOPE", 404, "product_not_found"),
        ("/v1/products?cursor=zz", 400, "invalid_cursor"),
        ("/v1/products?order=desc", 400, "invalid_query"),
    ] {
        let resp = app
            .http
            .get(app.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let problem: Value = resp.json().await.unwrap_or_default();
        assert_eq!(problem["code"], code, "{path}");
    }
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_take_all_lines_or_none_and_say_why() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Inventory]).await;
    create(&app, "A", 250, 10).await;
    create(&app, "B", 1000, 1).await;

    let ok = OrderId::new();
    let short = OrderId::new();
    let unknown = OrderId::new();
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &reserve(ok, &[("A", 3), ("B", 1)]),
    )
    .await;
    let seen = replies(&env, 1).await;
    let first: StockReserved = reply_for(&seen, ok)
        .envelope
        .payload_as()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.total_minor, 3 * 250 + 1000);
    assert_eq!(first.lines.len(), 2);

    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &reserve(short, &[("A", 1), ("B", 1)]),
    )
    .await;
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &reserve(unknown, &[("A", 1), ("NOPE", 2)]),
    )
    .await;
    let seen = replies(&env, 3).await;
    let rejected: StockRejected = reply_for(&seen, short)
        .envelope
        .payload_as()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rejected.lines.len(), 1);
    assert_eq!(rejected.lines[0].sku, "B");
    assert_eq!(rejected.lines[0].available, Some(0));
    let rejected: StockRejected = reply_for(&seen, unknown)
        .envelope
        .payload_as()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rejected.lines[0].sku, "NOPE");
    assert_eq!(rejected.lines[0].available, None);

    // Only the accepted reservation holds stock: none of the rejected orders' lines do.
    assert_eq!(product(&app, "A").await["reserved"], 3);
    assert_eq!(product(&app, "B").await["reserved"], 1);

    // Stock cannot be set below what is reserved.
    let resp = app
        .http
        .put(app.url("/v1/products/A"))
        .json(&json!({"name": "A", "unit_price_minor": 250, "currency": "EUR", "on_hand": 2}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 409);

    // Release gives the stock back; a second reservation then commits as a sale.
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &Envelope::new(
            ok,
            &ReleaseStock {
                reason: "payment declined".into(),
            },
            Utc::now(),
        ),
    )
    .await;
    eventually(WAIT, "the release frees A and B", || async {
        (product(&app, "A").await["reserved"] == 0 && product(&app, "B").await["reserved"] == 0)
            .then_some(())
    })
    .await;
    let sale = OrderId::new();
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &reserve(sale, &[("A", 4)]),
    )
    .await;
    eventually(WAIT, "A is reserved for the sale", || async {
        (product(&app, "A").await["reserved"] == 4).then_some(())
    })
    .await;
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &Envelope::new(sale, &CommitStock {}, Utc::now()),
    )
    .await;
    eventually(
        WAIT,
        "the commit turns the reservation into a sale",
        || async {
            let a = product(&app, "A").await;
            (a["on_hand"] == 6 && a["reserved"] == 0).then_some(())
        },
    )
    .await;
    let kinds: Vec<String> = replies(&env, 5)
        .await
        .iter()
        .map(|r| r.envelope.kind.clone())
        .collect();
    // A commit is not answered: nobody waits for it.
    assert_eq!(
        env.count("SELECT count(*) FROM inventory.reservations WHERE status = 'COMMITTED'")
            .await,
        1
    );
    for kind in ["StockReserved", "StockRejected", "StockReleased"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_reserve_commands_reserve_once() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Inventory]).await;
    create(&app, "DUP", 100, 50).await;
    let order = OrderId::new();
    let command = reserve(order, &[("DUP", 5)]);
    publish_all(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &vec![command.clone(); 5],
    )
    .await;
    // A different message for the same order (a retried command) repeats the answer.
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &reserve(order, &[("DUP", 5)]),
    )
    .await;
    let group = env.config.group("inventory");
    eventually(WAIT, "all six commands are consumed", || async {
        support::group_caught_up(&env.config, &group, topics::INVENTORY_COMMANDS).then_some(())
    })
    .await;
    assert_eq!(product(&app, "DUP").await["reserved"], 5);
    let seen = replies(&env, 2).await;
    assert!(seen.iter().all(|r| r.envelope.kind == "StockReserved"));
    assert_eq!(
        env.count("SELECT count(*) FROM inventory.reservations")
            .await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM inventory.inbox").await, 2);
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_commits_arriving_together_apply_once_each() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Inventory]).await;
    create(&app, "G1", 100, 100).await;
    create(&app, "G2", 100, 100).await;
    let orders: Vec<OrderId> = (0..20).map(|_| OrderId::new()).collect();
    let reserves: Vec<Envelope> = orders
        .iter()
        .map(|o| reserve(*o, &[("G1", 2), ("G2", 1)]))
        .collect();
    publish_all(&env.config, topics::INVENTORY_COMMANDS, &reserves).await;
    eventually(WAIT, "every order is reserved", || async {
        (product(&app, "G1").await["reserved"] == 40).then_some(())
    })
    .await;
    // Every commit twice (a redelivery), a retried commit with a new id for the first order,
    // and a commit for an order that reserved nothing: published at once, so they are
    // applied in groups.
    let mut commits: Vec<Envelope> = Vec::new();
    for o in &orders {
        let commit = Envelope::new(*o, &CommitStock {}, Utc::now());
        commits.push(commit.clone());
        commits.push(commit);
    }
    commits.push(Envelope::new(orders[0], &CommitStock {}, Utc::now()));
    commits.push(Envelope::new(OrderId::new(), &CommitStock {}, Utc::now()));
    publish_all(&env.config, topics::INVENTORY_COMMANDS, &commits).await;
    let group = env.config.group("inventory");
    eventually(WAIT, "every command is consumed", || async {
        support::group_caught_up(&env.config, &group, topics::INVENTORY_COMMANDS).then_some(())
    })
    .await;
    let (g1, g2) = (product(&app, "G1").await, product(&app, "G2").await);
    assert_eq!((&g1["on_hand"], &g1["reserved"]), (&json!(60), &json!(0)));
    assert_eq!((&g2["on_hand"], &g2["reserved"]), (&json!(80), &json!(0)));
    assert_eq!(
        env.count("SELECT count(*) FROM inventory.reservations WHERE status = 'COMMITTED'")
            .await,
        20
    );
    // One reply per reservation; commits are not answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        support::topic_size(&env.config, topics::INVENTORY_EVENTS),
        20
    );
    assert!(
        replies(&env, 20)
            .await
            .iter()
            .all(|r| r.envelope.kind == "StockReserved")
    );
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservations_return_their_stock() {
    let mut env = TestEnv::new().await;
    env.config.inventory.reservation_ttl_secs = 1;
    env.config.inventory.expiry_interval_ms = 200;
    let app = env.spawn(&[Service::Api, Service::Inventory]).await;
    create(&app, "EXP", 100, 5).await;
    let order = OrderId::new();
    publish(
        &env.config,
        topics::INVENTORY_COMMANDS,
        &reserve(order, &[("EXP", 2)]),
    )
    .await;
    eventually(WAIT, "the reservation is taken", || async {
        (product(&app, "EXP").await["reserved"] == 2).then_some(())
    })
    .await;
    eventually(WAIT, "the sweeper releases it", || async {
        (product(&app, "EXP").await["reserved"] == 0).then_some(())
    })
    .await;
    let seen = replies(&env, 2).await;
    let released = seen
        .iter()
        .find(|r| r.envelope.kind == "StockReleased")
        .unwrap_or_else(|| panic!("no StockReleased"));
    assert_eq!(released.envelope.order_id, order);
    assert_eq!(released.envelope.payload["reason"], "expired");
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversell_race_reserves_exactly_the_stock() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Inventory]).await;
    create(&app, "HOT", 999, 100).await;
    let commands: Vec<Envelope> = (0..1000)
        .map(|_| reserve(OrderId::new(), &[("HOT", 1)]))
        .collect();
    publish_all(&env.config, topics::INVENTORY_COMMANDS, &commands).await;
    let seen = replies(&env, 1000).await;
    let reserved = seen
        .iter()
        .filter(|r| r.envelope.kind == "StockReserved")
        .count();
    let rejected = seen
        .iter()
        .filter(|r| r.envelope.kind == "StockRejected")
        .count();
    assert_eq!((reserved, rejected), (100, 900));
    let hot = product(&app, "HOT").await;
    assert_eq!(
        (hot["on_hand"].as_i64(), hot["reserved"].as_i64()),
        (Some(100), Some(100))
    );
    assert_eq!(
        env.count("SELECT count(*) FROM inventory.reservations WHERE status = 'RESERVED'")
            .await,
        100
    );
    assert_eq!(
        env.count("SELECT coalesce(sum(quantity), 0)::bigint FROM inventory.reservation_lines")
            .await,
        100
    );
    app.app.shutdown().await;
    env.cleanup().await;
}
