//! Kafka: the idempotent producer, consumer configuration with rebalance notifications, topic
//! provisioning and a metadata probe for readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use crate::config::{Config, KafkaConfig};

#[derive(Debug, thiserror::Error)]
pub enum KafkaAdapterError {
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("kafka metadata probe failed: {0}")]
    Probe(String),
    #[error("topic {topic} has partitions without a leader after {waited:?}")]
    NoLeader { topic: String, waited: Duration },
}

fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "orderflow")
        .set("socket.keepalive.enable", "true");
    c
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaAdapterError> {
    Ok(base_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set("compression.type", &config.compression)
        .set("message.timeout.ms", config.request_timeout_ms.to_string())
        .create()?)
}

/// Partition assignment changes seen by a consumer, forwarded to the service that owns it.
#[derive(Debug)]
pub enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    /// The partitions are about to be taken away. The consumer waits until `done` is answered
    /// (or the drain deadline passes), so the owner can let in-flight records finish and commit
    /// their offsets before another consumer starts on the partitions.
    Revoked(Vec<(String, i32)>, std::sync::mpsc::SyncSender<()>),
}

/// Forwards rebalance callbacks (which run inside the consumer's poll) to a channel, so the
/// owner creates and stops partition bridges outside librdkafka's thread.
pub struct BridgeContext {
    events: mpsc::UnboundedSender<RebalanceEvent>,
    /// How long a revoke waits for the owner.
    revoke_wait: Duration,
    /// Set by the owner once it stops: it drained already and answers no more revokes (the
    /// consumer's close revokes everything, possibly from one of the owner's own children).
    owner_stopping: Arc<AtomicBool>,
}

impl BridgeContext {
    /// Blocks the consumer's poll until the owner answers. Only on a multi-threaded runtime
    /// (the owner needs another worker to run); elsewhere the revoke proceeds at once and the
    /// next owner redelivers what was in flight (the inbox absorbs it).
    fn wait_for_owner(&self, done: std::sync::mpsc::Receiver<()>) {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread || self.owner_stopping.load(Ordering::SeqCst) {
            return;
        }
        let started = std::time::Instant::now();
        // In short steps, so an owner that starts stopping meanwhile releases the wait.
        let answered = tokio::task::block_in_place(|| {
            loop {
                match done.recv_timeout(Duration::from_millis(50)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                        if started.elapsed() < self.revoke_wait
                            && !self.owner_stopping.load(Ordering::SeqCst) => {}
                    other => return other,
                }
            }
        });
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = answered {
            tracing::warn!(
                waited = ?started.elapsed(),
                "partitions revoked before their in-flight records finished"
            );
        }
    }
}

impl ClientContext for BridgeContext {}

impl ConsumerContext for BridgeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let (done, answered) = std::sync::mpsc::sync_channel(1);
            // The receiver is gone only when the service is stopping (it drained already).
            if self
                .events
                .send(RebalanceEvent::Revoked(parts, done))
                .is_ok()
            {
                self.wait_for_owner(answered);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let _ = self.events.send(RebalanceEvent::Assigned(parts));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}

pub type BridgeConsumer = StreamConsumer<BridgeContext>;

/// A consumer for `group` that stores offsets only when told (after the effect is durable)
/// and commits stored offsets in the background and on revoke.
pub fn consumer(
    config: &KafkaConfig,
    group: &str,
    revoke_wait: Duration,
    owner_stopping: Arc<AtomicBool>,
) -> Result<(BridgeConsumer, mpsc::UnboundedReceiver<RebalanceEvent>), KafkaAdapterError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let consumer = base_config(config)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 4).to_string(),
        )
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", config.fetch_min_bytes.to_string())
        .create_with_context(BridgeContext {
            events: tx,
            revoke_wait,
            owner_stopping,
        })?;
    Ok((consumer, rx))
}

/// Creates the given topics when missing (idempotent).
pub async fn ensure_topics(config: &Config, logical: &[&str]) -> Result<(), KafkaAdapterError> {
    let admin: AdminClient<DefaultClientContext> = base_config(&config.kafka).create()?;
    let names: Vec<String> = logical.iter().map(|t| config.topic(t)).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                config.kafka.partitions,
                TopicReplication::Fixed(config.kafka.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaAdapterError::CreateTopic { topic, code }),
        }
    }
    wait_for_leaders(admin, names, config.kafka.partitions).await
}

/// Deletes every topic whose name starts with `prefix` (a finished load run's topics).
/// Returns how many were deleted.
pub async fn delete_prefixed(
    config: &KafkaConfig,
    prefix: &str,
) -> Result<usize, KafkaAdapterError> {
    let admin: AdminClient<DefaultClientContext> = base_config(config).create()?;
    let wanted = prefix.to_owned();
    let (admin, names) = tokio::task::spawn_blocking(move || {
        let names: Vec<String> = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .filter(|n| n.starts_with(&wanted))
                    .collect()
            })
            .unwrap_or_default();
        (admin, names)
    })
    .await
    .map_err(|e| KafkaAdapterError::Probe(e.to_string()))?;
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = admin
        .delete_topics(&refs, &options)
        .await?
        .into_iter()
        .filter(Result::is_ok)
        .count();
    Ok(deleted)
}

/// Waits until every partition of `topics` has a leader: a topic that was just created
/// answers `NotLeaderForPartition` to producers and watermark queries for a moment.
async fn wait_for_leaders(
    admin: AdminClient<DefaultClientContext>,
    topics: Vec<String>,
    partitions: i32,
) -> Result<(), KafkaAdapterError> {
    const LIMIT: Duration = Duration::from_secs(30);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        for topic in topics {
            loop {
                let ready = admin
                    .inner()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map(|m| {
                        m.topics().iter().any(|t| {
                            t.error().is_none()
                                && t.partitions().len() >= partitions as usize
                                && t.partitions()
                                    .iter()
                                    .all(|p| p.error().is_none() && p.leader() >= 0)
                        })
                    })
                    .unwrap_or(false);
                if ready {
                    break;
                }
                if started.elapsed() > LIMIT {
                    return Err(KafkaAdapterError::NoLeader {
                        topic,
                        waited: LIMIT,
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| KafkaAdapterError::Probe(e.to_string()))?
}

/// Asks the cluster for metadata (readiness): proves a broker answers.
pub async fn probe(producer: &FutureProducer, timeout: Duration) -> Result<(), KafkaAdapterError> {
    use rdkafka::producer::Producer;
    let client = producer.clone();
    tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(None, timeout)
            .map(|m| m.brokers().len())
    })
    .await
    .map_err(|e| KafkaAdapterError::Probe(e.to_string()))?
    .map_err(KafkaAdapterError::Client)
    .and_then(|brokers| {
        if brokers == 0 {
            Err(KafkaAdapterError::Probe("no brokers in metadata".into()))
        } else {
            Ok(())
        }
    })
}
