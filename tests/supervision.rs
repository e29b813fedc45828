//! Supervision: actors killed inside a running process are restarted by their supervisor and
//! the work they held completes; an ordered shutdown commits what was consumed.

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use orderflow::domain::envelope::topics;
use ractor::ActorCell;
use support::{TestEnv, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn actor(name: &str) -> Option<ActorCell> {
    ractor::registry::where_is(name)
}

/// Places `n` orders and cancels each. The intake takes a saga's first step itself; the
/// `CancelRequested` on `order.commands` is what each saga handles (no inventory runs, so the
/// sagas wait in RESERVING until then).
async fn place(app: &support::TestApp, n: usize) -> Vec<String> {
    let ids = app.place_orders("s", "SKU", n).await;
    for id in &ids {
        let resp = app
            .http
            .post(app.url(&format!("/v1/orders/{id}/cancel")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), 202, "cancel {id}");
    }
    ids
}

/// Waits until the sagas of `n` orders handled their `CancelRequested`, once each: the
/// journal holds the intake's entry and the saga's per order.
async fn recorded(env: &TestEnv, n: i64) {
    eventually(
        WAIT,
        &format!("{n} sagas handle their cancel request"),
        || async {
            (env.count(
                "SELECT count(*) FROM orders.saga_journal WHERE message_type = 'CancelRequested'",
            )
            .await
                == n)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_journal").await,
        2 * n,
        "recorded twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_outbox_relay_is_restarted_and_keeps_publishing() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;
    let name = format!("{}/outbox-relay/orders", app.app.instance());
    let relay = eventually(WAIT, "the relay is registered", || async { actor(&name) }).await;
    place(&app, 5).await;
    recorded(&env, 5).await;

    relay.kill();
    let restarted = eventually(WAIT, "the root supervisor restarts the relay", || async {
        actor(&name).filter(|c| c.get_id() != relay.get_id())
    })
    .await;
    assert_ne!(restarted.get_id(), relay.get_id());
    place(&app, 5).await;
    recorded(&env, 10).await;

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_partition_bridges_are_restarted_and_their_records_complete() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;
    place(&app, 12).await;
    recorded(&env, 12).await;
    let topic = env.config.topic(topics::ORDER_COMMANDS);
    let names: Vec<String> = (0..env.config.kafka.partitions)
        .map(|p| format!("{}/order-bridge/{topic}/{p}", app.app.instance()))
        .collect();
    let before: Vec<ActorCell> = names.iter().filter_map(|n| actor(n)).collect();
    assert!(!before.is_empty(), "12 orders reached at least one bridge");

    // Kill every bridge while new orders flow.
    for b in &before {
        b.kill();
    }
    place(&app, 12).await;
    recorded(&env, 24).await;
    for old in &before {
        let name = old.get_name().unwrap_or_default();
        let new = eventually(WAIT, "the bridge is running again", || async {
            actor(&name)
        })
        .await;
        assert_ne!(new.get_id(), old.get_id(), "{name} was restarted");
    }

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_partitions_and_loses_nothing() {
    let mut env = TestEnv::new().await;
    // A tiny in-flight budget and a slow card network: bridges must pause their partitions.
    env.config.bridge.max_in_flight = 2;
    env.config.payment.latency_ms = 40;
    env.config.payment.workers = 2;
    let app = env.spawn(support::SAGA).await;
    support::create_product(&app.base, "BP", 10, 1_000).await;
    app.place_orders("bp", "BP", 40).await;
    eventually(
        Duration::from_secs(120),
        "all 40 orders confirm",
        || async {
            (env.count("SELECT count(*) FROM orders.orders WHERE status = 'CONFIRMED'")
                .await
                == 40)
                .then_some(())
        },
    )
    .await;
    let pauses = support::metric_sum(
        &app.metrics().await,
        "orderflow_bridge_partition_pauses_total",
        &[],
    );
    assert!(pauses > 0.0, "no partition was paused");
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_shutdown_commits_every_consumed_offset() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Order]).await;
    place(&app, 10).await;
    recorded(&env, 10).await;
    app.app.shutdown().await;
    // Nothing runs any more that could commit: what is committed now, shutdown committed.
    // (Polled, because reading committed offsets from a busy broker can time out.)
    eventually(
        WAIT,
        "offsets of handled records are committed by shutdown",
        || async {
            support::group_caught_up(
                &env.config,
                &env.config.group("order"),
                topics::ORDER_COMMANDS,
            )
            .then_some(())
        },
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM orders.outbox").await, 0);
    // The relay's final flush waited until the rows published on commit were deleted, so it
    // published none of them a second time. Per order: a reservation and its release on
    // one topic, the cancel request on the other.
    for (topic, records) in [
        (topics::INVENTORY_COMMANDS, 20),
        (topics::ORDER_COMMANDS, 10),
    ] {
        assert_eq!(
            support::topic_size(&env.config, topic),
            records,
            "records on {topic}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sagas_passivate_and_their_state_stays_in_postgres() {
    let mut env = TestEnv::new().await;
    env.config.saga.idle_timeout_ms = 1_500;
    let app = env.spawn(&[Service::Api, Service::Order]).await;
    let id = place(&app, 1).await.remove(0);
    recorded(&env, 1).await;
    let name = format!("{}/order-saga/{id}", app.app.instance());
    // The cancel woke the saga (it now waits for the inventory's release) ...
    assert!(
        actor(&name).is_some(),
        "the saga runs after handling the cancel"
    );
    // ... and with nothing more to do it stops, its state staying in PostgreSQL.
    eventually(WAIT, "the idle saga stops", || async {
        actor(&name).is_none().then_some(())
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM orders.saga_state WHERE status = 'RELEASING'")
            .await,
        1
    );
    app.app.shutdown().await;
    env.cleanup().await;
}
