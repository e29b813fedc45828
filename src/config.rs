//! Typed configuration, loaded once: defaults that work with `scripts/infra`, then an optional
//! TOML file (`--config` or `ORDERFLOW_CONFIG`), then `ORDERFLOW_*` environment variables.
//! Secrets are redacted in `Debug` and in `orderflow config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret string: its `Debug` and `Serialize` never show the value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A URL that may carry a password (`postgres://user:pass@host/db`): shown with the password
/// replaced by `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Replaces the password of `scheme://user:password@host…` with `[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:[redacted]{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub s3: S3Config,
    pub outbox: OutboxConfig,
    pub saga: SagaConfig,
    pub inventory: InventoryConfig,
    pub payment: PaymentConfig,
    pub files: FilesConfig,
    pub smtp: SmtpConfig,
    pub notifications: NotificationsConfig,
    pub bridge: BridgeConfig,
    pub supervision: SupervisionConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub idempotency: IdempotencyConfig,
    pub cache: CacheConfig,
}

/// The Redis read cache of catalogue entries and orders (see `src/infra/cache.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Entries expire after this long even without a change (it bounds memory; changes
    /// invalidate at once).
    pub ttl_secs: u64,
    pub key_prefix: String,
    /// How long a request waits for the cache before reading PostgreSQL instead.
    pub timeout_ms: u64,
    /// The drainer of `cache.changes` runs after this process's writers commit; without one
    /// (changes made by other processes or by hand) it looks this often.
    pub drain_poll_ms: u64,
    /// The least time between two drains, so one drain takes what several commits wrote.
    /// Under load every commit changes stock or an order's status: at 5 ms the drain (four
    /// round trips) ran ~130 times a second at 1,000 orders/s; at 50 ms at most 20, and a
    /// cached entry outlives its change by at most that long.
    pub drain_gap_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 300,
            key_prefix: "orderflow:cache:".into(),
            timeout_ms: 50,
            drain_poll_ms: 250,
            drain_gap_ms: 50,
        }
    }
}

/// `Idempotency-Key` on `POST /v1/orders` and `POST /v1/files`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a key's response is kept and answered again.
    pub ttl_secs: u64,
    /// A key whose first request has no response after this long was abandoned (its process
    /// died before committing anything) and may be claimed again.
    pub abandon_after_secs: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 24 * 3_600,
            abandon_after_secs: 60,
        }
    }
}

/// One limit: `per_second` on average, up to `burst` at once (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_second: f64,
    pub burst: u32,
}

/// What the API does when Redis cannot tell whether a request is within its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Admit the request (logged and counted): availability over protection.
    Open,
    /// Refuse it with 503: protection over availability.
    Closed,
}

impl std::str::FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(FailMode::Open),
            "closed" => Ok(FailMode::Closed),
            _ => Err("expected open or closed".into()),
        }
    }
}

/// Rate limits shared by every instance through Redis (see `src/infra/ratelimit.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub on_redis_error: FailMode,
    /// Prefix of the Redis keys (deployments sharing a Redis keep apart by it).
    pub key_prefix: String,
    /// How long a request waits for Redis before `on_redis_error` decides.
    pub timeout_ms: u64,
    /// Per client IP, over every `/v1` route, checked before the token.
    pub per_ip: Limit,
    /// Per token subject and route, for routes not in `routes`.
    pub per_subject: Limit,
    /// Per token subject for one route, keyed `"METHOD /route"` as in the metrics'
    /// `route` label (for example `"POST /v1/orders"`).
    pub routes: std::collections::BTreeMap<String, Limit>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let mut routes = std::collections::BTreeMap::new();
        routes.insert(
            "POST /v1/orders".to_owned(),
            Limit {
                per_second: 10.0,
                burst: 20,
            },
        );
        routes.insert(
            "POST /v1/files".to_owned(),
            Limit {
                per_second: 2.0,
                burst: 10,
            },
        );
        Self {
            enabled: true,
            on_redis_error: FailMode::Open,
            key_prefix: "orderflow:rl:".into(),
            timeout_ms: 100,
            per_ip: Limit {
                per_second: 200.0,
                burst: 400,
            },
            per_subject: Limit {
                per_second: 50.0,
                burst: 100,
            },
            routes,
        }
    }
}

/// Where bearer tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The deployment is its own issuer: an ES256 key in `dev_key_file` (created on first
    /// use), published at `/.well-known/jwks.json`; `orderflow token` mints tokens with it.
    Dev,
    /// An OpenID Connect provider: keys from `jwks_url`, or discovered from the issuer.
    Oidc,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dev" => Ok(AuthMode::Dev),
            "oidc" => Ok(AuthMode::Oidc),
            _ => Err("expected dev or oidc".into()),
        }
    }
}

/// OAuth2 bearer tokens (see `src/auth.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The `iss` every token must carry (with OIDC: the provider's issuer URL).
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The issuer's JWKS; empty: discovered from `<issuer>/.well-known/openid-configuration`.
    pub jwks_url: String,
    /// The development issuer's private key (PKCS#8), created when missing.
    pub dev_key_file: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Cached keys are fetched again after this long.
    pub jwks_refresh_secs: u64,
    /// A token naming an unknown key fetches the keys again, at most this often.
    pub jwks_min_refresh_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Dev,
            issuer: "orderflow-dev".into(),
            audience: "orderflow".into(),
            jwks_url: String::new(),
            // In the user's cache, so every process of this user (whatever its working
            // directory) signs and validates with the same key.
            dev_key_file: match std::env::var("HOME") {
                Ok(home) if !home.is_empty() => {
                    format!("{home}/.cache/orderflow/auth/dev-signing-key.p8")
                }
                _ => ".orderflow/auth/dev-signing-key.p8".into(),
            },
            leeway_secs: 30,
            jwks_refresh_secs: 300,
            jwks_min_refresh_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the API listens on; port 0 picks a free port (tests).
    pub bind: SocketAddr,
    /// Largest accepted request body.
    pub body_limit_bytes: u64,
    /// Orders per page when `limit` is not given, and the largest `limit` accepted.
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// Time a readiness probe waits for each dependency.
    pub ready_timeout_ms: u64,
    /// The docs page's assets (`scripts/docs-assets` puts swagger-ui-dist there).
    pub docs_dir: String,
    /// Origins (`https://shop.example.com`) whose browser pages may call the API (CORS);
    /// empty: no cross-origin access.
    pub cors_allowed_origins: Vec<String>,
    /// How long a client may take to send a request's head (line and headers).
    pub header_read_timeout_ms: u64,
    /// The largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// The longest a response may take to start (503 `deadline_exceeded` after it), reading
    /// the request body included (an upload must arrive within it); response bodies and
    /// websockets stream without a deadline.
    pub request_timeout_ms: u64,
    /// Orders this process accepted that may be open (not yet confirmed or cancelled) at once;
    /// beyond it `POST /v1/orders` answers 503 `overloaded` at once (0: no bound). Keeps the
    /// pipeline completing at its capacity under overload instead of queueing everything.
    pub max_open_orders: usize,
    /// After this long an open order whose end this process did not see stops counting.
    pub open_order_max_age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: SecretUrl,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when the process starts (`orderflow migrate` does it alone).
    pub migrate_on_start: bool,
    /// Group-commit writer tasks per schema (inventory always has one per process).
    pub writers: usize,
    /// The most handler writes committed in one transaction.
    pub batch_max: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Prepended to every topic name (isolates tests and tenants on one cluster).
    pub topic_prefix: String,
    /// Prepended to every consumer group id.
    pub group_prefix: String,
    /// Partitions and replication factor used when this process creates a missing topic.
    /// Partitions bound how many processes share a service's work; each costs the broker per
    /// request. 3: at 900 orders/s the broker spent 0.36–0.41 ms per order against 0.46–0.49
    /// with 6 (docs/performance.md). Raise it for a deployment of more processes.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Producer batching delay. 5 ms: 6.5 % less CPU per order than 2 ms at 100 orders/s and a
    /// lower p99 (three runs each, docs/performance.md).
    pub linger_ms: u64,
    /// Producer compression of record batches: `none`, `lz4`, `snappy` or `gzip` (the build
    /// has no zstd).
    /// lz4: at 1,000 orders/s `none` cost the broker 6-11 % more CPU per order and orderflow no
    /// less (three alternated runs each, docs/performance.md): the broker's cost follows bytes
    /// as well as requests.
    pub compression: String,
    /// Consumers: the broker answers a fetch once this many bytes are there, or after
    /// `fetch_wait_max_ms`. More bytes mean fewer, larger fetches under load and a little
    /// latency when idle.
    pub fetch_min_bytes: u32,
    pub fetch_wait_max_ms: u64,
    pub request_timeout_ms: u64,
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: SecretUrl,
    pub pool_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: Secret,
    /// Path-style addressing (`endpoint/bucket/key`), needed by local servers.
    pub force_path_style: bool,
    /// Consecutive failed S3 calls that open its circuit, and how long it stays open before
    /// one call probes it.
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Run the relay in processes that run a service owning an outbox.
    pub relay_enabled: bool,
    /// Rows published per transaction.
    pub batch_size: i64,
    /// Fallback polling interval when no commit wakes the relay.
    pub poll_interval_ms: u64,
    /// After a wake-up, how long the relay lets more commits gather before it publishes: a
    /// little latency for fewer, larger batches under load.
    pub batch_delay_ms: u64,
    /// Writers publish the rows of each batch right after its commit; the relay then only
    /// sweeps rows left behind for `stale_after_ms`. Off: the relay publishes every row.
    pub publish_on_commit: bool,
    /// When publishing on commit, how old an unpublished row must be before the relay's poll
    /// takes it (a process died before publishing it, or its publish failed).
    pub stale_after_ms: u64,
    /// After a failed publish on commit, how long the schema's rows go through the relay.
    pub failure_pause_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaConfig {
    /// A saga with nothing to do for this long stops; it is rehydrated on its next message.
    pub idle_timeout_ms: u64,
    /// How long the saga waits for the inventory's answer to `ReserveStock`.
    pub stock_timeout_ms: u64,
    /// How long the saga waits for the payment's answer to `AuthorizePayment`.
    pub payment_timeout_ms: u64,
    /// How long the saga waits for `StockReleased` before asking again.
    pub release_timeout_ms: u64,
    /// How often the timer sweeper looks for passed deadlines.
    pub timer_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// The most inventory commands in one partition's batch (all of a batch run at once; one
    /// order's commands one after another), so at most partitions × this in progress.
    pub workers: usize,
    /// How long a reservation holds stock before the sweeper releases it.
    pub reservation_ttl_secs: u64,
    /// How often the sweeper looks for expired reservations.
    pub expiry_interval_ms: u64,
}

/// The SMTP server notifications are sent through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://host:port` (plain SMTP, for a loopback relay or sink such as mailpit).
    pub url: String,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    pub timeout_ms: u64,
    /// Consecutive failed sends that open the SMTP circuit, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: "smtp://127.0.0.1:1025".into(),
            from: "Orderflow Demo Shop <orders@orderflow.invalid>".into(),
            timeout_ms: 5_000,
            breaker_failures: 5,
            breaker_open_ms: 2_000,
        }
    }
}

/// The notification service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Mails sent at once (per process, across the partitions' batches).
    pub workers: usize,
    /// The API's public address, for the links in mails.
    pub public_url: String,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}

/// The file service: invoices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// The seller printed on invoices.
    pub seller: String,
    /// The VAT rate the prices include, in percent (shown on invoices).
    pub vat_percent: u32,
    /// How long a presigned download link stays valid.
    pub presign_ttl_secs: u64,
    /// Documents rendered and uploaded at once (per process, across the partitions' batches).
    pub workers: usize,
    /// The largest file a user may upload.
    pub max_upload_bytes: u64,
    /// Uploads above this size go to S3 in parts of this size (multipart upload; S3 wants
    /// parts of at least 5 MiB).
    pub multipart_part_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            seller: "Orderflow Demo Shop".into(),
            vat_percent: 20,
            presign_ttl_secs: 300,
            workers: 16,
            max_upload_bytes: 16 * 1024 * 1024,
            multipart_part_bytes: 5 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentConfig {
    /// The most payment commands (and so provider calls) in one partition's batch, so at most
    /// partitions × this in progress.
    pub workers: usize,
    /// How long one provider call may take before it is retried.
    pub provider_timeout_ms: u64,
    /// Latency of the local card network, and of its `tok_slow` card.
    pub latency_ms: u64,
    pub slow_latency_ms: u64,
    /// The local card network declines larger amounts (`amount_limit_exceeded`).
    pub amount_limit_minor: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Records of one partition dispatched and not yet durable before the partition pauses.
    pub max_in_flight: usize,
    /// How long a handler may take before the bridge retries the record, counted from when a
    /// keyed worker starts on it (not while it waits in the worker's mailbox).
    pub handler_timeout_ms: u64,
    /// Retry backoff for a failed record: initial and cap.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Transient failures of one record before it goes to its dead-letter topic.
    pub max_attempts: u32,
    /// How long a revoke or a shutdown waits for the partitions' in-flight records to finish
    /// (so their offsets are committed before another consumer takes the partitions over).
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window_secs` before a supervisor gives up.
    pub max_restarts: u32,
    pub restart_window_secs: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info,orderflow=debug`.
    pub filter: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            default_page_size: 50,
            max_page_size: 500,
            ready_timeout_ms: 2_000,
            docs_dir: match std::env::var("HOME") {
                Ok(home) if !home.is_empty() => format!("{home}/.cache/orderflow/docs/swagger-ui"),
                _ => ".orderflow/docs/swagger-ui".into(),
            },
            cors_allowed_origins: Vec::new(),
            header_read_timeout_ms: 10_000,
            max_header_bytes: 32 * 1024,
            request_timeout_ms: 30_000,
            max_open_orders: 1_000,
            open_order_max_age_ms: 60_000,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("postgres://orderflow:orderflow@127.0.0.1:5432/orderflow"),
            max_connections: 32,
            acquire_timeout_ms: 5_000,
            migrate_on_start: true,
            writers: 2,
            batch_max: 128,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            group_prefix: "orderflow.".into(),
            partitions: 3,
            replication_factor: 1,
            linger_ms: 5,
            compression: "lz4".into(),
            fetch_min_bytes: 8_192,
            fetch_wait_max_ms: 50,
            request_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("redis://127.0.0.1:6379"),
            pool_size: 16,
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4566".into(),
            region: "us-east-1".into(),
            bucket: "orderflow-documents".into(),
            access_key: "orderflow".into(),
            secret_key: Secret::new("orderflow-secret"),
            force_path_style: true,
            breaker_failures: 5,
            breaker_open_ms: 2_000,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            relay_enabled: true,
            batch_size: 500,
            poll_interval_ms: 500,
            batch_delay_ms: 2,
            publish_on_commit: true,
            stale_after_ms: 1_000,
            failure_pause_ms: 5_000,
        }
    }
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 30_000,
            stock_timeout_ms: 10_000,
            payment_timeout_ms: 15_000,
            release_timeout_ms: 15_000,
            timer_interval_ms: 500,
        }
    }
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            workers: 128,
            reservation_ttl_secs: 900,
            expiry_interval_ms: 5_000,
        }
    }
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            workers: 128,
            provider_timeout_ms: 10_000,
            latency_ms: 20,
            slow_latency_ms: 3_000,
            amount_limit_minor: 500_000,
        }
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 2_000,
            handler_timeout_ms: 10_000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            max_attempts: 10,
            drain_timeout_ms: 10_000,
        }
    }
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            restart_window_secs: 60,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (if any), then the process environment; validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Applies `ORDERFLOW_<SECTION>_<FIELD>` overrides read through `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let env = Env { lookup: &lookup };
        env.parse("ORDERFLOW_HTTP_BIND", &mut self.http.bind)?;
        env.parse(
            "ORDERFLOW_HTTP_BODY_LIMIT_BYTES",
            &mut self.http.body_limit_bytes,
        )?;
        env.secret_url("ORDERFLOW_DATABASE_URL", &mut self.database.url);
        env.parse(
            "ORDERFLOW_DATABASE_MAX_CONNECTIONS",
            &mut self.database.max_connections,
        )?;
        env.parse(
            "ORDERFLOW_DATABASE_MIGRATE_ON_START",
            &mut self.database.migrate_on_start,
        )?;
        env.parse("ORDERFLOW_DATABASE_WRITERS", &mut self.database.writers)?;
        env.parse("ORDERFLOW_DATABASE_BATCH_MAX", &mut self.database.batch_max)?;
        env.string("ORDERFLOW_KAFKA_BROKERS", &mut self.kafka.brokers);
        env.string("ORDERFLOW_KAFKA_TOPIC_PREFIX", &mut self.kafka.topic_prefix);
        env.string("ORDERFLOW_KAFKA_GROUP_PREFIX", &mut self.kafka.group_prefix);
        env.parse("ORDERFLOW_KAFKA_PARTITIONS", &mut self.kafka.partitions)?;
        env.parse(
            "ORDERFLOW_KAFKA_REPLICATION_FACTOR",
            &mut self.kafka.replication_factor,
        )?;
        env.parse("ORDERFLOW_KAFKA_LINGER_MS", &mut self.kafka.linger_ms)?;
        env.string("ORDERFLOW_KAFKA_COMPRESSION", &mut self.kafka.compression);
        env.parse(
            "ORDERFLOW_KAFKA_FETCH_MIN_BYTES",
            &mut self.kafka.fetch_min_bytes,
        )?;
        env.parse(
            "ORDERFLOW_KAFKA_FETCH_WAIT_MAX_MS",
            &mut self.kafka.fetch_wait_max_ms,
        )?;
        env.secret_url("ORDERFLOW_REDIS_URL", &mut self.redis.url);
        env.string("ORDERFLOW_S3_ENDPOINT", &mut self.s3.endpoint);
        env.string("ORDERFLOW_S3_REGION", &mut self.s3.region);
        env.string("ORDERFLOW_S3_BUCKET", &mut self.s3.bucket);
        env.string("ORDERFLOW_S3_ACCESS_KEY", &mut self.s3.access_key);
        if let Some(v) = lookup("ORDERFLOW_S3_SECRET_KEY") {
            self.s3.secret_key = Secret::new(v);
        }
        env.parse(
            "ORDERFLOW_OUTBOX_RELAY_ENABLED",
            &mut self.outbox.relay_enabled,
        )?;
        env.parse("ORDERFLOW_OUTBOX_BATCH_SIZE", &mut self.outbox.batch_size)?;
        env.parse(
            "ORDERFLOW_OUTBOX_POLL_INTERVAL_MS",
            &mut self.outbox.poll_interval_ms,
        )?;
        env.parse(
            "ORDERFLOW_S3_BREAKER_FAILURES",
            &mut self.s3.breaker_failures,
        )?;
        env.parse("ORDERFLOW_S3_BREAKER_OPEN_MS", &mut self.s3.breaker_open_ms)?;
        env.string("ORDERFLOW_SMTP_URL", &mut self.smtp.url);
        env.string("ORDERFLOW_SMTP_FROM", &mut self.smtp.from);
        env.string(
            "ORDERFLOW_NOTIFICATIONS_PUBLIC_URL",
            &mut self.notifications.public_url,
        );
        env.parse(
            "ORDERFLOW_NOTIFICATIONS_WORKERS",
            &mut self.notifications.workers,
        )?;
        env.string("ORDERFLOW_FILES_SELLER", &mut self.files.seller);
        env.parse("ORDERFLOW_FILES_WORKERS", &mut self.files.workers)?;
        env.parse("ORDERFLOW_FILES_VAT_PERCENT", &mut self.files.vat_percent)?;
        env.parse(
            "ORDERFLOW_FILES_MAX_UPLOAD_BYTES",
            &mut self.files.max_upload_bytes,
        )?;
        env.parse(
            "ORDERFLOW_FILES_PRESIGN_TTL_SECS",
            &mut self.files.presign_ttl_secs,
        )?;
        env.parse(
            "ORDERFLOW_OUTBOX_PUBLISH_ON_COMMIT",
            &mut self.outbox.publish_on_commit,
        )?;
        env.parse(
            "ORDERFLOW_OUTBOX_STALE_AFTER_MS",
            &mut self.outbox.stale_after_ms,
        )?;
        env.parse(
            "ORDERFLOW_SAGA_IDLE_TIMEOUT_MS",
            &mut self.saga.idle_timeout_ms,
        )?;
        env.parse(
            "ORDERFLOW_SAGA_STOCK_TIMEOUT_MS",
            &mut self.saga.stock_timeout_ms,
        )?;
        env.parse(
            "ORDERFLOW_SAGA_PAYMENT_TIMEOUT_MS",
            &mut self.saga.payment_timeout_ms,
        )?;
        env.parse(
            "ORDERFLOW_SAGA_RELEASE_TIMEOUT_MS",
            &mut self.saga.release_timeout_ms,
        )?;
        env.parse(
            "ORDERFLOW_BRIDGE_MAX_IN_FLIGHT",
            &mut self.bridge.max_in_flight,
        )?;
        env.parse(
            "ORDERFLOW_BRIDGE_MAX_ATTEMPTS",
            &mut self.bridge.max_attempts,
        )?;
        env.parse(
            "ORDERFLOW_BRIDGE_DRAIN_TIMEOUT_MS",
            &mut self.bridge.drain_timeout_ms,
        )?;
        env.parse("ORDERFLOW_INVENTORY_WORKERS", &mut self.inventory.workers)?;
        env.parse(
            "ORDERFLOW_INVENTORY_RESERVATION_TTL_SECS",
            &mut self.inventory.reservation_ttl_secs,
        )?;
        env.parse("ORDERFLOW_PAYMENT_WORKERS", &mut self.payment.workers)?;
        env.parse("ORDERFLOW_PAYMENT_LATENCY_MS", &mut self.payment.latency_ms)?;
        env.parse(
            "ORDERFLOW_PAYMENT_SLOW_LATENCY_MS",
            &mut self.payment.slow_latency_ms,
        )?;
        if let Some(v) = lookup("ORDERFLOW_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "json" => LogFormat::Json,
                "pretty" => LogFormat::Pretty,
                _ => {
                    return Err(ConfigError::Env {
                        name: "ORDERFLOW_LOG_FORMAT".into(),
                        value: v,
                        reason: "expected json or pretty".into(),
                    });
                }
            };
        }
        env.string("ORDERFLOW_LOG", &mut self.log.filter);
        env.parse("ORDERFLOW_AUTH_MODE", &mut self.auth.mode)?;
        env.string("ORDERFLOW_AUTH_ISSUER", &mut self.auth.issuer);
        env.string("ORDERFLOW_AUTH_AUDIENCE", &mut self.auth.audience);
        env.string("ORDERFLOW_AUTH_JWKS_URL", &mut self.auth.jwks_url);
        env.string("ORDERFLOW_AUTH_DEV_KEY_FILE", &mut self.auth.dev_key_file);
        env.parse("ORDERFLOW_AUTH_LEEWAY_SECS", &mut self.auth.leeway_secs)?;
        env.parse("ORDERFLOW_RATE_LIMIT_ENABLED", &mut self.rate_limit.enabled)?;
        env.parse(
            "ORDERFLOW_RATE_LIMIT_ON_REDIS_ERROR",
            &mut self.rate_limit.on_redis_error,
        )?;
        env.string("ORDERFLOW_HTTP_DOCS_DIR", &mut self.http.docs_dir);
        env.parse(
            "ORDERFLOW_HTTP_HEADER_READ_TIMEOUT_MS",
            &mut self.http.header_read_timeout_ms,
        )?;
        env.parse(
            "ORDERFLOW_HTTP_MAX_HEADER_BYTES",
            &mut self.http.max_header_bytes,
        )?;
        env.parse(
            "ORDERFLOW_HTTP_REQUEST_TIMEOUT_MS",
            &mut self.http.request_timeout_ms,
        )?;
        env.parse(
            "ORDERFLOW_HTTP_MAX_OPEN_ORDERS",
            &mut self.http.max_open_orders,
        )?;
        env.parse(
            "ORDERFLOW_HTTP_OPEN_ORDER_MAX_AGE_MS",
            &mut self.http.open_order_max_age_ms,
        )?;
        if let Some(v) = lookup("ORDERFLOW_HTTP_CORS_ALLOWED_ORIGINS") {
            self.http.cors_allowed_origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
        }
        env.parse("ORDERFLOW_CACHE_ENABLED", &mut self.cache.enabled)?;
        env.parse("ORDERFLOW_CACHE_TTL_SECS", &mut self.cache.ttl_secs)?;
        env.string("ORDERFLOW_CACHE_KEY_PREFIX", &mut self.cache.key_prefix);
        env.parse(
            "ORDERFLOW_CACHE_DRAIN_POLL_MS",
            &mut self.cache.drain_poll_ms,
        )?;
        env.parse("ORDERFLOW_CACHE_DRAIN_GAP_MS", &mut self.cache.drain_gap_ms)?;
        env.parse(
            "ORDERFLOW_IDEMPOTENCY_TTL_SECS",
            &mut self.idempotency.ttl_secs,
        )?;
        env.string(
            "ORDERFLOW_RATE_LIMIT_KEY_PREFIX",
            &mut self.rate_limit.key_prefix,
        );
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        for origin in &self.http.cors_allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.trim_end_matches('/').contains(['*', ' '])
                && origin.matches('/').count() == 2;
            if !ok {
                return bad(
                    "http.cors_allowed_origins takes origins like https://shop.example.com (scheme, host, optional port; no path, no wildcard)",
                );
            }
        }
        if self.auth.issuer.trim().is_empty() || self.auth.audience.trim().is_empty() {
            return bad("auth.issuer and auth.audience must not be empty");
        }
        let limits = [self.rate_limit.per_ip, self.rate_limit.per_subject]
            .into_iter()
            .chain(self.rate_limit.routes.values().copied());
        for limit in limits {
            if !(limit.per_second > 0.0 && limit.per_second <= 1_000_000.0) || limit.burst == 0 {
                return bad("rate limits need per_second in (0, 10^6] and a burst of at least 1");
            }
        }
        if self.auth.mode == AuthMode::Dev && self.auth.dev_key_file.trim().is_empty() {
            return bad("auth.dev_key_file must name a file in auth.mode = \"dev\"");
        }
        if self.http.body_limit_bytes < 1024 {
            return bad("http.body_limit_bytes must be at least 1024");
        }
        if self.http.default_page_size == 0 || self.http.default_page_size > self.http.max_page_size
        {
            return bad("http.default_page_size must be between 1 and http.max_page_size");
        }
        if self.http.open_order_max_age_ms == 0 {
            return bad("http.open_order_max_age_ms must be at least 1");
        }
        if self.database.max_connections < 2 {
            return bad("database.max_connections must be at least 2");
        }
        if !(1..=16).contains(&self.database.writers)
            || !(1..=10_000).contains(&self.database.batch_max)
        {
            return bad("database.writers must be 1 to 16 and database.batch_max 1 to 10000");
        }
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers must not be empty");
        }
        if !["none", "lz4", "snappy", "gzip"].contains(&self.kafka.compression.as_str()) {
            return bad("kafka.compression must be one of none, lz4, snappy, gzip");
        }
        if self.kafka.partitions < 1 || self.kafka.replication_factor < 1 {
            return bad("kafka.partitions and kafka.replication_factor must be at least 1");
        }
        if !(1..=10_000).contains(&self.outbox.batch_size) {
            return bad("outbox.batch_size must be between 1 and 10000");
        }
        let shortest_deadline = self
            .saga
            .stock_timeout_ms
            .min(self.saga.payment_timeout_ms)
            .min(self.saga.release_timeout_ms);
        let sweep_after = self.outbox.stale_after_ms + self.outbox.poll_interval_ms;
        if self.outbox.publish_on_commit && sweep_after >= shortest_deadline {
            // A command left behind by a crash must be swept out before a deadline can send
            // its compensation, or the two could reach their topic in the wrong order.
            return bad(
                "outbox.stale_after_ms + outbox.poll_interval_ms must be shorter than every saga timeout",
            );
        }
        if self.inventory.workers == 0 || self.inventory.expiry_interval_ms == 0 {
            return bad("inventory.workers and inventory.expiry_interval_ms must be at least 1");
        }
        if self.saga.timer_interval_ms == 0 || self.saga.idle_timeout_ms == 0 {
            return bad("saga.timer_interval_ms and saga.idle_timeout_ms must be at least 1");
        }
        if self.payment.workers == 0 || self.payment.provider_timeout_ms == 0 {
            return bad("payment.workers and payment.provider_timeout_ms must be at least 1");
        }
        if self.bridge.max_in_flight == 0 || self.bridge.max_attempts == 0 {
            return bad("bridge.max_in_flight and bridge.max_attempts must be at least 1");
        }
        if self.notifications.workers == 0 || !self.smtp.url.starts_with("smtp://") {
            return bad(
                "notifications.workers must be at least 1 and smtp.url must be smtp://host:port",
            );
        }
        if self.files.workers == 0 || self.files.vat_percent > 100 {
            return bad("files.workers must be at least 1 and files.vat_percent at most 100");
        }
        if self.files.multipart_part_bytes < 5 * 1024 * 1024 || self.files.max_upload_bytes == 0 {
            return bad(
                "files.multipart_part_bytes must be at least 5 MiB and files.max_upload_bytes at least 1",
            );
        }
        if !(1..=604_800).contains(&self.files.presign_ttl_secs) {
            return bad("files.presign_ttl_secs must be between 1 and 604800 (7 days)");
        }
        if self.supervision.max_restarts == 0 {
            return bad("supervision.max_restarts must be at least 1");
        }
        Ok(())
    }

    /// The configuration as TOML with secrets redacted (`orderflow config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    pub fn topic(&self, logical: &str) -> String {
        format!("{}{}", self.kafka.topic_prefix, logical)
    }

    pub fn group(&self, service: &str) -> String {
        format!("{}{}", self.kafka.group_prefix, service)
    }
}

impl OutboxConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// How old a row must be before a polling relay pass takes it: rows younger than this
    /// are still being published by the writer that committed them.
    pub fn sweep_min_age(&self) -> Duration {
        if self.publish_on_commit {
            Duration::from_millis(self.stale_after_ms)
        } else {
            Duration::ZERO
        }
    }
}

struct Env<'a, F: Fn(&str) -> Option<String>> {
    lookup: &'a F,
}

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn string(&self, name: &str, target: &mut String) {
        if let Some(v) = (self.lookup)(name) {
            *target = v;
        }
    }
    fn secret_url(&self, name: &str, target: &mut SecretUrl) {
        if let Some(v) = (self.lookup)(name) {
            *target = SecretUrl::new(v);
        }
    }
    fn parse<T: FromStr>(&self, name: &str, target: &mut T) -> Result<(), ConfigError>
    where
        T::Err: fmt::Display,
    {
        if let Some(v) = (self.lookup)(name) {
            *target = v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                name: name.to_owned(),
                value: v.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn environment_overrides_defaults() {
        let mut c = Config::default();
        let r = c.apply_env(env(&[
            ("ORDERFLOW_HTTP_BIND", "0.0.0.0:9999"),
            ("ORDERFLOW_KAFKA_TOPIC_PREFIX", "t1."),
            ("ORDERFLOW_OUTBOX_BATCH_SIZE", "42"),
        ]));
        assert!(r.is_ok());
        assert_eq!(c.http.bind.port(), 9999);
        assert_eq!(c.topic("order.events"), "t1.order.events");
        assert_eq!(c.outbox.batch_size, 42);
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let mut c = Config::default();
        let err = c.apply_env(env(&[("ORDERFLOW_KAFKA_PARTITIONS", "many")]));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("ORDERFLOW_KAFKA_PARTITIONS"), "{msg}");
    }

    #[test]
    fn secrets_never_print() {
        let mut c = Config::default();
        let r = c.apply_env(env(&[
            ("ORDERFLOW_DATABASE_URL", "postgres://app:hunter2@db:5432/x"),
            ("ORDERFLOW_S3_SECRET_KEY", "s3cr3t"),
        ]));
        assert!(r.is_ok());
        let shown = format!("{c:?}\n{}", c.to_redacted_toml());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("postgres://app:[redacted]@db:5432/x"),
            "{shown}"
        );
        assert_eq!(c.database.url.expose(), "postgres://app:hunter2@db:5432/x");
    }

    #[test]
    fn redact_url_leaves_urls_without_password_alone() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:[redacted]@h:1/0");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn validation_rejects_nonsense() {
        let mut c = Config::default();
        c.outbox.batch_size = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.kafka.compression = "zstd".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.outbox.stale_after_ms = c.saga.payment_timeout_ms;
        assert!(c.validate().is_err());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn file_sections_are_strict() {
        let parsed: Result<Config, _> =
            toml::from_str("[http]\nbind = \"127.0.0.1:1\"\nbogus = 1\n");
        assert!(parsed.is_err());
        let parsed: Result<Config, _> = toml::from_str("[kafka]\npartitions = 3\n");
        assert_eq!(parsed.map(|c| c.kafka.partitions).ok(), Some(3));
    }
}
