//! Dead-letter topics: a record that can never be handled, or that kept failing past
//! `bridge.max_attempts`, is published to `<topic>.dlq` with why (headers `dlq-error`,
//! `dlq-source-topic`, `dlq-source-partition`, `dlq-source-offset`, `dlq-attempts`). This module
//! lists them and re-drives them to their source topic (`orderflow dlq list|replay`). Replay
//! remembers how far it got in the consumer group `<group prefix>dlq-replay`, so each dead
//! letter is re-driven once per replay; handlers deduplicate by message id as usual.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::kafka::KafkaAdapterError;
use crate::config::Config;
use crate::domain::envelope::{Envelope, topics};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub dlq_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub source_topic: String,
    pub source_offset: String,
    pub error: String,
    pub attempts: String,
    pub message_type: Option<String>,
    pub order_id: Option<String>,
    #[serde(skip)]
    key: Option<Vec<u8>>,
    #[serde(skip)]
    payload: Option<Vec<u8>>,
    #[serde(skip)]
    headers: Vec<(String, Vec<u8>)>,
}

fn dlq_topics(config: &Config) -> Vec<String> {
    topics::CONSUMED
        .iter()
        .map(|t| config.topic(&format!("{t}{}", topics::DLQ_SUFFIX)))
        .collect()
}

fn consumer(config: &Config, group: &str) -> Result<BaseConsumer, KafkaAdapterError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?)
}

/// Reads every DLQ partition from its start (`None`) or from the group's committed offset
/// (`Some(group)`) up to the high watermark seen at the start.
fn read(
    config: &Config,
    group: Option<&str>,
) -> Result<(BaseConsumer, Vec<DeadLetter>), KafkaAdapterError> {
    let consumer = consumer(
        config,
        group.unwrap_or(&format!(
            "{}dlq-list-{}",
            config.kafka.group_prefix,
            uuid::Uuid::now_v7().simple()
        )),
    )?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in dlq_topics(config) {
        for p in 0..config.kafka.partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, TIMEOUT)?;
            if high > low {
                tpl.add_partition(&topic, p);
                ends.insert((topic.clone(), p), high);
            }
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok((consumer, letters));
    }
    let start = match group {
        Some(_) => consumer.committed_offsets(tpl.clone(), TIMEOUT)?,
        None => tpl.clone(),
    };
    let mut assignment = TopicPartitionList::new();
    for e in start.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        assignment.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    consumer.assign(&assignment)?;
    let mut done: HashMap<(String, i32), bool> = ends.keys().map(|k| (k.clone(), false)).collect();
    // Partitions already read to their end by this group are done from the start.
    for e in start.elements() {
        if let Offset::Offset(o) = e.offset()
            && ends
                .get(&(e.topic().to_owned(), e.partition()))
                .is_some_and(|h| o >= *h)
        {
            done.insert((e.topic().to_owned(), e.partition()), true);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while done.values().any(|d| !d) && std::time::Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        let key = (msg.topic().to_owned(), msg.partition());
        let Some(end) = ends.get(&key) else { continue };
        if msg.offset() >= *end {
            done.insert(key, true);
            continue;
        }
        if msg.offset() + 1 >= *end {
            done.insert(key.clone(), true);
        }
        let headers: Vec<(String, Vec<u8>)> = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let envelope = msg.payload().and_then(|p| Envelope::decode(p).ok());
        letters.push(DeadLetter {
            dlq_topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            source_topic: header("dlq-source-topic"),
            source_offset: header("dlq-source-offset"),
            error: header("dlq-error"),
            attempts: header("dlq-attempts"),
            message_type: envelope.as_ref().map(|e| e.kind.clone()),
            order_id: envelope.as_ref().map(|e| e.order_id.to_string()),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok((consumer, letters))
}

/// Every dead letter currently on the DLQ topics.
pub async fn list(config: &Config) -> Result<Vec<DeadLetter>, KafkaAdapterError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || read(&config, None).map(|(_, l)| l))
        .await
        .map_err(|e| KafkaAdapterError::Probe(e.to_string()))?
}

/// Re-drives the dead letters not replayed before to their source topics; returns how many.
pub async fn replay(
    config: &Config,
    producer: &FutureProducer,
) -> Result<usize, KafkaAdapterError> {
    let group = format!("{}dlq-replay", config.kafka.group_prefix);
    let cfg = config.clone();
    let (consumer, letters) = tokio::task::spawn_blocking(move || read(&cfg, Some(&group)))
        .await
        .map_err(|e| KafkaAdapterError::Probe(e.to_string()))??;
    let consumer = Arc::new(consumer);
    let mut commit = TopicPartitionList::new();
    for letter in &letters {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &letter.headers {
            if !k.starts_with("dlq-") {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
        }
        headers = headers.insert(Header {
            key: "dlq-replayed-from",
            value: Some(letter.dlq_topic.as_str()),
        });
        let mut record = FutureRecord::to(&letter.source_topic).headers(headers);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &letter.payload {
            record = record.payload(p.as_slice());
        }
        producer
            .send(record, TIMEOUT)
            .await
            .map_err(|(e, _)| KafkaAdapterError::Client(e))?;
        commit.add_partition_offset(
            &letter.dlq_topic,
            letter.partition,
            Offset::Offset(letter.offset + 1),
        )?;
    }
    if commit.count() > 0 {
        let c = consumer.clone();
        tokio::task::spawn_blocking(move || c.commit(&commit, CommitMode::Sync))
            .await
            .map_err(|e| KafkaAdapterError::Probe(e.to_string()))??;
    }
    Ok(letters.len())
}
