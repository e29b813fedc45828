//! `orderflow demo`: places a few orders through the HTTP API and shows each one arriving on
//! the Kafka topic and being recorded by its saga — the visible part of `./scripts/run`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::json;

use orderflow::Config;
use orderflow::domain::envelope::{Envelope, topics};
use orderflow::infra::db;

const SKUS: &[&str] = &["BOOK-RUST", "MUG-FERRIS", "SHIRT-L", "STICKER-PACK"];

pub async fn run(config: &Config, url: &str, orders: u32) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
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
    // Wait for the assignment so that "latest" is fixed before the orders are placed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while consumer.assignment()?.count() == 0 {
        if Instant::now() > deadline {
            bail!("the demo consumer got no partitions of {topic}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }

    let mut placed = HashSet::new();
    for i in 0..orders {
        let body = json!({
            "customer_id": format!("demo-customer-{}", i % 3 + 1),
            "currency": "EUR",
            "lines": [
                {"sku": SKUS[i as usize % SKUS.len()], "quantity": i + 1},
                {"sku": SKUS[(i as usize + 1) % SKUS.len()], "quantity": 1}
            ]
        });
        let resp = http
            .post(format!("{url}/v1/orders"))
            .json(&body)
            .send()
            .await
            .context("POST /v1/orders")?;
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let order: serde_json::Value = resp.json().await?;
        if status.as_u16() != 201 {
            bail!("order was not accepted: {status} {order}");
        }
        let id = order["order_id"].as_str().unwrap_or_default().to_owned();
        println!(
            "  POST /v1/orders -> {status}  {location}  status={}",
            order["status"]
        );
        placed.insert(id);
    }

    println!("  waiting for the OrderPlaced messages on Kafka topic {topic} ...");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = HashSet::new();
    while seen.len() < placed.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "only {} of {} orders reached Kafka in 30 s",
                seen.len(),
                placed.len()
            );
        }
        let Ok(msg) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let msg = msg?;
        let Some(env) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
            continue;
        };
        let id = env.order_id.to_string();
        if placed.contains(&id) && seen.insert(id.clone()) {
            let trace = msg
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            println!(
                "  kafka {}[{}]@{}  {} v{}  order={}  traceparent={}",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                env.kind,
                env.version,
                id,
                trace
            );
        }
    }

    let pool = db::connect(&config.database)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in &placed {
        let uuid = uuid::Uuid::parse_str(id)?;
        loop {
            if let Some(saga) = db::orders::load_saga(&pool, uuid).await? {
                println!("  saga {id}: {}", saga.status.as_str());
                break;
            }
            if Instant::now() > deadline {
                bail!("the saga of order {id} did not record it within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "  {} orders placed, published and recorded by their sagas",
        placed.len()
    );
    Ok(())
}
