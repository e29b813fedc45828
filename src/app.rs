//! The app builder: wires configuration, adapters, the supervision tree and the HTTP server
//! into a running system, and shuts it down in order. Tests start the real thing on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::actors::Service;
use crate::actors::root::{RootArgs, RootMsg, RootSupervisor};
use crate::api::{self, ApiContext};
use crate::config::Config;
use crate::domain::envelope::topics;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::writer::{WriterConfig, Writers};
use crate::infra::outbox::{CommitPublisher, OutboxWakers};
use crate::infra::payment_provider::{LocalCardNetwork, LocalNetworkRules, PaymentProvider};
use crate::infra::smtp::Mailer;
use crate::infra::{db, kafka, redis, s3};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaAdapterError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("cannot bind the HTTP listener to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervision tree did not start: {0}")]
    Actors(String),
    #[error("{0}")]
    Config(String),
}

/// A running orderflow process.
pub struct App {
    addr: SocketAddr,
    root: ActorRef<RootMsg>,
    root_task: JoinHandle<()>,
    http_stop: Option<oneshot::Sender<()>>,
    http_task: JoinHandle<()>,
    producer: FutureProducer,
    pool: PgPool,
    instance: String,
}

impl App {
    /// Connects, migrates, provisions topics, starts the supervision tree for `services` and
    /// the HTTP server. Returns once everything runs.
    pub async fn build(config: Config, services: &[Service]) -> Result<App, StartError> {
        let config = Arc::new(config);
        let metrics = crate::metrics::install();
        let pool = db::connect(&config.database)?;
        if config.database.migrate_on_start {
            db::migrate(&pool).await?;
        }
        let dead_letters: Vec<String> = topics::CONSUMED
            .iter()
            .map(|t| format!("{t}{}", topics::DLQ_SUFFIX))
            .collect();
        let mut all: Vec<&str> = topics::ALL.to_vec();
        all.extend(dead_letters.iter().map(String::as_str));
        kafka::ensure_topics(&config, &all).await?;
        let producer = kafka::producer(&config.kafka)?;
        let redis = redis::pool(&config.redis)?;
        let s3 = s3::client(&config.s3);
        let auth = Arc::new(
            crate::auth::Authenticator::from_config(&config.auth)
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let mailer = Mailer::new(&config.smtp).map_err(|e| StartError::Config(e.to_string()))?;
        let smtp_breaker = Arc::new(CircuitBreaker::new(
            "smtp",
            config.smtp.breaker_failures,
            Duration::from_millis(config.smtp.breaker_open_ms),
        ));
        let s3_breaker = Arc::new(CircuitBreaker::new(
            "s3",
            config.s3.breaker_failures,
            Duration::from_millis(config.s3.breaker_open_ms),
        ));
        if let Err(e) = s3::ensure_bucket(&s3, &config.s3.bucket).await {
            // Not fatal: documents are stored later and readiness reports S3.
            tracing::warn!(error = %e, bucket = %config.s3.bucket, "bucket not ready");
        }
        let on_commit = config.outbox.publish_on_commit.then(|| {
            CommitPublisher::start(
                &pool,
                producer.clone(),
                &config.kafka.topic_prefix,
                Duration::from_millis(config.kafka.request_timeout_ms),
                Duration::from_millis(config.outbox.failure_pause_ms),
            )
        });
        // Every process with the cache on invalidates what its own writers (and, polled, anyone
        // else) changed: the rows the triggers leave in `cache.changes`.
        let cache = config.cache.enabled.then(|| {
            Arc::new(crate::infra::cache::Cache::new(
                redis.clone(),
                &config.cache,
            ))
        });
        // Change rows older than the TTL are useless (every entry cached before them has
        // expired): pruned in every process, also where no drainer runs (cache off).
        let ttl = Duration::from_secs(config.cache.ttl_secs.max(1));
        db::spawn_purge(
            pool.clone(),
            Duration::from_secs(60),
            "expired cache change rows",
            move |pool| crate::infra::cache::prune_changes(pool, ttl),
        );
        let cache_changes = cache.as_ref().map(|cache| {
            let wake = Arc::new(tokio::sync::Notify::new());
            crate::infra::cache::spawn_drainer(
                pool.clone(),
                cache.clone(),
                wake.clone(),
                crate::infra::cache::DrainConfig {
                    poll: Duration::from_millis(config.cache.drain_poll_ms.max(1)),
                    gap: Duration::from_millis(config.cache.drain_gap_ms),
                    batch: 500,
                },
            );
            wake
        });
        let writers = Writers::start(
            &pool,
            OutboxWakers::default(),
            on_commit,
            cache_changes,
            WriterConfig {
                writers: config.database.writers,
                batch_max: config.database.batch_max,
            },
        );
        let payment_provider: Arc<dyn PaymentProvider> = Arc::new(LocalCardNetwork::new(
            pool.clone(),
            LocalNetworkRules {
                latency: Duration::from_millis(config.payment.latency_ms),
                slow_latency: Duration::from_millis(config.payment.slow_latency_ms),
                amount_limit_minor: config.payment.amount_limit_minor,
            },
        ));
        let instance = uuid::Uuid::now_v7().simple().to_string();
        let open_orders = Arc::new(crate::admission::OpenOrders::new(
            config.http.max_open_orders,
            Duration::from_millis(config.http.open_order_max_age_ms),
        ));

        let (root, root_handle) = Actor::spawn(
            Some(format!("{instance}/root")),
            RootSupervisor,
            RootArgs {
                config: config.clone(),
                services: services.to_vec(),
                pool: pool.clone(),
                producer: producer.clone(),
                writers: writers.clone(),
                payment_provider,
                s3: s3.clone(),
                s3_breaker: s3_breaker.clone(),
                mailer,
                smtp_breaker: smtp_breaker.clone(),
                instance: instance.clone(),
                open_orders: open_orders.clone(),
            },
        )
        .await
        .map_err(|e| StartError::Actors(e.to_string()))?;
        let root_task = tokio::spawn(async move {
            let _ = root_handle.await;
        });

        let cache = cache.filter(|_| services.contains(&Service::Api));
        let ctx = ApiContext {
            config: config.clone(),
            pool: pool.clone(),
            producer: producer.clone(),
            redis: redis.clone(),
            s3,
            s3_breaker,
            smtp_breaker,
            intakes: crate::infra::db::orders::Intakes::start(
                writers.intakes().clone(),
                config.database.batch_max,
                config.database.writers,
            ),
            writers,
            metrics,
            auth,
            cache: cache.clone(),
            limiter: config.rate_limit.enabled.then(|| {
                Arc::new(crate::infra::ratelimit::RateLimiter::new(
                    redis.clone(),
                    Duration::from_millis(config.rate_limit.timeout_ms),
                ))
            }),
            serve_v1: services.contains(&Service::Api),
            instance: instance.clone(),
            open_orders,
        };
        let listener = tokio::net::TcpListener::bind(config.http.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.http.bind,
            source,
        })?;
        let (http_stop, stop_rx) = oneshot::channel::<()>();
        let routes = api::routes(ctx);
        let http = config.http.clone();
        let http_task =
            tokio::spawn(async move { api::server::serve(listener, routes, &http, stop_rx).await });
        if services.contains(&Service::Api) {
            // Expired idempotency keys are deleted in the background (a request never waits
            // for it: an expired key is also claimable in place). Stops when the pool closes.
            db::spawn_purge(
                pool.clone(),
                Duration::from_secs(600),
                "expired idempotency keys",
                |pool| async move { db::idempotency::purge_expired(&pool, 10_000).await },
            );
        }
        tracing::info!(%addr, services = ?services, "orderflow started");
        Ok(App {
            addr,
            root,
            root_task,
            http_stop: Some(http_stop),
            http_task,
            producer,
            pool,
            instance,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The prefix of this process's actor names (`{instance}/order-service`, …).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Resolves when the supervision tree stops by itself (a restart budget was spent).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_task).await;
    }

    /// Ordered shutdown: stop intake, drain the services and commit their offsets, flush the
    /// outbox and the producer, close the pool.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.http_task).await;
        let _ = ractor::call_t!(self.root, RootMsg::Shutdown, 60_000);
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.root_task).await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        self.pool.close().await;
        tracing::info!("shutdown complete");
    }
}
