//! A partition bridge: one actor per assigned Kafka partition. It hands each record to the
//! actor that owns the record's key (through a [`Router`]), keeps the records that are not yet
//! durable, stores the lowest contiguous finished offset for commit, retries failures with
//! backoff, and pauses its partition when too much is in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::oneshot;

use crate::actors::supervision::backoff;
use crate::config::BridgeConfig;
use crate::infra::kafka::BridgeConsumer;
use crate::metrics as m;

/// A Kafka record, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The record's envelope; a record without one can never be handled (poison).
    pub fn envelope(&self) -> Result<crate::domain::envelope::Envelope, HandleError> {
        let payload = self
            .payload
            .as_deref()
            .ok_or_else(|| HandleError::Poison("record has no payload".into()))?;
        crate::domain::envelope::Envelope::decode(payload)
            .map_err(|e| HandleError::Poison(e.to_string()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a handler finished with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The effect is durable.
    Applied,
    /// The message id was handled before; nothing changed.
    Duplicate,
    /// The message means nothing to its handler now (late, stale or informational).
    Ignored,
}

/// Why a handler did not finish a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Worth retrying (database down, actor restarting, timeout).
    #[error("transient: {0}")]
    Transient(String),
    /// The record can never be handled (not a valid envelope). It is logged and skipped;
    /// the dead-letter topic takes these once it exists.
    #[error("poison: {0}")]
    Poison(String),
    /// A dependency is down (its circuit is open, or it failed): retried with backoff for as
    /// long as it takes and never dead-lettered, so nothing is dropped while it is away.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

pub type HandleResult = Result<Handled, HandleError>;

/// The actor registered under `name`, or a new one linked to `supervisor` (started with
/// `args()` only when needed). A concurrent start of the same name, or one still stopping,
/// resolves by looking again.
pub async fn find_or_spawn<A: Actor>(
    name: String,
    actor: A,
    args: impl FnOnce() -> A::Arguments,
    supervisor: ractor::ActorCell,
) -> Result<ActorRef<A::Msg>, HandleError> {
    if let Some(found) = ActorRef::<A::Msg>::where_is(name.clone()) {
        return Ok(found);
    }
    match Actor::spawn_linked(Some(name.clone()), actor, args(), supervisor).await {
        Ok((started, _)) => Ok(started),
        Err(e) => ActorRef::<A::Msg>::where_is(name.clone())
            .ok_or_else(|| HandleError::Transient(format!("cannot start {name}: {e}"))),
    }
}

/// Finds (or starts) the actor that owns a record's key and hands it the record.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    async fn route(&self, record: Arc<Record>) -> Result<Routed, HandleError>;
}

/// A record handed to its actor.
pub struct Routed {
    /// Completes when the actor starts on the record (`None`: the actor starts on it at once,
    /// or cannot tell). The handler timeout runs from then: waiting behind other records in a
    /// busy actor's mailbox is backpressure, not a failure.
    pub started: Option<oneshot::Receiver<()>>,
    /// Completes when the effect is durable.
    pub result: oneshot::Receiver<HandleResult>,
}

impl Routed {
    /// A record whose actor replies without telling when it starts.
    pub fn at_once(result: oneshot::Receiver<HandleResult>) -> Self {
        Routed {
            started: None,
            result,
        }
    }
}

pub enum BridgeMsg {
    Record(Arc<Record>),
    Finished {
        offset: i64,
        result: HandleResult,
    },
    Retry {
        offset: i64,
    },
    /// Publish the record to its dead-letter topic (first try or after a failed publish).
    DeadLetter {
        offset: i64,
        reason: String,
    },
    /// The record is on its dead-letter topic: it counts as finished.
    DeadLettered {
        offset: i64,
    },
    /// Replies once nothing is in flight (used on shutdown before the final commit).
    Drain(RpcReplyPort<()>),
}

pub struct BridgeArgs {
    /// Publishes records that can never be handled to `<topic>.dlq`.
    pub producer: FutureProducer,
    pub topic: String,
    pub partition: i32,
    pub consumer: Arc<BridgeConsumer>,
    pub router: Arc<dyn Router>,
    pub config: BridgeConfig,
    pub service: &'static str,
}

pub struct BridgeState {
    args: BridgeArgs,
    in_flight: BTreeMap<i64, InFlight>,
    highest_seen: Option<i64>,
    last_stored: Option<i64>,
    paused: bool,
    drain_waiters: Vec<RpcReplyPort<()>>,
}

struct InFlight {
    record: Arc<Record>,
    attempts: u32,
}

pub struct PartitionBridge;

impl Actor for PartitionBridge {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BridgeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        tracing::debug!(topic = %args.topic, partition = args.partition, "partition bridge started");
        Ok(BridgeState {
            args,
            in_flight: BTreeMap::new(),
            highest_seen: None,
            last_stored: None,
            paused: false,
            drain_waiters: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BridgeMsg::Record(record) => {
                let offset = record.offset;
                if state.highest_seen.is_some_and(|h| offset <= h) {
                    // Already dispatched (a re-fetch after pause or seek): the first copy counts.
                    return Ok(());
                }
                state.highest_seen = Some(offset);
                state.in_flight.insert(
                    offset,
                    InFlight {
                        record: record.clone(),
                        attempts: 0,
                    },
                );
                dispatch(&myself, state, record).await;
                state.apply_backpressure();
            }
            BridgeMsg::Finished { offset, result } => state.on_finished(&myself, offset, result),
            BridgeMsg::Retry { offset } => {
                if let Some(entry) = state.in_flight.get(&offset) {
                    let record = entry.record.clone();
                    metrics::counter!(m::BRIDGE_RETRIES, "service" => state.args.service)
                        .increment(1);
                    dispatch(&myself, state, record).await;
                }
            }
            BridgeMsg::DeadLetter { offset, reason } => {
                if let Some(entry) = state.in_flight.get(&offset) {
                    dead_letter(
                        &myself,
                        &state.args,
                        entry.record.clone(),
                        reason,
                        entry.attempts,
                    );
                }
            }
            BridgeMsg::DeadLettered { offset } => {
                if state.in_flight.remove(&offset).is_some() {
                    metrics::counter!(m::BRIDGE_RECORDS, "service" => state.args.service, "outcome" => "dead_lettered")
                        .increment(1);
                    state.after_completion();
                }
            }
            BridgeMsg::Drain(reply) => {
                if state.in_flight.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.drain_waiters.push(reply);
                }
            }
        }
        Ok(())
    }
}

/// Routes one record and waits for its result off the actor's loop, so the bridge keeps
/// dispatching while handlers work. Routing happens in the handler, so records of one key
/// reach their actor's mailbox in offset order.
async fn dispatch(myself: &ActorRef<BridgeMsg>, state: &BridgeState, record: Arc<Record>) {
    let offset = record.offset;
    let timeout = Duration::from_millis(state.args.config.handler_timeout_ms);
    let reply = myself.clone();
    match state.args.router.route(record).await {
        Ok(Routed { started, result }) => {
            tokio::spawn(async move {
                if let Some(started) = started
                    && started.await.is_err()
                {
                    let result = Err(HandleError::Transient(
                        "handler stopped before starting on the record".into(),
                    ));
                    let _ = reply.cast(BridgeMsg::Finished { offset, result });
                    return;
                }
                let result = match tokio::time::timeout(timeout, result).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(HandleError::Transient(
                        "handler stopped before replying".into(),
                    )),
                    Err(_) => Err(HandleError::Transient(format!(
                        "no result within {timeout:?}"
                    ))),
                };
                let _ = reply.cast(BridgeMsg::Finished { offset, result });
            });
        }
        Err(e) => {
            let _ = myself.cast(BridgeMsg::Finished {
                offset,
                result: Err(e),
            });
        }
    }
}

/// Publishes a record to `<topic>.dlq` with why it failed, then reports back. A failed publish
/// is tried again after the retry backoff: a record is never dropped.
fn dead_letter(
    myself: &ActorRef<BridgeMsg>,
    args: &BridgeArgs,
    record: Arc<Record>,
    reason: String,
    attempts: u32,
) {
    let producer = args.producer.clone();
    let dlq = format!(
        "{}{}",
        record.topic,
        crate::domain::envelope::topics::DLQ_SUFFIX
    );
    let service = args.service;
    let retry_after = Duration::from_millis(args.config.retry_max_ms);
    let me = myself.clone();
    tokio::spawn(async move {
        let offset = record.offset;
        let source_partition = record.partition.to_string();
        let source_offset = offset.to_string();
        let attempts_text = attempts.to_string();
        let error: String = reason.chars().take(2_000).collect();
        let mut headers = OwnedHeaders::new();
        for (k, v) in &record.headers {
            if !k.starts_with("dlq-") {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
        }
        for (key, value) in [
            ("dlq-error", error.as_str()),
            ("dlq-source-topic", record.topic.as_str()),
            ("dlq-source-partition", source_partition.as_str()),
            ("dlq-source-offset", source_offset.as_str()),
            ("dlq-attempts", attempts_text.as_str()),
            ("dlq-service", service),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut out = FutureRecord::to(&dlq).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        match producer.send(out, Duration::from_secs(10)).await {
            Ok(_) => {
                let _ = me.cast(BridgeMsg::DeadLettered { offset });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, %dlq, offset, "cannot publish to the dead-letter topic; retrying");
                me.send_after(retry_after, move || BridgeMsg::DeadLetter {
                    offset,
                    reason,
                });
            }
        }
    });
}

impl BridgeState {
    fn on_finished(&mut self, myself: &ActorRef<BridgeMsg>, offset: i64, result: HandleResult) {
        let service = self.args.service;
        match result {
            Ok(handled) => {
                let outcome = match handled {
                    Handled::Applied => "applied",
                    Handled::Duplicate => "duplicate",
                    Handled::Ignored => "ignored",
                };
                metrics::counter!(m::BRIDGE_RECORDS, "service" => service, "outcome" => outcome)
                    .increment(1);
                self.in_flight.remove(&offset);
            }
            Err(HandleError::Poison(reason)) => {
                tracing::error!(
                    topic = %self.args.topic, partition = self.args.partition, offset,
                    %reason, "a record that can never be handled goes to the dead-letter topic"
                );
                let _ = myself.cast(BridgeMsg::DeadLetter { offset, reason });
                return;
            }
            Err(HandleError::Unavailable(reason)) => {
                let Some(entry) = self.in_flight.get_mut(&offset) else {
                    return;
                };
                entry.attempts = entry.attempts.saturating_add(1);
                let delay = backoff(
                    Duration::from_millis(self.args.config.retry_initial_ms),
                    Duration::from_millis(self.args.config.retry_max_ms),
                    entry.attempts - 1,
                );
                // Logged on the first attempt and then every 20th, not on every retry.
                if entry.attempts == 1 || entry.attempts.is_multiple_of(20) {
                    tracing::warn!(
                        topic = %self.args.topic, partition = self.args.partition, offset,
                        attempt = entry.attempts, ?delay, %reason, "a dependency is unavailable; the record waits"
                    );
                }
                myself.send_after(delay, move || BridgeMsg::Retry { offset });
                return;
            }
            Err(HandleError::Transient(reason)) => {
                let Some(entry) = self.in_flight.get_mut(&offset) else {
                    return;
                };
                entry.attempts += 1;
                if entry.attempts >= self.args.config.max_attempts {
                    tracing::error!(
                        topic = %self.args.topic, partition = self.args.partition, offset,
                        attempts = entry.attempts, %reason, "retries exhausted; dead-lettering the record"
                    );
                    let reason = format!("after {} attempts: {reason}", entry.attempts);
                    let _ = myself.cast(BridgeMsg::DeadLetter { offset, reason });
                    return;
                }
                let delay = backoff(
                    Duration::from_millis(self.args.config.retry_initial_ms),
                    Duration::from_millis(self.args.config.retry_max_ms),
                    entry.attempts - 1,
                );
                tracing::warn!(
                    topic = %self.args.topic, partition = self.args.partition, offset,
                    attempt = entry.attempts, ?delay, %reason, "record failed; retrying"
                );
                myself.send_after(delay, move || BridgeMsg::Retry { offset });
                return;
            }
        }
        self.after_completion();
    }

    /// Bookkeeping once a record left the in-flight set.
    fn after_completion(&mut self) {
        self.store_offset();
        self.apply_backpressure();
        if self.in_flight.is_empty() {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Stores the highest offset below which every record is durable; the consumer commits
    /// stored offsets in the background and on revoke.
    fn store_offset(&mut self) {
        let Some(done) = done_through(self.in_flight.keys().next().copied(), self.highest_seen)
        else {
            return;
        };
        if self.last_stored.is_some_and(|s| s >= done) {
            return;
        }
        match self
            .args
            .consumer
            .store_offset(&self.args.topic, self.args.partition, done)
        {
            Ok(()) => self.last_stored = Some(done),
            // The partition was revoked: its next owner redelivers from the last commit.
            Err(e) => {
                tracing::debug!(error = %e, partition = self.args.partition, "offset not stored")
            }
        }
    }

    fn apply_backpressure(&mut self) {
        let limit = self.args.config.max_in_flight;
        let n = self.in_flight.len();
        let pause = !self.paused && n >= limit;
        let resume = self.paused && n <= limit / 2;
        if !(pause || resume) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.args.topic, self.args.partition);
        let result = if pause {
            self.args.consumer.pause(&tpl)
        } else {
            self.args.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                self.paused = pause;
                if pause {
                    metrics::counter!(m::BRIDGE_PAUSES, "service" => self.args.service)
                        .increment(1);
                    tracing::info!(
                        partition = self.args.partition,
                        in_flight = n,
                        "partition paused"
                    );
                } else {
                    tracing::info!(
                        partition = self.args.partition,
                        in_flight = n,
                        "partition resumed"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot pause or resume partition"),
        }
    }
}

/// The last offset through which every dispatched record is finished: just below the oldest
/// record still in flight, or the highest dispatched when none is.
fn done_through(oldest_in_flight: Option<i64>, highest_seen: Option<i64>) -> Option<i64> {
    match oldest_in_flight {
        Some(first) => (first > 0).then(|| first - 1),
        None => highest_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stored_only_through_the_oldest_unfinished_record() {
        assert_eq!(done_through(None, None), None);
        assert_eq!(done_through(None, Some(41)), Some(41));
        assert_eq!(done_through(Some(10), Some(41)), Some(9));
        assert_eq!(done_through(Some(0), Some(3)), None);
    }

    #[test]
    fn headers_are_found_by_name() {
        let r = Record {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: None,
            payload: None,
            headers: vec![("traceparent".into(), "00-x".into())],
        };
        assert_eq!(r.header("traceparent"), Some("00-x"));
        assert_eq!(r.header("missing"), None);
    }
}
