//! `orderflow demo`: stocks a small catalogue, places orders through the HTTP API that end in
//! each way a saga can end (confirmed, payment declined, out of stock, cancelled by the
//! customer), and prints every saga's path and the events it announced on Kafka — the visible
//! part of `./scripts/run`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{Value, json};
use sqlx::Row;

use orderflow::Config;
use orderflow::domain::envelope::{Envelope, topics};
use orderflow::infra::db;

const CATALOGUE: &[(&str, &str, i64, i64)] = &[
    (
        "BOOK-RUST",
        "The Rust Programming Language",
        3_990,
        1_000_000,
    ),
    ("MUG-FERRIS", "Ferris mug", 1_250, 1_000_000),
    ("STICKER-PACK", "Sticker pack", 300, 1_000_000),
    ("LIMITED-PRINT", "Signed print (sold out)", 25_000, 0),
];

struct Scenario {
    title: &'static str,
    lines: &'static [(&'static str, u32)],
    card_token: &'static str,
    cancel: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        title: "happy path",
        lines: &[("BOOK-RUST", 1), ("MUG-FERRIS", 2)],
        card_token: "tok_visa",
        cancel: false,
    },
    Scenario {
        title: "payment declined",
        lines: &[("STICKER-PACK", 3)],
        card_token: "tok_decline",
        cancel: false,
    },
    Scenario {
        title: "out of stock",
        lines: &[("LIMITED-PRINT", 1), ("MUG-FERRIS", 1)],
        card_token: "tok_visa",
        cancel: false,
    },
    Scenario {
        title: "customer cancels",
        lines: &[("BOOK-RUST", 2)],
        card_token: "tok_slow",
        cancel: true,
    },
];

pub async fn run(config: &Config, url: &str, orders: u32) -> anyhow::Result<()> {
    // The demo stocks the catalogue and orders for several customers: every scope.
    let token = orderflow::auth::mint_dev_token(
        &config.auth,
        "demo",
        &orderflow::auth::scopes::ALL,
        Duration::from_secs(3_600),
    )?;
    let headers = orderflow::auth::bearer_headers(&token)?;
    let http = reqwest::Client::builder()
        .default_headers(headers.clone())
        .build()?;
    stock_catalogue(&http, url).await?;
    let events = events_consumer(config).await?;

    let mut placed = Vec::new();
    for i in 0..orders.max(1) {
        let s = &SCENARIOS[i as usize % SCENARIOS.len()];
        let body = json!({
            "customer_id": format!("demo-customer-{}", i % 3 + 1),
            "email": format!("demo-customer-{}@example.com", i % 3 + 1),
            "currency": "EUR",
            "card_token": s.card_token,
            "lines": s.lines.iter().map(|(sku, q)| json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
        });
        let resp = http
            .post(format!("{url}/v1/orders"))
            .json(&body)
            .send()
            .await
            .context("POST /v1/orders")?;
        let status = resp.status();
        let order: Value = resp.json().await?;
        if status.as_u16() != 201 {
            bail!("order was not accepted: {status} {order}");
        }
        let id = order["order_id"].as_str().unwrap_or_default().to_owned();
        println!(
            "  POST /v1/orders ({:<16}) -> {status}  /v1/orders/{id}",
            s.title
        );
        if s.cancel {
            let resp = http
                .post(format!("{url}/v1/orders/{id}/cancel"))
                .send()
                .await?;
            println!("  POST /v1/orders/{id}/cancel -> {}", resp.status());
        }
        placed.push((s.title, id));
    }

    println!("  waiting for every saga to end ...");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (title, id) in &placed {
        let order = loop {
            let order: Value = http
                .get(format!("{url}/v1/orders/{id}"))
                .send()
                .await?
                .json()
                .await?;
            if order["status"] != "PENDING" {
                break order;
            }
            if Instant::now() > deadline {
                bail!("order {id} ({title}) did not end within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let reason = order["cancel_reason"]
            .as_str()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default();
        println!(
            "  {title:<16} {id}  {}{reason}",
            order["status"].as_str().unwrap_or("?")
        );
    }

    let pool = db::connect(&config.database)?;
    for (title, id) in &placed {
        let uuid = uuid::Uuid::parse_str(id)?;
        let rows = sqlx::query(
            "SELECT message_type, to_status FROM orders.saga_journal WHERE order_id = $1 ORDER BY id",
        )
        .bind(uuid)
        .fetch_all(&pool)
        .await?;
        let path: Vec<String> = rows
            .iter()
            .map(|r| {
                let msg: String = r.try_get("message_type").unwrap_or_default();
                let to: String = r.try_get("to_status").unwrap_or_default();
                format!("{msg} -> {to}")
            })
            .collect();
        println!("  saga {title:<16} {}", path.join(", "));
    }

    let wanted: Vec<&str> = placed.iter().map(|(_, id)| id.as_str()).collect();
    let mut announced = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while announced < wanted.len() && Instant::now() < deadline {
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        else {
            continue;
        };
        let Some(env) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
            continue;
        };
        if (env.kind == "OrderConfirmed" || env.kind == "OrderCancelled")
            && wanted.contains(&env.order_id.to_string().as_str())
        {
            announced += 1;
            println!(
                "  kafka {}[{}]@{}  {}  order={}",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                env.kind,
                env.order_id
            );
        }
    }
    println!(
        "  {} orders placed; every saga ended and announced its outcome on Kafka",
        placed.len()
    );
    print_invoice_links(url, &placed, headers).await
}

/// Waits for the invoice of each confirmed order and prints its presigned download link.
async fn print_invoice_links(
    url: &str,
    placed: &[(&str, String)],
    headers: reqwest::header::HeaderMap,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (title, id) in placed {
        let status: Value = http
            .get(format!("{url}/v1/orders/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if status["status"] != "CONFIRMED" {
            continue;
        }
        loop {
            let resp = http
                .get(format!("{url}/v1/orders/{id}/invoice"))
                .send()
                .await?;
            if resp.status() == reqwest::StatusCode::SEE_OTHER {
                let link = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                println!("  invoice {title:<13} {link}");
                break;
            }
            if Instant::now() > deadline {
                // Not fatal: a file service that joined late may still be working through the
                // confirmations retained on order.events before this one.
                println!(
                    "  invoice {title:<13} not stored within 30 s (the file service may be catching up; GET /v1/orders/{id}/invoice later)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "  (invoice links are presigned and expire; GET /v1/orders/{{id}}/invoice makes a new one)"
    );
    println!(
        "  the customers' mails: the SMTP sink's inbox (mailpit: http://127.0.0.1:8025 locally); each order's log: GET /v1/orders/{{id}}/notifications"
    );
    Ok(())
}

/// Creates the demo catalogue, or resets its stock when it exists (so the demo can rerun).
async fn stock_catalogue(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for (sku, name, price, on_hand) in CATALOGUE {
        let fields =
            json!({"name": name, "unit_price_minor": price, "currency": "EUR", "on_hand": on_hand});
        let mut create = fields.clone();
        create["sku"] = json!(sku);
        let resp = http
            .post(format!("{url}/v1/products"))
            .json(&create)
            .send()
            .await?;
        match resp.status().as_u16() {
            201 => println!("  POST /v1/products {sku} (on hand {on_hand})"),
            409 => {
                // Exists: top up to the demo's stock (reserved units stay reserved).
                let current: Value = http
                    .get(format!("{url}/v1/products/{sku}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let mut fields = fields;
                let reserved = current["reserved"].as_i64().unwrap_or(0);
                fields["on_hand"] = json!(on_hand + reserved);
                let resp = http
                    .put(format!("{url}/v1/products/{sku}"))
                    .json(&fields)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("cannot reset product {sku}: {}", resp.status());
                }
            }
            s => bail!("cannot create product {sku}: {s}"),
        }
    }
    Ok(())
}

/// A consumer of `order.events` positioned at the end, before any demo order is placed.
async fn events_consumer(config: &Config) -> anyhow::Result<StreamConsumer> {
    let topic = config.topic(topics::ORDER_EVENTS);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("orderflow-demo-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while consumer.assignment()?.count() == 0 {
        if Instant::now() > deadline {
            bail!("the demo consumer got no partitions of {topic}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    Ok(consumer)
}
