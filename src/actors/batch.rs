//! Batch handlers: a service decides every record its partition has fetched at once.
//!
//! Each partition bridge routes its records to a batcher of its own. The batcher hands the
//! service's [`BatchHandler`] everything that arrived while the previous batch was being
//! handled (up to a cap), in offset order, and answers each record with its own result, so one
//! failing record fails only itself (the bridge retries or dead-letters it alone). One batch
//! per partition is in flight at a time: records of one key are never decided concurrently and
//! stay in order across batches. Batches grow by themselves under load and a lone record is
//! handled at once — no timer adds latency.
//!
//! The bridge's handler timeout runs from the moment a record's batch starts, not while it
//! waits behind the batch in progress (that is backpressure, not a failure). A handler that
//! panics fails its batch's records transiently; the batcher goes on with the next batch.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use ractor::ActorCell;
use tokio::sync::{mpsc, oneshot};

use crate::actors::bridge::{HandleError, HandleResult, Record, Routed, Router};
use crate::actors::service::{RouterFactory, ServiceArgs};
use crate::domain::envelope::Envelope;

/// One record of a batch, decoded.
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Envelope,
    pub traceparent: Option<String>,
}

/// What a service does with a batch of one partition's messages. Business outcomes are `Ok`
/// (see [`crate::actors::worker::CommandHandler`]); an `Err` concerns its record alone.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `batch` (in offset order, records of one key in their order) and returns
    /// exactly one result per message, in the same order.
    async fn handle_batch(&self, batch: &[Message]) -> Vec<HandleResult>;
}

/// A record waiting for its batch.
struct Pending {
    message: Message,
    started: oneshot::Sender<()>,
    reply: oneshot::Sender<HandleResult>,
}

/// The arguments of a service whose records `handler` decides in batches of at most
/// `batch_max` records per partition (file, notification).
pub fn batch_service(
    config: Arc<crate::config::Config>,
    producer: rdkafka::producer::FutureProducer,
    name: &'static str,
    topics: Vec<&'static str>,
    batch_max: usize,
    handler: Arc<dyn BatchHandler>,
    instance: String,
) -> ServiceArgs {
    let router: RouterFactory = Arc::new(move |_supervisor: ActorCell| {
        Arc::new(BatchRouter::start(name, handler.clone(), batch_max)) as Arc<dyn Router>
    });
    ServiceArgs {
        config,
        producer,
        name,
        topics,
        router,
        instance,
    }
}

/// Routes a partition's records to its batcher task (which ends when the router is dropped,
/// after the batch in progress).
pub struct BatchRouter {
    pending: mpsc::UnboundedSender<Pending>,
}

impl BatchRouter {
    pub fn start(service: &'static str, handler: Arc<dyn BatchHandler>, batch_max: usize) -> Self {
        let (pending, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(service, handler, rx, batch_max.max(1)));
        BatchRouter { pending }
    }
}

#[async_trait]
impl Router for BatchRouter {
    async fn route(&self, record: Arc<Record>) -> Result<Routed, HandleError> {
        let envelope = record.envelope()?;
        let (reply, result) = oneshot::channel();
        let (started, started_rx) = oneshot::channel();
        self.pending
            .send(Pending {
                message: Message {
                    envelope,
                    traceparent: record.header("traceparent").map(str::to_owned),
                },
                started,
                reply,
            })
            .map_err(|_| HandleError::Transient("the batcher stopped".into()))?;
        Ok(Routed {
            started: Some(started_rx),
            result,
        })
    }
}

async fn batch_loop(
    service: &'static str,
    handler: Arc<dyn BatchHandler>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    batch_max: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics::histogram!(crate::metrics::HANDLER_BATCH_RECORDS, "service" => service)
            .record(batch.len() as f64);
        let mut messages = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            // A record whose bridge gave up waiting (timeout, revoke) is not handled.
            if p.started.send(()).is_ok() {
                messages.push(p.message);
                replies.push(p.reply);
            }
        }
        if messages.is_empty() {
            continue;
        }
        let outcome = AssertUnwindSafe(handler.handle_batch(&messages))
            .catch_unwind()
            .await;
        let results = match outcome {
            Ok(results) if results.len() == messages.len() => results,
            Ok(results) => {
                tracing::error!(
                    service,
                    records = messages.len(),
                    results = results.len(),
                    "a batch handler returned the wrong number of results; the batch is retried"
                );
                vec![
                    Err(HandleError::Transient(
                        "the batch handler lost track of its records".into()
                    ));
                    messages.len()
                ]
            }
            Err(_) => {
                tracing::error!(
                    service,
                    records = messages.len(),
                    "a batch handler panicked; the batch is retried"
                );
                vec![
                    Err(HandleError::Transient("the batch handler panicked".into()));
                    messages.len()
                ]
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::bridge::Handled;
    use crate::domain::envelope::{Envelope, SagaTimeout};
    use crate::domain::ids::OrderId;
    use std::sync::Mutex;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Records every batch it sees; fails the message of `fail` and panics on `panic`.
    struct Probe {
        batches: Mutex<Vec<Vec<uuid::Uuid>>>,
        fail: Option<uuid::Uuid>,
        panic: Option<uuid::Uuid>,
        gate: tokio::sync::Semaphore,
    }

    impl Probe {
        fn batches(&self) -> Vec<Vec<uuid::Uuid>> {
            self.batches.lock().map(|b| b.clone()).unwrap_or_default()
        }
    }

    #[async_trait]
    impl BatchHandler for Probe {
        async fn handle_batch(&self, batch: &[Message]) -> Vec<HandleResult> {
            let _permit = self.gate.acquire().await;
            let ids: Vec<_> = batch.iter().map(|m| m.envelope.id).collect();
            if ids.iter().any(|id| Some(*id) == self.panic) {
                panic!("probe told to panic");
            }
            if let Ok(mut batches) = self.batches.lock() {
                batches.push(ids.clone());
            }
            ids.iter()
                .map(|id| {
                    if Some(*id) == self.fail {
                        Err(HandleError::Transient("told to fail".into()))
                    } else {
                        Ok(Handled::Applied)
                    }
                })
                .collect()
        }
    }

    fn record(offset: i64, envelope: &Envelope) -> Arc<Record> {
        Arc::new(Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: Some(envelope.order_id.to_string().into_bytes()),
            payload: Some(envelope.encode()),
            headers: vec![],
        })
    }

    fn envelope(order: OrderId) -> Envelope {
        Envelope::new(
            order,
            &SagaTimeout {
                version: 1,
                status: "RESERVING".into(),
            },
            chrono::Utc::now(),
        )
    }

    fn probe(fail: Option<uuid::Uuid>, panic: Option<uuid::Uuid>, permits: usize) -> Arc<Probe> {
        Arc::new(Probe {
            batches: Mutex::new(vec![]),
            fail,
            panic,
            gate: tokio::sync::Semaphore::new(permits),
        })
    }

    /// Routes every envelope; the first alone, waiting until its batch started (and holds at
    /// the gate), so the others queue behind it.
    async fn route_all(
        router: &BatchRouter,
        envelopes: &[Envelope],
    ) -> Result<Vec<Routed>, HandleError> {
        let mut routed = Vec::new();
        for (i, e) in envelopes.iter().enumerate() {
            let mut r = router.route(record(i as i64, e)).await?;
            if i == 0
                && let Some(started) = r.started.take()
            {
                started
                    .await
                    .map_err(|_| HandleError::Transient("never started".into()))?;
            }
            routed.push(r);
        }
        Ok(routed)
    }

    #[tokio::test]
    async fn records_that_wait_form_one_batch_in_offset_order_and_fail_alone() -> TestResult {
        let order = OrderId::new();
        let envelopes: Vec<Envelope> = (0..5).map(|_| envelope(order)).collect();
        // The first batch is held at the gate while four more records arrive.
        let handler = probe(Some(envelopes[3].id), None, 0);
        let router = BatchRouter::start("test", handler.clone(), 100);
        let routed = route_all(&router, &envelopes).await?;
        handler.gate.add_permits(2);
        let mut results = vec![];
        for r in routed {
            results.push(r.result.await?);
        }
        let ids: Vec<_> = envelopes.iter().map(|e| e.id).collect();
        assert_eq!(
            handler.batches(),
            vec![ids[..1].to_vec(), ids[1..].to_vec()]
        );
        assert!(results[3].is_err(), "the failing record fails");
        for i in [0, 1, 2, 4] {
            assert_eq!(
                results[i],
                Ok(Handled::Applied),
                "record {i} fails only if it failed"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_records_and_the_next_batch_runs() -> TestResult {
        let order = OrderId::new();
        let bad = envelope(order);
        let good = envelope(order);
        let handler = probe(None, Some(bad.id), 10);
        let router = BatchRouter::start("test", handler.clone(), 100);
        let first = router.route(record(0, &bad)).await?;
        assert!(first.result.await?.is_err());
        let second = router.route(record(1, &good)).await?;
        assert_eq!(second.result.await?, Ok(Handled::Applied));
        Ok(())
    }

    #[tokio::test]
    async fn batches_are_capped_and_keep_offset_order() -> TestResult {
        let order = OrderId::new();
        let envelopes: Vec<Envelope> = (0..7).map(|_| envelope(order)).collect();
        let handler = probe(None, None, 0);
        let router = BatchRouter::start("test", handler.clone(), 3);
        let routed = route_all(&router, &envelopes).await?;
        handler.gate.add_permits(10);
        for r in routed {
            r.result.await??;
        }
        let batches = handler.batches();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 3, 3]);
        let seen: Vec<_> = batches.concat();
        let sent: Vec<_> = envelopes.iter().map(|e| e.id).collect();
        assert_eq!(
            seen, sent,
            "records of one key in offset order across batches"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_record_without_an_envelope_is_poison() {
        let router = BatchRouter::start("test", probe(None, None, 1), 10);
        let mut bad = (*record(0, &envelope(OrderId::new()))).clone();
        bad.payload = Some(b"not json".to_vec());
        assert!(matches!(
            router.route(Arc::new(bad)).await,
            Err(HandleError::Poison(_))
        ));
    }
}
