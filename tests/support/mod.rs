//! Shared test support: every test gets its own PostgreSQL database and its own Kafka topic and
//! group prefix on the real local servers (`scripts/infra up`), so tests run in parallel.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use orderflow::actors::Service;
use orderflow::config::SecretUrl;
use orderflow::domain::envelope::Envelope;
use orderflow::{App, Config};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::{AssertSqlSafe, PgPool, Row};

/// One test's isolated slice of the infrastructure.
pub struct TestEnv {
    pub config: Config,
    pub db_name: String,
    pub pool: PgPool,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        capture_logs();
        let mut config = Config::load(None).unwrap_or_else(|e| panic!("test config: {e}"));
        let id = uuid::Uuid::now_v7().simple().to_string();
        let short = &id[id.len() - 12..];
        let db_name = format!("of_test_{short}");
        let admin = PgPool::connect(config.database.url.expose())
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL (is scripts/infra up?): {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("create database {db_name}: {e}"));
        admin.close().await;
        let base = config.database.url.expose().to_owned();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{db_name}", &base[..i]),
            None => panic!("database url without a database name: {base}"),
        };
        config.database.url = SecretUrl::new(url.clone());
        config.database.max_connections = 8;
        config.kafka.topic_prefix = format!("t{short}.");
        config.kafka.group_prefix = format!("t{short}.");
        config.kafka.partitions = 3;
        config.http.bind = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        config.outbox.poll_interval_ms = 200;
        // Tests drive hundreds of requests a second from one subject and one IP; the limits
        // have their own test (rate_limit.rs), which turns them on.
        config.rate_limit.enabled = false;
        config.rate_limit.key_prefix = format!("t{short}:rl:");
        config.cache.key_prefix = format!("t{short}:cache:");
        let pool = PgPool::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {db_name}: {e}"));
        TestEnv {
            config,
            db_name,
            pool,
        }
    }

    /// Starts the real app in this process on a free port.
    pub async fn spawn(&self, services: &[Service]) -> TestApp {
        let app = App::build(self.config.clone(), services)
            .await
            .unwrap_or_else(|e| panic!("app did not start: {e}"));
        let base = format!("http://{}", app.local_addr());
        TestApp {
            app,
            base,
            http: admin_client(),
        }
    }

    /// Environment variables that point a child `orderflow` process at this test's slice.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let c = &self.config;
        vec![
            (
                "ORDERFLOW_DATABASE_URL".into(),
                c.database.url.expose().to_owned(),
            ),
            ("ORDERFLOW_KAFKA_BROKERS".into(), c.kafka.brokers.clone()),
            (
                "ORDERFLOW_KAFKA_TOPIC_PREFIX".into(),
                c.kafka.topic_prefix.clone(),
            ),
            (
                "ORDERFLOW_KAFKA_GROUP_PREFIX".into(),
                c.kafka.group_prefix.clone(),
            ),
            (
                "ORDERFLOW_KAFKA_PARTITIONS".into(),
                c.kafka.partitions.to_string(),
            ),
            ("ORDERFLOW_HTTP_BIND".into(), "127.0.0.1:0".into()),
            ("ORDERFLOW_OUTBOX_POLL_INTERVAL_MS".into(), "200".into()),
            ("ORDERFLOW_RATE_LIMIT_ENABLED".into(), "false".into()),
            (
                "ORDERFLOW_CACHE_KEY_PREFIX".into(),
                c.cache.key_prefix.clone(),
            ),
            (
                "ORDERFLOW_REDIS_URL".into(),
                c.redis.url.expose().to_owned(),
            ),
            ("ORDERFLOW_S3_ENDPOINT".into(), c.s3.endpoint.clone()),
            ("ORDERFLOW_LOG".into(), "info".into()),
        ]
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query(sql)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Drops the test database and deletes the test's topics (call at the end of a passing
    /// test), so that warm reruns do not pile thousands of partitions onto the broker.
    pub async fn cleanup(self) {
        self.delete_topics().await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&admin_url(&self.config)).await {
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&admin)
            .await;
        }
    }
}

impl TestEnv {
    async fn delete_topics(&self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
            .set("bootstrap.servers", &self.config.kafka.brokers)
            .create()
        {
            Ok(a) => a,
            Err(_) => return,
        };
        let prefix = self.config.kafka.topic_prefix.clone();
        let names: Vec<String> = match admin.inner().fetch_metadata(None, Duration::from_secs(5)) {
            Ok(m) => m
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect(),
            Err(_) => return,
        };
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if !refs.is_empty() {
            let _ = admin.delete_topics(&refs, &AdminOptions::new()).await;
        }
    }
}

fn admin_url(config: &Config) -> String {
    let url = config.database.url.expose();
    match url.rfind('/') {
        Some(i) => format!("{}/orderflow", &url[..i]),
        None => url.to_owned(),
    }
}

pub struct TestApp {
    pub app: App,
    pub base: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn place_order(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/orders"))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/orders: {e}"))
    }

    /// Places an order that must be accepted (201) and returns its id.
    pub async fn place_order_id(&self, body: &serde_json::Value) -> String {
        let resp = self.place_order(body).await;
        assert_eq!(resp.status().as_u16(), 201, "order {body} refused");
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        v["order_id"].as_str().unwrap_or_default().to_owned()
    }

    /// Places `n` orders of one `sku` each (customers `<prefix>0`, `<prefix>1`, …), one after
    /// another, each of which must be accepted; returns their ids.
    pub async fn place_orders(&self, prefix: &str, sku: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(
                self.place_order_id(&order_body(&format!("{prefix}{i}"), &[(sku, 1)]))
                    .await,
            );
        }
        ids
    }

    /// The process's Prometheus metrics (`/metrics`) as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .text()
            .await
            .unwrap_or_default()
    }

    /// `GET path` as JSON (`Null` when the body is not JSON).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_default()
    }
}

/// A bearer token of the development issuer for `sub` with `scopes`, valid for an hour. Every
/// test process (and every `orderflow` child it starts) shares the key in
/// `auth.dev_key_file`, so the token is valid at each of them.
pub fn token(sub: &str, scopes: &[&str]) -> String {
    orderflow::auth::mint_dev_token(
        &orderflow::config::AuthConfig::default(),
        sub,
        scopes,
        Duration::from_secs(3_600),
    )
    .unwrap_or_else(|e| panic!("mint a test token: {e}"))
}

/// A client builder sending a token for `sub` with `scopes` on every request.
pub fn client_builder_as(sub: &str, scopes: &[&str]) -> reqwest::ClientBuilder {
    let headers =
        orderflow::auth::bearer_headers(&token(sub, scopes)).unwrap_or_else(|e| panic!("{e}"));
    reqwest::Client::builder().default_headers(headers)
}

/// A client acting as `sub` with `scopes`.
pub fn client_as(sub: &str, scopes: &[&str]) -> reqwest::Client {
    client_builder_as(sub, scopes)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A client with every scope (it sees and may change everything): what tests use unless they
/// test access rules.
pub fn admin_client() -> reqwest::Client {
    client_as("test-admin", &orderflow::auth::scopes::ALL)
}

/// Reads the first `kind` message from `logical_topic` and publishes it `times` more times
/// (a redelivery, as after a crash between effect and offset commit).
pub async fn redeliver(config: &Config, logical_topic: &str, kind: &str, times: usize) {
    let wait = Duration::from_secs(60);
    let original = read_topic(config, logical_topic, wait, |seen| {
        seen.iter().any(|s| s.envelope.kind == kind)
    })
    .await
    .into_iter()
    .find(|s| s.envelope.kind == kind)
    .map(|s| s.envelope)
    .unwrap_or_else(|| panic!("no {kind} on {logical_topic}"));
    publish_all(config, logical_topic, &vec![original; times]).await;
}

/// The services the saga needs: order intake, the saga, inventory and payment.
pub const SAGA: &[Service] = &[
    Service::Api,
    Service::Order,
    Service::Inventory,
    Service::Payment,
];

/// The services from order intake to the file service (what invoices and receipts need).
pub const THROUGH_FILES: &[Service] = &[
    Service::Api,
    Service::Order,
    Service::Inventory,
    Service::Payment,
    Service::File,
];

/// Writer tasks on `pool` outside any app (one per schema, batches of up to 16 jobs, no
/// publishing on commit, no cache drainer), for tests that drive the repositories directly.
pub fn writers(pool: &PgPool) -> orderflow::infra::db::writer::Writers {
    orderflow::infra::db::writer::Writers::start(
        pool,
        orderflow::infra::outbox::OutboxWakers::default(),
        None,
        None,
        orderflow::infra::db::writer::WriterConfig {
            writers: 1,
            batch_max: 16,
        },
    )
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"))
}

/// A private server process a test starts and stops on purpose (an S3 server, an SMTP sink),
/// from the binary whose path `scripts/infra env` exports in `bin_env`.
pub struct Daemon {
    child: tokio::process::Child,
}

impl Daemon {
    /// Starts it and waits until every one of `ports` accepts connections.
    pub async fn start(bin_env: &str, args: &[String], ports: &[u16]) -> Daemon {
        let bin = std::env::var(bin_env).unwrap_or_else(|_| {
            panic!("{bin_env} is not set: run through ./scripts/test (scripts/infra env sets it)")
        });
        let child = tokio::process::Command::new(&bin)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        for port in ports {
            eventually(
                Duration::from_secs(15),
                "the private server answers",
                || async {
                    tokio::net::TcpStream::connect(("127.0.0.1", *port))
                        .await
                        .ok()
                        .map(|_| ())
                },
            )
            .await;
        }
        Daemon { child }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

pub fn order_body(customer: &str, lines: &[(&str, u32)]) -> serde_json::Value {
    serde_json::json!({
        "customer_id": customer,
        "currency": "EUR",
        "lines": lines.iter().map(|(sku, q)| serde_json::json!({"sku": sku, "quantity": q})).collect::<Vec<_>>(),
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A record read back from Kafka by a real consumer.
#[derive(Debug, Clone)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub envelope: Envelope,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning with a fresh consumer group until `done` says the records
/// seen so far are enough, or panics after `timeout`.
pub async fn read_topic(
    config: &Config,
    logical_topic: &str,
    timeout: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let topic = config.topic(logical_topic);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("reader-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap_or_else(|e| panic!("test consumer: {e}"));
    consumer
        .subscribe(&[&topic])
        .unwrap_or_else(|e| panic!("subscribe {topic}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("timed out reading {topic}: {} records seen", seen.len());
        }
        let msg = match tokio::time::timeout(left.min(Duration::from_millis(500)), consumer.recv())
            .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => continue,
        };
        let envelope = Envelope::decode(msg.payload().unwrap_or_default())
            .unwrap_or_else(|e| panic!("record on {topic} is not an envelope: {e}"));
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        Some((h.key.to_owned(), String::from_utf8(h.value?.to_vec()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.push(Seen {
            partition: msg.partition(),
            offset: msg.offset(),
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            envelope,
            headers,
        });
    }
    seen
}

/// How many records the topic holds in all (sum of high watermarks).
pub fn topic_size(config: &Config, logical_topic: &str) -> i64 {
    let topic = config.topic(logical_topic);
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .create()
        .unwrap_or_else(|e| panic!("test consumer: {e}"));
    (0..config.kafka.partitions)
        .map(|p| {
            // A leader election (a fresh topic, a restarted broker) answers with a retriable
            // error for a moment: ask again for a while before failing the test.
            let mut attempts = 0;
            loop {
                match consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)) {
                    Ok((low, high)) => break high - low,
                    Err(e) if attempts < 50 => {
                        attempts += 1;
                        eprintln!("watermarks of {topic}[{p}]: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("watermarks of {topic}[{p}]: {e}"),
                }
            }
        })
        .sum()
}

/// True when `group` has committed every record of the topic (its lag is zero).
pub fn group_caught_up(config: &Config, group: &str, logical_topic: &str) -> bool {
    use rdkafka::{Offset, TopicPartitionList};
    let topic = config.topic(logical_topic);
    let consumer: rdkafka::consumer::BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", group)
        .create()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.partitions {
        tpl.add_partition(&topic, p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
        return false;
    };
    (0..config.kafka.partitions).all(|p| {
        let high = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(5))
            .map(|(_, h)| h)
            .unwrap_or(i64::MAX);
        let done = match committed.find_partition(&topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        done >= high
    })
}

/// Sends the in-process services' logs (orderflow at info, everything else at warn) to the
/// test harness's captured output, so a failing test prints what the system did.
/// `ORDERFLOW_TEST_LOG` overrides the filter.
fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("ORDERFLOW_TEST_LOG")
            .unwrap_or_else(|_| "warn,orderflow=info".to_owned());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// The sum of the samples of metric `name` whose labels contain every one of `labels`
/// (`key="value"`) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An `orderflow serve` child process, for tests that kill whole processes.
pub struct ChildProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

impl ChildProcess {
    /// Starts `orderflow serve --services <services>` for this test's slice and waits until it
    /// prints its address. Logs go to `<target>/chaos-logs/<db>-<n>.log`.
    pub async fn start(env: &TestEnv, services: &str, extra_env: &[(&str, &str)]) -> ChildProcess {
        use std::io::Write;
        use tokio::io::{AsyncBufReadExt, BufReader};
        let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-logs");
        let _ = std::fs::create_dir_all(&logs);
        let log_path = logs.join(format!(
            "{}-{}.log",
            env.db_name,
            uuid::Uuid::now_v7().simple()
        ));
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"));
        cmd.args(["serve", "--services", services])
            .envs(env.child_env())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn orderflow: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| unreachable!());
        let mut lines = BufReader::new(stdout).lines();
        // The process logs to stdout: every line goes to the log file too.
        let mut log = log;
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
                if let Some(addr) = line.strip_prefix("orderflow listening on ") {
                    return Some(addr.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("orderflow did not start; see {}", log_path.display()));
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(log, "{line}");
            }
        });
        ChildProcess { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM and wait for the ordered shutdown; returns whether it exited successfully.
    pub async fn terminate(mut self) -> bool {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }
}

/// Publishes `envelope` to a logical topic, keyed by its order id (as a service's relay would).
pub async fn publish(config: &Config, logical_topic: &str, envelope: &Envelope) {
    publish_all(config, logical_topic, std::slice::from_ref(envelope)).await;
}

/// Publishes many envelopes at once (all enqueued, then all acknowledged).
pub async fn publish_all(config: &Config, logical_topic: &str, envelopes: &[Envelope]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap_or_else(|e| panic!("test producer: {e}"));
    let topic = config.topic(logical_topic);
    let encoded: Vec<(String, Vec<u8>)> = envelopes
        .iter()
        .map(|e| (e.order_id.to_string(), e.encode()))
        .collect();
    let deliveries: Vec<_> = encoded
        .iter()
        .map(|(key, payload)| {
            producer
                .send_result(FutureRecord::to(&topic).key(key).payload(payload))
                .unwrap_or_else(|(e, _)| panic!("enqueue to {topic}: {e}"))
        })
        .collect();
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("publish to {topic}: {e}"),
            Err(_) => panic!("publish to {topic}: delivery dropped"),
        }
    }
}

/// Creates a EUR product through the catalogue API of the process at `base` and expects `201`.
pub async fn create_product(base: &str, sku: &str, unit_price_minor: i64, on_hand: i64) {
    let resp = admin_client()
        .post(format!("{base}/v1/products"))
        .json(
            &serde_json::json!({"sku": sku, "name": format!("Product {sku}"),
            "unit_price_minor": unit_price_minor, "currency": "EUR", "on_hand": on_hand}),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/products: {e}"));
    assert_eq!(resp.status().as_u16(), 201, "create product {sku}");
}
