//! The SMTP server stops while orders flow: the circuit opens, orders still confirm, and once
//! the server is back every customer-visible event has been mailed exactly once. The test runs
//! its own mailpit (the local infrastructure's binary, on free loopback ports).

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use serde_json::{Value, json};
use support::{Daemon, TestApp, TestEnv, eventually, free_port};

const WAIT: Duration = Duration::from_secs(90);
const ALL: &[Service] = &[
    Service::Api,
    Service::Order,
    Service::Inventory,
    Service::Payment,
    Service::File,
    Service::Notification,
];

async fn start_sink(smtp: u16, http: u16, db: &std::path::Path) -> Daemon {
    let args = [
        "--smtp".to_owned(),
        format!("127.0.0.1:{smtp}"),
        "--listen".to_owned(),
        format!("127.0.0.1:{http}"),
        "--database".to_owned(),
        db.display().to_string(),
    ];
    Daemon::start("ORDERFLOW_TEST_MAILPIT_BIN", &args, &[smtp, http]).await
}

/// Subjects of every mail the sink on `http` received, sorted.
async fn subjects(http: u16) -> Vec<String> {
    let v: Value = match reqwest::Client::new()
        .get(format!("http://127.0.0.1:{http}/api/v1/messages?limit=500"))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    let mut s: Vec<String> = v["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| m["Subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    s.sort();
    s
}

async fn place(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({
            "customer_id": format!("c{i}"), "currency": "EUR", "email": format!("c{i}@example.com"),
            "lines": [{"sku": "INK", "quantity": 1}],
        });
        ids.push(app.place_order_id(&body).await);
    }
    ids
}

async fn all_confirmed(app: &TestApp, ids: &[String]) -> bool {
    for id in ids {
        if app.get_json(&format!("/v1/orders/{id}")).await["status"] != "CONFIRMED" {
            return false;
        }
    }
    true
}

fn expected(ids: &[String]) -> Vec<String> {
    let mut subjects: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            let short = id.replace('-', "")[24..].to_owned();
            [
                format!("Your order {short} is confirmed"),
                format!("Your invoice for order {short}"),
            ]
        })
        .collect();
    subjects.sort();
    subjects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_opens_the_circuit_orders_still_confirm_and_every_event_is_mailed_once_after() {
    let dir = std::env::temp_dir().join(format!("orderflow-smtp-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let db = dir.join("mailpit.db");
    let (smtp, http) = (free_port(), free_port());
    let sink = start_sink(smtp, http, &db).await;

    let mut env = TestEnv::new().await;
    env.config.smtp.url = format!("smtp://127.0.0.1:{smtp}");
    env.config.smtp.breaker_failures = 2;
    env.config.smtp.breaker_open_ms = 300;
    env.config.smtp.timeout_ms = 1_000;
    env.config.bridge.retry_max_ms = 500;
    let app = env.spawn(ALL).await;
    support::create_product(&app.base, "INK", 700, 1_000).await;

    let mut ids = place(&app, 3).await;
    eventually(WAIT, "the first mails arrive", || async {
        (subjects(http).await == expected(&ids)).then_some(())
    })
    .await;

    sink.stop().await;
    ids.extend(place(&app, 5).await);
    eventually(WAIT, "orders confirm while SMTP is down", || async {
        all_confirmed(&app, &ids).await.then_some(())
    })
    .await;
    eventually(WAIT, "the SMTP circuit opens", || async {
        (app.get_json("/health/ready").await["circuits"]["smtp"] == "open").then_some(())
    })
    .await;

    let sink = start_sink(smtp, http, &db).await;
    eventually(
        WAIT,
        "every event is mailed once the server is back",
        || async { (subjects(http).await == expected(&ids)).then_some(()) },
    )
    .await;
    // And it stays that way: nothing is sent twice after the catch-up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(subjects(http).await, expected(&ids));
    for dlq in ["order.events.dlq", "file.events.dlq"] {
        assert_eq!(support::topic_size(&env.config, dlq), 0, "{dlq}");
    }

    app.app.shutdown().await;
    sink.stop().await;
    env.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
