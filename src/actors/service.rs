//! A service supervisor (one per service: order, inventory, payment, …). It owns the service's
//! Kafka consumer, one partition bridge per partition it is assigned, and (as supervisor) the
//! keyed actors its router starts — order sagas, inventory workers, …
//!
//! Restart strategy: a failed keyed actor is restarted on its next record (its bridge retries
//! the record) and reloads what it needs from PostgreSQL. A bridge that dies takes its in-flight
//! records with it, so the service fails as a whole ("one for all"): the root restarts it with
//! a new consumer, which resumes every partition from its last committed offset. Effects
//! already applied are deduplicated by the inbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::actors::bridge::{BridgeArgs, BridgeMsg, PartitionBridge, Record, Router};
use crate::actors::supervision::{Ended, ended};
use crate::config::Config;
use crate::infra::kafka::{self, BridgeConsumer, RebalanceEvent};
use crate::metrics as m;

/// Records forwarded from the consumer to the service in one message, at most.
const MAX_BATCH: usize = 512;

pub enum ServiceMsg {
    Batch(Vec<Record>),
    Rebalance(RebalanceEvent),
    /// Stop consuming, let in-flight records finish, commit offsets, stop children.
    Shutdown(RpcReplyPort<()>),
}

/// Builds a service's router once the supervisor exists (keyed actors are linked to it).
pub type RouterFactory = Arc<dyn Fn(ActorCell) -> Arc<dyn Router> + Send + Sync>;

pub struct ServiceArgs {
    pub config: Arc<Config>,
    /// For dead letters.
    pub producer: rdkafka::producer::FutureProducer,
    /// The service's name: consumer group suffix, actor names, metric label.
    pub name: &'static str,
    /// Logical topics the service consumes.
    pub topics: Vec<&'static str>,
    pub router: RouterFactory,
    /// Distinguishes this process's actor names from another app's in the same process.
    pub instance: String,
}

pub struct ServiceState {
    args: ServiceArgs,
    myself: ActorCell,
    consumer: Arc<BridgeConsumer>,
    router: Arc<dyn Router>,
    bridges: HashMap<(String, i32), ActorRef<BridgeMsg>>,
    stop: watch::Sender<bool>,
    consume_task: Option<JoinHandle<()>>,
}

/// However the service ends (stopped, failed or killed), its consumer task and its children
/// go with it, so a restarted service never shares the group with a leftover consumer.
impl Drop for ServiceState {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.consume_task.take() {
            task.abort();
        }
        self.myself.stop_children(Some("service ended".into()));
    }
}

pub struct ServiceSupervisor;

impl Actor for ServiceSupervisor {
    type Msg = ServiceMsg;
    type State = ServiceState;
    type Arguments = ServiceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ServiceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let topics: Vec<String> = args.topics.iter().map(|t| args.config.topic(t)).collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let (consumer, events) =
            kafka::consumer(&args.config.kafka, &args.config.group(args.name))?;
        consumer.subscribe(&names)?;
        let consumer = Arc::new(consumer);
        let (stop, stop_rx) = watch::channel(false);
        let consume_task = tokio::spawn(consume(consumer.clone(), events, myself.clone(), stop_rx));
        let router = (args.router)(myself.get_cell());
        tracing::info!(service = args.name, ?topics, "service consuming");
        Ok(ServiceState {
            myself: myself.get_cell(),
            args,
            consumer,
            router,
            bridges: HashMap::new(),
            stop,
            consume_task: Some(consume_task),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ServiceMsg::Batch(records) => {
                for record in records {
                    let bridge = state
                        .bridge(&myself, &record.topic, record.partition)
                        .await?;
                    if bridge.cast(BridgeMsg::Record(Arc::new(record))).is_err() {
                        tracing::warn!("bridge stopped while records were routed to it");
                    }
                }
            }
            ServiceMsg::Rebalance(RebalanceEvent::Revoked(parts)) => {
                for key in parts {
                    if let Some(bridge) = state.bridges.remove(&key) {
                        tracing::info!(topic = %key.0, partition = key.1, "partition revoked");
                        bridge.stop(Some("partition revoked".into()));
                    }
                }
            }
            ServiceMsg::Rebalance(RebalanceEvent::Assigned(parts)) => {
                for (topic, partition) in parts {
                    tracing::info!(%topic, partition, "partition assigned");
                }
            }
            ServiceMsg::Shutdown(reply) => {
                state.shutdown(&myself).await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(Ended {
            cell,
            reason,
            abnormal,
        }) = ended(event)
        else {
            return Ok(());
        };
        // Bridges the service stopped itself (revoke, shutdown) are no longer in the map.
        let is_bridge = state.bridges.values().any(|b| b.get_id() == cell.get_id());
        let name = cell.get_name().unwrap_or_default();
        if is_bridge {
            metrics::counter!(m::ACTOR_RESTARTS, "kind" => "bridge", "service" => state.args.name)
                .increment(1);
            return Err(format!(
                "partition bridge {name} ended ({reason}); restarting the consumer"
            )
            .into());
        }
        if abnormal {
            metrics::counter!(m::ACTOR_RESTARTS, "kind" => "keyed", "service" => state.args.name)
                .increment(1);
            tracing::warn!(%name, %reason, "keyed actor ended; it restarts on its next record");
        }
        Ok(())
    }
}

impl ServiceState {
    async fn bridge(
        &mut self,
        myself: &ActorRef<ServiceMsg>,
        topic: &str,
        partition: i32,
    ) -> Result<ActorRef<BridgeMsg>, ActorProcessingErr> {
        let key = (topic.to_owned(), partition);
        if let Some(b) = self.bridges.get(&key) {
            return Ok(b.clone());
        }
        let args = BridgeArgs {
            producer: self.args.producer.clone(),
            topic: topic.to_owned(),
            partition,
            consumer: self.consumer.clone(),
            router: self.router.clone(),
            config: self.args.config.bridge.clone(),
            service: self.args.name,
        };
        let name = format!(
            "{}/{}-bridge/{topic}/{partition}",
            self.args.instance, self.args.name
        );
        let (bridge, _) =
            Actor::spawn_linked(Some(name), PartitionBridge, args, myself.get_cell()).await?;
        self.bridges.insert(key, bridge.clone());
        Ok(bridge)
    }

    async fn shutdown(&mut self, myself: &ActorRef<ServiceMsg>) {
        let _ = self.stop.send(true);
        if let Some(task) = self.consume_task.take() {
            let _ = task.await;
        }
        for bridge in self.bridges.values() {
            let drained = ractor::call_t!(bridge, BridgeMsg::Drain, 10_000);
            if drained.is_err() {
                tracing::warn!("a partition bridge did not drain in time");
            }
        }
        // A commit can fail transiently (the group coordinator moving, a rebalance still
        // settling): try a few times, so handled records are not redelivered after a clean
        // stop (the inbox would absorb them, but the next process would redo the reads).
        for attempt in 1..=5 {
            let consumer = self.consumer.clone();
            let committed = tokio::task::spawn_blocking(move || {
                consumer.commit_consumer_state(CommitMode::Sync)
            })
            .await;
            match committed {
                Ok(Ok(())) => {
                    tracing::info!(service = self.args.name, "offsets committed");
                    break;
                }
                Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                ))) => {
                    tracing::debug!(service = self.args.name, "nothing to commit on shutdown");
                    break;
                }
                Ok(Err(e)) if attempt < 5 => {
                    tracing::debug!(error = %e, attempt, "offset commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "offsets not committed on shutdown");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "offset commit task failed");
                    break;
                }
            }
        }
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        self.bridges.clear();
    }
}

/// Reads the consumer and forwards records in batches (and rebalance events) to the service.
async fn consume(
    consumer: Arc<BridgeConsumer>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    service: ActorRef<ServiceMsg>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(event) = events.recv() => {
                if service.cast(ServiceMsg::Rebalance(event)).is_err() { break; }
            }
            first = consumer.recv() => {
                let first = match first {
                    Ok(m) => to_record(&m),
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let mut batch = vec![first];
                // Take whatever else is already fetched, without waiting.
                while batch.len() < MAX_BATCH {
                    match consumer.recv().now_or_never() {
                        Some(Ok(m)) => batch.push(to_record(&m)),
                        _ => break,
                    }
                }
                if service.cast(ServiceMsg::Batch(batch)).is_err() { break; }
            }
        }
    }
}

fn to_record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .filter_map(|h| {
                    let v = std::str::from_utf8(h.value?).ok()?;
                    Some((h.key.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}
