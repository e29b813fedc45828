//! Keyed workers: a fixed pool of actors per service, each handling the records whose key
//! hashes to it, one at a time. Records of one key therefore stay in order, different keys run
//! in parallel, and the number of actors is bounded whatever the number of keys.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::actors::bridge::{HandleError, HandleResult, Record, Routed, Router, find_or_spawn};
use crate::domain::envelope::Envelope;

/// What a service does with one message. Business outcomes (a rejection, a decline) are
/// `Ok`: they are replies, written with the inbox row. `Err` is for transient failures and
/// for messages that can never be handled.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    async fn handle(&self, envelope: Envelope, traceparent: Option<String>) -> HandleResult;
}

pub struct Work {
    envelope: Envelope,
    traceparent: Option<String>,
    /// Told when this worker starts on the record (the bridge's handler timeout runs from
    /// then, not while the record waits in the mailbox).
    started: oneshot::Sender<()>,
    reply: RpcReplyPort<HandleResult>,
}

pub struct KeyedWorker;

impl Actor for KeyedWorker {
    type Msg = Work;
    type State = Arc<dyn CommandHandler>;
    type Arguments = Arc<dyn CommandHandler>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        handler: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(handler)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        work: Work,
        handler: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = work.started.send(());
        let result = handler.handle(work.envelope, work.traceparent).await;
        let _ = work.reply.send(result);
        Ok(())
    }
}

/// Routes each record to worker `hash(key) % workers`, starting it on first use.
/// The arguments of a service whose records `handler` handles on `workers` keyed workers
/// (inventory, payment, file, notification): one router per partition bridge, all sharing the
/// handler.
pub fn keyed_service(
    config: Arc<crate::config::Config>,
    producer: rdkafka::producer::FutureProducer,
    name: &'static str,
    topics: Vec<&'static str>,
    workers: usize,
    handler: Arc<dyn CommandHandler>,
    instance: String,
) -> crate::actors::service::ServiceArgs {
    let router_instance = instance.clone();
    let router: crate::actors::service::RouterFactory = Arc::new(move |supervisor: ActorCell| {
        Arc::new(WorkerRouter {
            service: name,
            instance: router_instance.clone(),
            workers,
            handler: handler.clone(),
            supervisor,
        }) as Arc<dyn crate::actors::bridge::Router>
    });
    crate::actors::service::ServiceArgs {
        config,
        producer,
        name,
        topics,
        router,
        instance,
    }
}

pub struct WorkerRouter {
    pub service: &'static str,
    pub instance: String,
    pub workers: usize,
    pub handler: Arc<dyn CommandHandler>,
    pub supervisor: ActorCell,
}

impl WorkerRouter {
    fn index(&self, key: &[u8]) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.workers.max(1) as u64) as usize
    }

    async fn worker(&self, index: usize) -> Result<ActorRef<Work>, HandleError> {
        find_or_spawn(
            format!("{}/{}-worker/{index}", self.instance, self.service),
            KeyedWorker,
            || self.handler.clone(),
            self.supervisor.clone(),
        )
        .await
    }
}

#[async_trait]
impl Router for WorkerRouter {
    async fn route(&self, record: Arc<Record>) -> Result<Routed, HandleError> {
        let envelope = record.envelope()?;
        let key = record
            .key
            .clone()
            .unwrap_or_else(|| envelope.order_id.to_string().into_bytes());
        let worker = self.worker(self.index(&key)).await?;
        let (tx, rx) = oneshot::channel();
        let (started, started_rx) = oneshot::channel();
        worker
            .cast(Work {
                envelope,
                traceparent: record.header("traceparent").map(str::to_owned),
                started,
                reply: tx.into(),
            })
            .map_err(|_| {
                HandleError::Transient("worker stopped before the record arrived".into())
            })?;
        Ok(Routed {
            started: Some(started_rx),
            result: rx,
        })
    }
}
