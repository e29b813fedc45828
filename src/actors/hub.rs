//! The order-status hub: fans order events out to websocket subscribers. It reads the events
//! topics from Kafka (every partition, from the end, no consumer group), not in-process state,
//! so a client connected to one process sees orders that other processes handle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::admission::OpenOrders;
use crate::config::Config;
use crate::domain::envelope::{Envelope, topics};

/// Messages a subscriber may queue before it is dropped as too slow (it can reconnect).
pub const SUBSCRIBER_BUFFER: usize = 64;

/// One event about an order, as websocket clients receive it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: Uuid,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub payload: serde_json::Value,
}

impl StatusEvent {
    pub fn is_terminal(&self) -> bool {
        self.kind == "OrderConfirmed" || self.kind == "OrderCancelled"
    }
}

pub enum HubMsg {
    Subscribe {
        order_id: Uuid,
        id: u64,
        sender: mpsc::Sender<StatusEvent>,
    },
    Unsubscribe {
        order_id: Uuid,
        id: u64,
    },
    Event(StatusEvent),
}

pub struct HubState {
    subscribers: HashMap<Uuid, Vec<(u64, mpsc::Sender<StatusEvent>)>>,
    /// The orders someone watches, shared with the consume task: it decodes and forwards only
    /// their events, and skips every other record by its key.
    watched: Arc<RwLock<HashSet<Uuid>>>,
    consume: JoinHandle<()>,
}

impl Drop for HubState {
    fn drop(&mut self) {
        self.consume.abort();
    }
}

pub struct StatusHub;

impl Actor for StatusHub {
    type Msg = HubMsg;
    type State = HubState;
    /// The configuration, and the intake's open orders (closed here on their terminal events).
    type Arguments = (Arc<Config>, Arc<OpenOrders>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (config, open_orders): (Arc<Config>, Arc<OpenOrders>),
    ) -> Result<Self::State, ActorProcessingErr> {
        // Metadata lookups block: keep them off the async workers.
        let cfg = config.clone();
        let consumer = tokio::task::spawn_blocking(move || events_consumer(&cfg)).await??;
        let watched: Arc<RwLock<HashSet<Uuid>>> = Arc::default();
        let watching = watched.clone();
        let consume = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(msg) => {
                        let key = msg
                            .key()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .and_then(|k| Uuid::try_parse(k).ok());
                        if let Some(order) = key
                            && is_terminal(&msg)
                            && open_orders.finished(order)
                        {
                            metrics::gauge!(crate::metrics::INTAKE_OPEN_ORDERS)
                                .set(open_orders.len() as f64);
                        }
                        let watched = |k: Uuid| {
                            watching
                                .read()
                                .unwrap_or_else(|e| e.into_inner())
                                .contains(&k)
                        };
                        if !key.is_some_and(watched) {
                            continue;
                        }
                        let Some(env) = msg.payload().and_then(|p| Envelope::decode(p).ok()) else {
                            continue;
                        };
                        let event = StatusEvent {
                            kind: env.kind,
                            order_id: env.order_id.as_uuid(),
                            occurred_at: env.occurred_at,
                            payload: env.payload,
                        };
                        if myself.cast(HubMsg::Event(event)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "status hub consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(HubState {
            subscribers: HashMap::new(),
            watched,
            consume,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HubMsg::Subscribe {
                order_id,
                id,
                sender,
            } => {
                state
                    .watched
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(order_id);
                state
                    .subscribers
                    .entry(order_id)
                    .or_default()
                    .push((id, sender));
            }
            HubMsg::Unsubscribe { order_id, id } => {
                if let Some(subs) = state.subscribers.get_mut(&order_id) {
                    subs.retain(|(i, _)| *i != id);
                    if subs.is_empty() {
                        state.forget(order_id);
                    }
                }
            }
            HubMsg::Event(event) => {
                if let Some(subs) = state.subscribers.get_mut(&event.order_id) {
                    // A full or closed channel drops that subscriber: memory stays bounded.
                    subs.retain(|(_, tx)| tx.try_send(event.clone()).is_ok());
                    if subs.is_empty() {
                        state.forget(event.order_id);
                    }
                }
            }
        }
        Ok(())
    }
}

impl HubState {
    fn forget(&mut self, order_id: Uuid) {
        self.subscribers.remove(&order_id);
        self.watched
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&order_id);
    }
}

/// Whether a record is an order's terminal event, by its type header (nothing is decoded).
fn is_terminal(msg: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    msg.headers().is_some_and(|h| {
        h.iter().any(|h| {
            h.key == "message-type"
                && matches!(h.value, Some(b"OrderConfirmed" | b"OrderCancelled"))
        })
    })
}

/// A consumer assigned every partition of the events topics, at their ends.
fn events_consumer(config: &Config) -> Result<StreamConsumer, ActorProcessingErr> {
    let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("{}status-hub", config.kafka.group_prefix),
        )
        .set("enable.auto.commit", "false")
        .set(
            "fetch.wait.max.ms",
            config.kafka.fetch_wait_max_ms.to_string(),
        )
        // Latency first, whatever the services' batching: the hub answers people watching an
        // order, and with the services' 8 KiB minimum one fetch brought an order's
        // PaymentAuthorized and OrderConfirmed together, in no order across their topics, so
        // a stream could close (on the terminal event) before showing the payment.
        .set("fetch.min.bytes", "1")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for logical in [
        topics::ORDER_EVENTS,
        topics::INVENTORY_EVENTS,
        topics::PAYMENT_EVENTS,
        topics::FILE_EVENTS,
    ] {
        let topic = config.topic(logical);
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::End)?;
            }
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}
