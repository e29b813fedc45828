//! The Redis read cache: entries are served from Redis, invalidated by an API write on another
//! process before it answers and by database triggers whoever changed the row (even a change
//! committed while no process ran), never refilled with a value read before an invalidation,
//! and bypassed when Redis is unreachable.

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use orderflow::config::SecretUrl;
use orderflow::infra::cache::{Cache, Lookup, product_key};
use serde_json::{Value, json};
use support::{TestEnv, create_product, eventually, order_body};

const WAIT: Duration = Duration::from_secs(20);

fn cache_of(env: &TestEnv) -> Cache {
    let pool = orderflow::infra::redis::pool(&env.config.redis).unwrap_or_else(|e| panic!("{e}"));
    Cache::new(pool, &env.config.cache)
}

async fn cached(cache: &Cache, hash: &str) -> bool {
    matches!(cache.lookup("test", hash, "json").await, Lookup::Hit(_))
}

#[tokio::test]
async fn a_change_anywhere_is_seen_through_the_cache_of_every_process() {
    let env = TestEnv::new().await;
    let a = env.spawn(&[Service::Api]).await;
    let b = env.spawn(&[Service::Api]).await;
    let cache = cache_of(&env);
    create_product(&a.base, "MUG", 1_250, 10).await;

    // A read fills the cache (once the creation's own change row is drained: it invalidates
    // the entry again); the next one is served from it.
    let first = eventually(WAIT, "a read fills the cache", || async {
        let first = a.get_json("/v1/products/MUG").await;
        cached(&cache, &product_key("MUG")).await.then_some(first)
    })
    .await;
    assert_eq!(first["unit_price_minor"], 1_250);
    assert_eq!(a.get_json("/v1/products/MUG").await, first);

    // Process B changes the price: A's very next read shows it.
    let resp = b
        .http
        .put(b.url("/v1/products/MUG"))
        .json(&json!({"name": "Mug", "unit_price_minor": 1_500, "currency": "EUR", "on_hand": 10}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        a.get_json("/v1/products/MUG").await["unit_price_minor"],
        1_500
    );
    let page = a.get_json("/v1/products").await;
    assert_eq!(page["items"][0]["unit_price_minor"], 1_500);

    // A change made in the database by someone else (the inventory service reserving stock,
    // here plain SQL) reaches the cache through the change row its trigger wrote.
    let _ = a.get_json("/v1/products/MUG").await;
    sqlx::query("UPDATE inventory.products SET on_hand = 7 WHERE sku = 'MUG'")
        .execute(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(WAIT, "the stock change is visible", || async {
        (a.get_json("/v1/products/MUG").await["on_hand"] == 7).then_some(())
    })
    .await;
    eventually(WAIT, "the listing shows it too", || async {
        (a.get_json("/v1/products").await["items"][0]["on_hand"] == 7).then_some(())
    })
    .await;

    // Orders: the status change the saga writes invalidates the cached order.
    let id = a.place_order_id(&order_body("c-1", &[("MUG", 1)])).await;
    assert_eq!(
        a.get_json(&format!("/v1/orders/{id}")).await["status"],
        "PENDING"
    );
    assert!(cached(&cache, &format!("order:{id}")).await);
    sqlx::query(
        "UPDATE orders.orders SET status = 'CANCELLED', cancel_reason = 'test' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&env.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eventually(
        WAIT,
        "the new status is visible on both processes",
        || async {
            let on_a: Value = a.get_json(&format!("/v1/orders/{id}")).await;
            let on_b: Value = b.get_json(&format!("/v1/orders/{id}")).await;
            (on_a["status"] == "CANCELLED" && on_b["status"] == "CANCELLED").then_some(())
        },
    )
    .await;
    drop((a, b));
    env.cleanup().await;
}

#[tokio::test]
async fn a_value_read_before_an_invalidation_is_never_stored() {
    let env = TestEnv::new().await;
    let cache = cache_of(&env);
    let hash = product_key("RACE");
    // A reader misses and goes to the database...
    let Lookup::Miss(ticket) = cache.lookup("test", &hash, "json").await else {
        panic!("a fresh entry was a hit");
    };
    assert!(ticket.is_some(), "Redis did not answer");
    // ...meanwhile the row changes and the entry is invalidated...
    cache
        .invalidate(std::slice::from_ref(&hash))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // ...and the reader's (old) value is refused.
    cache.store(ticket, b"{\"stale\":true}").await;
    assert!(!cached(&cache, &hash).await, "a stale value was stored");
    // A reader that starts after the invalidation stores normally.
    let Lookup::Miss(ticket) = cache.lookup("test", &hash, "json").await else {
        panic!("hit after invalidation");
    };
    cache.store(ticket, b"{\"fresh\":true}").await;
    assert!(cached(&cache, &hash).await);
    env.cleanup().await;
}

#[tokio::test]
async fn redis_unreachable_degrades_to_the_database() {
    let mut env = TestEnv::new().await;
    env.config.redis.url = SecretUrl::new(format!("redis://127.0.0.1:{}", support::free_port()));
    let app = env.spawn(&[Service::Api]).await;
    create_product(&app.base, "TEA", 400, 3).await;
    assert_eq!(app.get_json("/v1/products/TEA").await["on_hand"], 3);
    let resp = app
        .http
        .put(app.url("/v1/products/TEA"))
        .json(&json!({"name": "Tea", "unit_price_minor": 450, "currency": "EUR", "on_hand": 5}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    let tea = app.get_json("/v1/products/TEA").await;
    assert_eq!(
        (tea["unit_price_minor"].clone(), tea["on_hand"].clone()),
        (json!(450), json!(5))
    );
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn a_change_committed_while_no_process_runs_is_invalidated_when_one_starts() {
    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cache = cache_of(&env);
    let sql = |q: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query(q)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{q}: {e}"));
        }
    };
    sql(
        "INSERT INTO inventory.products (sku, name, unit_price_minor, currency, on_hand)
         VALUES ('JAM', 'Jam', 300, 'EUR', 4)",
    )
    .await;
    // An entry cached before the change (as a process that has since stopped would have)...
    let hash = product_key("JAM");
    let Lookup::Miss(ticket) = cache.lookup("test", &hash, "json").await else {
        panic!("a fresh entry was a hit");
    };
    cache.store(ticket, b"{\"on_hand\":4}").await;
    assert!(cached(&cache, &hash).await);
    // ...then the stock changes while no process runs: the change is recorded with it.
    sql("UPDATE inventory.products SET on_hand = 9 WHERE sku = 'JAM'").await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM cache.changes")
        .fetch_one(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pending >= 1, "the change left no row");
    assert!(cached(&cache, &hash).await);
    // The first process to start invalidates it (and the listing), and empties the queue.
    let app = env.spawn(&[Service::Inventory]).await;
    eventually(WAIT, "the old entry is invalidated", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM cache.changes")
            .fetch_one(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (!cached(&cache, &hash).await && pending == 0).then_some(())
    })
    .await;
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn change_rows_older_than_the_ttl_are_pruned_even_with_the_cache_off() {
    let mut env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(
        "INSERT INTO cache.changes (entries, created_at) VALUES
           (ARRAY['product:OLD'], now() - interval '1 hour'), (ARRAY['product:NEW'], now())",
    )
    .execute(&env.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // No drainer runs in this process: only the pruner touches the table.
    env.config.cache.enabled = false;
    let app = env.spawn(&[Service::Api]).await;
    let left = eventually(WAIT, "the expired row is pruned", || async {
        let left: Vec<Vec<String>> =
            sqlx::query_scalar("SELECT entries FROM cache.changes ORDER BY id")
                .fetch_all(&env.pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        (left.len() < 2).then_some(left)
    })
    .await;
    assert_eq!(left, [vec!["product:NEW".to_owned()]]);
    drop(app);
    env.cleanup().await;
}
