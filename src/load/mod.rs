//! `orderflow load`: an open-model load generator. Orders are sent at a constant arrival rate
//! whatever the responses take (each request's latency counts from the instant it was due, so
//! a slow server cannot hide queueing), then followed on `order.events` until each reaches a
//! terminal state. By default it starts the chosen services (`--services`) in this same
//! process, on the local infrastructure, so the process RSS it reports is the whole system's.
//! Over the send window it also measures what the orders cost (`measure`): CPU per order of
//! every local server, SQL statements, Kafka messages and batch sizes per stage.

pub mod measure;
pub mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::actors::Service;
use crate::app::App;
use crate::config::Config;
use crate::domain::envelope::{Envelope, topics};
use crate::infra::kafka;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Target an already running deployment instead of starting one in this process.
    pub url: Option<String>,
    /// The roles to run in this process (ignored with `url`).
    pub services: Vec<Service>,
    /// How the report names that set (`core`, `all`, or the list as given).
    pub profile: String,
    pub rate: u32,
    pub duration: Duration,
    pub customers: u32,
    pub skus: u32,
    /// How long to wait after the last request for orders to reach a terminal state.
    pub settle: Duration,
    pub out: Option<PathBuf>,
    pub metrics_out: Option<PathBuf>,
    /// The bearer token to send; `None`: minted by the development issuer with every scope.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1_000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The roles that ran (`core`, `all` or a list).
    pub profile: String,
    pub offered_per_s: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// Orders that reached a terminal state within the send window, per second of it.
    pub completed_per_s: f64,
    /// Orders that reached a terminal state in the first 5 s of sending, per second.
    pub first_5s_completed_per_s: f64,
    /// POST latency in milliseconds, measured from the instant each request was due.
    pub post_ms: Percentiles,
    /// From the `201` to the order's terminal event on Kafka, in milliseconds.
    pub e2e_ms: Percentiles,
    pub confirmed: u64,
    pub cancelled: u64,
    /// Accepted orders without a terminal event when the settle time ran out.
    pub not_terminal: u64,
    pub errors: BTreeMap<String, u64>,
    /// Highest resident set size of this process during the run (MiB).
    pub rss_mib_max: f64,
    pub in_process: bool,
    /// PostgreSQL's `fsync` setting during the run (`off` makes the numbers incomparable).
    pub fsync: Option<String>,
    /// What the send window cost per completed order.
    #[serde(flatten)]
    pub costs: measure::Costs,
    /// When the first request was due (UTC), for lining the timeline up with server logs.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The send window second by second.
    pub timeline: Vec<timeline::Second>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot start orderflow: {0}")]
    Start(String),
    #[error("setup failed: {0}")]
    Setup(String),
}

/// Waits (at most 10 s) until the stock of every finished order of the run is committed or
/// released — the saga's follow-up commands after the outcome the load measures — so the
/// in-process deployment stops with a consistent database (`orderflow check` passes after a
/// run).
async fn drain_follow_ups(config: &Config, orders: &[uuid::Uuid]) {
    let Ok(pool) = crate::infra::db::connect(&config.database) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let open: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "SELECT count(*) FROM inventory.reservations r
             JOIN orders.orders o ON o.id = r.order_id
             WHERE r.order_id = ANY($1) AND r.status = 'RESERVED' AND o.status <> 'PENDING'",
        )
        .bind(orders)
        .fetch_one(&pool)
        .await;
        match open {
            Ok(0) | Err(_) => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    pool.close().await;
}

fn setup(e: impl std::fmt::Display) -> LoadError {
    LoadError::Setup(e.to_string())
}

/// Runs the load and returns its report (also written to `opts.out` as JSON).
pub async fn run(mut config: Config, opts: LoadOptions) -> Result<LoadReport, LoadError> {
    let rss = Arc::new(Mutex::new(0u64));
    let rss_task = tokio::spawn(sample_rss(rss.clone()));
    let (app, base) = match &opts.url {
        Some(url) => (None, url.trim_end_matches('/').to_owned()),
        None => {
            config.http.bind = "127.0.0.1:0".parse().map_err(setup)?;
            // A run of its own: fresh topics and groups, so it never leaves a backlog for the
            // deployment that `orderflow serve` runs on the same broker (they are deleted at
            // the end), and it never reads that deployment's history.
            let run = uuid::Uuid::now_v7().simple().to_string();
            let run = format!("load-{}.", &run[run.len() - 12..]);
            config.kafka.topic_prefix = format!("{}{run}", config.kafka.topic_prefix);
            config.kafka.group_prefix = format!("{}{run}", config.kafka.group_prefix);
            // One subject sends every order: the per-subject limits would refuse most of them
            // by design. The load measures the pipeline; the limiter has its own test.
            config.rate_limit.enabled = false;
            let app = App::build(config.clone(), &opts.services)
                .await
                .map_err(|e| LoadError::Start(e.to_string()))?;
            let base = format!("http://{}", app.local_addr());
            (Some(app), base)
        }
    };
    let token = match &opts.token {
        Some(t) => t.clone(),
        None => crate::auth::mint_dev_token(
            &config.auth,
            "load-generator",
            &crate::auth::scopes::ALL,
            opts.duration + opts.settle + Duration::from_secs(600),
        )
        .map_err(setup)?,
    };
    let http = reqwest::Client::builder()
        .default_headers(crate::auth::bearer_headers(&token).map_err(setup)?)
        .pool_max_idle_per_host(1_024)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(setup)?;
    seed(&http, &base, opts.skus).await?;
    let (terminal_tx, mut terminal_rx) = mpsc::unbounded_channel();
    let consumer = terminal_events(&config).await?;
    let consumer_task = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(msg) => {
                    // Only the outcomes matter: skip the other events by their type header
                    // before decoding anything.
                    let kind = msg.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "message-type")
                            .and_then(|h| h.value)
                    });
                    if !matches!(kind, Some(b"OrderConfirmed" | b"OrderCancelled")) {
                        continue;
                    }
                    let Some(env) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
                        continue;
                    };
                    if env.kind == "OrderConfirmed" || env.kind == "OrderCancelled" {
                        let confirmed = env.kind == "OrderConfirmed";
                        if terminal_tx
                            .send((env.order_id.to_string(), confirmed, Instant::now()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "load consumer error"),
            }
        }
    });

    // Measure a running system: one order through the whole saga before the clock starts
    // (consumer groups joined, connections open, topics warm).
    warm_up(&http, &base, &mut terminal_rx).await?;
    let pool = crate::infra::db::connect(&config.database).ok();
    let fsync = match &pool {
        Some(pool) => measure::fsync(pool).await,
        None => None,
    };
    let in_process = opts.url.is_none();
    let window_start =
        measure::Snapshot::take(in_process, pool.as_ref(), scrape(&http, &base).await).await;

    // Open model: one request per tick, each in its own task.
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1)));
    let total = (opts.duration.as_secs_f64() * f64::from(opts.rate)).round() as u64;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    // The POST latencies and the timeline, under one lock: a request takes it once.
    let latencies = Arc::new(Mutex::new(Latencies {
        post: new_hist(),
        timeline: timeline::Timeline::new(started),
    }));
    // Finished requests are reaped as the run goes: a task's memory lives until it is joined,
    // and 40,000 kept handles held ~200 MiB of this process's RSS at 2,000/s.
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..total {
        while requests.try_join_next().is_some() {}
        let due = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (http, base, accepted, latencies, errors) = (
            http.clone(),
            base.clone(),
            accepted.clone(),
            latencies.clone(),
            errors.clone(),
        );
        let customer = i % u64::from(opts.customers.max(1));
        // With an address, so the notification service (in `all`) sends the order's mails.
        let body = json!({
            "customer_id": format!("load-customer-{customer}"),
            "email": format!("load-customer-{customer}@example.com"),
            "currency": "EUR",
            "lines": [{"sku": format!("LOAD-{:04}", i % u64::from(opts.skus.max(1))), "quantity": 1}],
        });
        requests.spawn(async move {
            let result = http
                .post(format!("{base}/v1/orders"))
                .json(&body)
                .send()
                .await;
            let latency = due.elapsed();
            {
                let mut l = lock(&latencies);
                l.post.saturating_record(latency.as_micros() as u64);
                l.timeline.post(due, latency);
            }
            match result {
                Ok(resp) if resp.status().as_u16() == 201 => {
                    let at = Instant::now();
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    if let Some(id) = v["order_id"].as_str() {
                        lock(&accepted).insert(id.to_owned(), at);
                    }
                }
                Ok(resp) => {
                    *lock(&errors)
                        .entry(format!("http_{}", resp.status().as_u16()))
                        .or_default() += 1
                }
                Err(e) if e.is_timeout() => {
                    *lock(&errors).entry("timeout".into()).or_default() += 1
                }
                Err(_) => *lock(&errors).entry("connect".into()).or_default() += 1,
            }
        });
    }
    while requests.join_next().await.is_some() {}
    let sending = started.elapsed();
    let window_end =
        measure::Snapshot::take(in_process, pool.as_ref(), scrape(&http, &base).await).await;
    let window_closed = Instant::now();
    let first_5s = started + Duration::from_secs(5);
    let (mut in_window, mut in_first_5s) = (0u64, 0u64);

    // Follow every accepted order to its end, or until the settle time runs out.
    let mut terminal_hist = new_hist();
    let (mut confirmed, mut cancelled) = (0u64, 0u64);
    let mut pending: HashMap<String, Instant> = std::mem::take(&mut *lock(&accepted));
    let mut early: HashMap<String, (bool, Instant)> = HashMap::new();
    let settle_until = Instant::now() + opts.settle;
    let n_accepted = pending.len() as u64;
    let accepted_ids: Vec<uuid::Uuid> = pending
        .keys()
        .filter_map(|id| uuid::Uuid::try_parse(id).ok())
        .collect();
    // Terminal events may have arrived before the 201 was processed: match both ways.
    while !pending.is_empty() {
        let left = settle_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, terminal_rx.recv()).await {
            Ok(Some((id, ok, at))) => {
                early.insert(id, (ok, at));
            }
            _ => break,
        }
        early.retain(|id, (ok, at)| match pending.remove(id) {
            Some(accepted_at) => {
                let took = at.saturating_duration_since(accepted_at);
                terminal_hist.saturating_record(took.as_micros() as u64);
                lock(&latencies).timeline.finished(accepted_at, took);
                if *ok {
                    confirmed += 1
                } else {
                    cancelled += 1
                }
                in_window += u64::from(*at <= window_closed);
                in_first_5s += u64::from(*at <= first_5s);
                false
            }
            None => true,
        });
    }
    consumer_task.abort();
    if let Some(path) = &opts.metrics_out {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(setup)?
            .text()
            .await
            .map_err(setup)?;
        std::fs::write(path, text).map_err(setup)?;
    }
    if let Some(app) = app {
        drain_follow_ups(&config, &accepted_ids).await;
        app.shutdown().await;
        match kafka::delete_prefixed(&config.kafka, &config.kafka.topic_prefix).await {
            Ok(n) => tracing::debug!(topics = n, "the run's topics are deleted"),
            Err(e) => {
                tracing::warn!(error = %e, prefix = %config.kafka.topic_prefix, "the run's topics stay behind")
            }
        }
    }
    rss_task.abort();
    if let Some(pool) = pool {
        pool.close().await;
    }

    let window_s = window_closed
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(0.001);
    // One guard, dropped before the report is built (a second `lock` inside the struct
    // expression would wait for the first guard, a temporary that lives to its end).
    let (post_ms, timeline) = {
        let l = lock(&latencies);
        (Percentiles::of(&l.post), l.timeline.seconds())
    };
    let report = LoadReport {
        profile: opts.profile.clone(),
        offered_per_s: f64::from(opts.rate),
        duration_s: sending.as_secs_f64(),
        sent: total,
        accepted: n_accepted,
        accepted_per_s: n_accepted as f64 / sending.as_secs_f64().max(0.001),
        completed_per_s: in_window as f64 / window_s,
        first_5s_completed_per_s: in_first_5s as f64 / window_s.min(5.0),
        post_ms,
        e2e_ms: Percentiles::of(&terminal_hist),
        confirmed,
        cancelled,
        not_terminal: pending.len() as u64,
        errors: lock(&errors).clone(),
        rss_mib_max: *lock(&rss) as f64 / 1024.0,
        in_process,
        fsync,
        costs: window_start.costs_until(&window_end, in_window),
        started_at,
        timeline,
    };
    if let Some(path) = &opts.out {
        let json = serde_json::to_vec_pretty(&report).map_err(setup)?;
        std::fs::write(path, json).map_err(setup)?;
    }
    Ok(report)
}

/// The deployment's Prometheus metrics as text (`None` when they cannot be read).
async fn scrape(http: &reqwest::Client, base: &str) -> Option<String> {
    let resp = http.get(format!("{base}/metrics")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// Places one order and waits for its terminal event.
async fn warm_up(
    http: &reqwest::Client,
    base: &str,
    terminal: &mut mpsc::UnboundedReceiver<(String, bool, Instant)>,
) -> Result<(), LoadError> {
    let resp = http
        .post(format!("{base}/v1/orders"))
        .json(&json!({"customer_id": "load-warm-up", "currency": "EUR",
                      "lines": [{"sku": "LOAD-0000", "quantity": 1}]}))
        .send()
        .await
        .map_err(setup)?;
    let v: serde_json::Value = resp.json().await.map_err(setup)?;
    let id = v["order_id"]
        .as_str()
        .ok_or_else(|| setup(format!("warm-up order refused: {v}")))?
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, terminal.recv()).await {
            Ok(Some((done, _, _))) if done == id => return Ok(()),
            Ok(Some(_)) => {}
            _ => return Err(setup("the warm-up order did not finish within 120 s")),
        }
    }
}

/// What the request tasks record per request, and the outcome reader per finished order.
struct Latencies {
    post: Histogram<u64>,
    timeline: timeline::Timeline,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 5 minutes with 3 significant digits; the bounds are constants that are valid.
    Histogram::new_with_bounds(1, 300_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates `skus` products with more stock than any run can sell.
async fn seed(http: &reqwest::Client, base: &str, skus: u32) -> Result<(), LoadError> {
    for i in 0..skus.max(1) {
        let sku = format!("LOAD-{i:04}");
        let resp = http
            .post(format!("{base}/v1/products"))
            .json(&json!({"sku": sku, "name": sku, "unit_price_minor": 100, "currency": "EUR", "on_hand": 1_000_000_000}))
            .send()
            .await
            .map_err(setup)?;
        if !matches!(resp.status().as_u16(), 201 | 409) {
            return Err(setup(format!("cannot create {sku}: {}", resp.status())));
        }
    }
    Ok(())
}

async fn terminal_events(config: &Config) -> Result<StreamConsumer, LoadError> {
    let topic = config.topic(topics::ORDER_EVENTS);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("orderflow-load-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set(
            "fetch.wait.max.ms",
            config.kafka.fetch_wait_max_ms.to_string(),
        )
        .set("fetch.min.bytes", config.kafka.fetch_min_bytes.to_string())
        .create()
        .map_err(setup)?;
    consumer.subscribe(&[&topic]).map_err(setup)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while consumer.assignment().map_err(setup)?.count() == 0 {
        if Instant::now() > deadline {
            return Err(setup(format!("no partitions of {topic} assigned")));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    Ok(consumer)
}

/// Samples this process's resident set size (KiB) every 250 ms, keeping the highest.
async fn sample_rss(max: Arc<Mutex<u64>>) {
    loop {
        if let Ok(status) = tokio::fs::read_to_string("/proc/self/status").await {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
            let mut m = lock(&max);
            *m = (*m).max(kib);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl LoadReport {
    /// The median and the worst second's e2e p99, and the worst second's POST p99.
    fn seconds_summary(&self) -> String {
        let worst = |f: fn(&timeline::Second) -> f64| {
            self.timeline
                .iter()
                .max_by(|a, b| f(a).total_cmp(&f(b)))
                .map(|s| (s.second, f(s)))
        };
        let mut e2e: Vec<f64> = self
            .timeline
            .iter()
            .filter(|s| s.finished > 0)
            .map(|s| s.e2e_p99_ms)
            .collect();
        e2e.sort_by(f64::total_cmp);
        match (
            e2e.get(e2e.len() / 2),
            worst(|s| s.e2e_p99_ms),
            worst(|s| s.post_p99_ms),
        ) {
            (Some(median), Some((es, ev)), Some((ps, pv))) => format!(
                "e2e p99 ms median {median:.0}, worst {ev:.0} (second {es}); \
                 POST p99 ms worst {pv:.1} (second {ps})"
            ),
            _ => "n/a".to_owned(),
        }
    }

    pub fn summary(&self) -> String {
        let p = &self.post_ms;
        let t = &self.e2e_ms;
        let c = &self.costs;
        let cpu: Vec<String> = c
            .cpu_ms_per_order
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        let batches: Vec<String> = c
            .batch_mean
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        let stages: Vec<String> = c
            .stage_mean_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
        let seconds = self.seconds_summary();
        let mut scans: Vec<(&String, &i64)> = c.seq_tuples_read.iter().collect();
        scans.sort_by(|a, b| b.1.cmp(a.1));
        let scans: Vec<String> = scans
            .iter()
            .take(4)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        format!(
            "profile {}: offered {} orders/s for {:.1} s: sent {}, accepted {} ({:.0}/s), \
             completed {:.0}/s (first 5 s {:.0}/s)\n\
             POST latency ms            p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             accepted->terminal ms      p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
             confirmed {}, cancelled {}, not terminal {}, errors {:?}\n\
             CPU ms per order           {} (total {:.3})\n\
             per order                  SQL statements {}, Kafka messages {}\n\
             mean batch                 {}\n\
             mean stage ms              {}\n\
             per second                 {}\n\
             seq-scanned tuples         {}\n\
             max RSS {:.1} MiB, fsync {} ({})",
            self.profile,
            self.offered_per_s,
            self.duration_s,
            self.sent,
            self.accepted,
            self.accepted_per_s,
            self.completed_per_s,
            self.first_5s_completed_per_s,
            p.p50,
            p.p99,
            p.p999,
            p.max,
            t.p50,
            t.p99,
            t.p999,
            t.max,
            self.confirmed,
            self.cancelled,
            self.not_terminal,
            self.errors,
            cpu.join(", "),
            c.cpu_ms_per_order.values().sum::<f64>(),
            opt(c.sql_statements_per_order),
            opt(c.kafka_messages_per_order),
            batches.join(", "),
            stages.join(", "),
            seconds,
            if scans.is_empty() {
                "none".to_owned()
            } else {
                scans.join(", ")
            },
            self.rss_mib_max,
            self.fsync.as_deref().unwrap_or("unknown"),
            if self.in_process {
                "the services and the load generator in this process"
            } else {
                "load generator only"
            }
        )
    }
}
