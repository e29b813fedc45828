//! A service supervisor (one per service: order, inventory, payment, …). It owns the service's
//! Kafka consumer, one partition bridge per partition it is assigned, and (as supervisor) the
//! actors its router starts (the order sagas; the other services route to batcher tasks).
//!
//! Restart strategy: a failed keyed actor is restarted on its next record (its bridge retries
//! the record) and reloads what it needs from PostgreSQL. A bridge that dies takes its in-flight
//! records with it, so the service fails as a whole ("one for all"): the root restarts it with
//! a new consumer, which resumes every partition from its last committed offset. Effects
//! already applied are deduplicated by the inbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long a shutdown keeps retrying a failed offset commit.
const COMMIT_DEADLINE: Duration = Duration::from_secs(5);

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
    /// Tells the consumer's revoke callback that this service answers no more revokes.
    stopping: Arc<AtomicBool>,
    consume_task: Option<JoinHandle<()>>,
}

/// However the service ends (stopped, failed or killed), its consumer task and its children
/// go with it, so a restarted service never shares the group with a leftover consumer.
impl Drop for ServiceState {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
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
        // A revoke waits for the drain and then for the commit.
        let revoke_wait =
            Duration::from_millis(args.config.bridge.drain_timeout_ms) + COMMIT_DEADLINE;
        let stopping = Arc::new(AtomicBool::new(false));
        let (consumer, events) = kafka::consumer(
            &args.config.kafka,
            &args.config.group(args.name),
            revoke_wait,
            stopping.clone(),
        )?;
        consumer.subscribe(&names)?;
        let consumer = Arc::new(consumer);
        let (stop, stop_rx) = watch::channel(false);
        // Rebalance events travel on their own task: a revoke blocks the consume task (inside
        // the consumer's poll) until the service has drained the partitions.
        tokio::spawn(forward_rebalances(events, myself.clone()));
        let consume_task = tokio::spawn(consume(
            consumer.clone(),
            myself.clone(),
            stop_rx,
            args.name,
        ));
        let router = (args.router)(myself.get_cell());
        tracing::info!(service = args.name, ?topics, "service consuming");
        Ok(ServiceState {
            myself: myself.get_cell(),
            args,
            consumer,
            router,
            bridges: HashMap::new(),
            stop,
            stopping,
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
            ServiceMsg::Rebalance(RebalanceEvent::Revoked(parts, done)) => {
                let revoked: Vec<_> = parts
                    .iter()
                    .filter_map(|key| state.bridges.remove(key))
                    .collect();
                // Handled records' offsets are committed before the partitions move on, so
                // their next owner does not redo them.
                if !state.drain(&revoked).await {
                    tracing::warn!("revoked partitions still had records in flight");
                }
                state.commit(Duration::ZERO).await;
                for bridge in revoked {
                    bridge.stop(Some("partition revoked".into()));
                }
                for (topic, partition) in parts {
                    tracing::info!(%topic, partition, "partition revoked");
                }
                let _ = done.send(());
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

    /// Waits, for all of them at once and up to the drain deadline, until the bridges have
    /// nothing in flight. True when every one drained.
    async fn drain(&self, bridges: &[ActorRef<BridgeMsg>]) -> bool {
        let deadline = Duration::from_millis(self.args.config.bridge.drain_timeout_ms);
        let calls = bridges
            .iter()
            .map(|b| b.call(BridgeMsg::Drain, Some(deadline)));
        futures::future::join_all(calls)
            .await
            .iter()
            .all(|r| matches!(r, Ok(ractor::rpc::CallResult::Success(()))))
    }

    /// Commits the stored offsets synchronously; a failed commit is tried again after doubling
    /// pauses while `retry_for` has not passed (zero: one attempt).
    async fn commit(&self, retry_for: Duration) {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        for attempt in 1.. {
            let consumer = self.consumer.clone();
            let committed = tokio::task::spawn_blocking(move || {
                consumer.commit_consumer_state(CommitMode::Sync)
            })
            .await;
            match committed {
                Ok(Ok(())) => {
                    tracing::info!(service = self.args.name, "offsets committed");
                    return;
                }
                Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                ))) => {
                    tracing::debug!(service = self.args.name, "no new offsets to commit");
                    return;
                }
                Ok(Err(e)) if started.elapsed() + pause <= retry_for => {
                    tracing::debug!(error = %e, attempt, "offset commit failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Ok(Err(e)) => {
                    tracing::warn!(service = self.args.name, error = %e, "offsets not committed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "offset commit task failed");
                    return;
                }
            }
        }
    }

    async fn shutdown(&mut self, myself: &ActorRef<ServiceMsg>) {
        // A revoke from now on (another rebalance, or the consumer's close when the last
        // bridge holding it stops) must not wait for this service: it is busy stopping, and
        // drains and commits all its partitions itself.
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        if let Some(task) = self.consume_task.take() {
            let _ = task.await;
        }
        let bridges: Vec<_> = self.bridges.values().cloned().collect();
        if !self.drain(&bridges).await {
            tracing::warn!("partition bridges did not drain in time");
        }
        // A commit can fail transiently (the group coordinator moving, a rebalance still
        // settling): try for a while, so handled records are not redelivered after a clean
        // stop (the inbox would absorb them, but the next process would redo the reads).
        self.commit(COMMIT_DEADLINE).await;
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        self.bridges.clear();
    }
}

/// Forwards the consumer's rebalance events to the service; ends with the consumer.
async fn forward_rebalances(
    mut events: tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    service: ActorRef<ServiceMsg>,
) {
    while let Some(event) = events.recv().await {
        // A stopped service answers no revoke: dropping the event releases the consumer.
        if service.cast(ServiceMsg::Rebalance(event)).is_err() {
            break;
        }
    }
}

/// Reads the consumer and forwards records to the service in batches.
async fn consume(
    consumer: Arc<BridgeConsumer>,
    service: ActorRef<ServiceMsg>,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
) {
    // Resolved once: the macros look the metric up in the registry on every call.
    let batch_records = metrics::histogram!(m::CONSUMER_BATCH_RECORDS, "service" => name);
    let record_age = metrics::histogram!(m::CONSUMER_RECORD_AGE, "service" => name);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            first = consumer.recv() => {
                let first = match first {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                // The rest of the batch was fetched with the first record: one clock reading
                // dates them all.
                let now_ms = chrono::Utc::now().timestamp_millis();
                let arrived = |m: &rdkafka::message::BorrowedMessage<'_>| {
                    // The producer's timestamp is taken when the record was handed to the
                    // producer, after its transaction committed.
                    if let Some(produced) = m.timestamp().to_millis().filter(|p| *p <= now_ms) {
                        record_age.record((now_ms - produced) as f64 / 1_000.0);
                    }
                    to_record(m)
                };
                let mut batch = vec![arrived(&first)];
                drop(first);
                // Take whatever else is already fetched, without waiting.
                while batch.len() < MAX_BATCH {
                    match consumer.recv().now_or_never() {
                        Some(Ok(m)) => batch.push(arrived(&m)),
                        _ => break,
                    }
                }
                batch_records.record(batch.len() as f64);
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
