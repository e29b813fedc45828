//! Command handlers in batches: a service whose logic is per command (inventory, payment) gets
//! each partition's batch (see [`crate::actors::batch`], at most `workers` commands per batch)
//! and handles its commands concurrently. Nothing in a batch waits for a permit, so the
//! bridge's handler timeout (which runs from the batch's start) measures the work, never a
//! backlog: the batches are the bound. The commands of one key (an order) run one after
//! another in offset order, so an order's `ReserveStock` is decided before its `ReleaseStock`
//! and its `AuthorizePayment` before its `RefundPayment`. Commands that run at once share their
//! writes: each repository submits to a set (`infra::db::group`), so a batch's decisions are
//! written with one statement per kind, not one per command.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::actors::batch::{BatchHandler, Message, batch_service};
use crate::actors::bridge::{HandleError, HandleResult};
use crate::actors::service::ServiceArgs;
use crate::config::Config;
use crate::domain::envelope::Envelope;

/// What a service does with one message. Business outcomes (a rejection, a decline) are
/// `Ok`: they are replies, written with the inbox row. `Err` is for transient failures and
/// for messages that can never be handled.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    async fn handle(&self, envelope: &Envelope, traceparent: Option<&str>) -> HandleResult;
}

/// The arguments of a service whose logic is per command (inventory, payment): it consumes
/// `topic` in batches of at most `workers` commands per partition (never more than
/// `database.batch_max`), all started at once, run by [`PerCommand`].
pub fn command_service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    name: &'static str,
    topic: &'static str,
    workers: usize,
    handler: Arc<dyn CommandHandler>,
    instance: String,
) -> ServiceArgs {
    let batch_max = config.database.batch_max.min(workers);
    batch_service(
        config,
        producer,
        name,
        vec![topic],
        batch_max,
        Arc::new(PerCommand::new(handler)),
        instance,
    )
}

/// A [`BatchHandler`] that runs a [`CommandHandler`] on every message of a batch: different
/// keys concurrently, one key's messages in their order.
pub struct PerCommand {
    handler: Arc<dyn CommandHandler>,
}

impl PerCommand {
    pub fn new(handler: Arc<dyn CommandHandler>) -> Self {
        PerCommand { handler }
    }

    async fn one(&self, message: &Message) -> HandleResult {
        self.handler
            .handle(&message.envelope, message.traceparent.as_deref())
            .await
    }
}

#[async_trait]
impl BatchHandler for PerCommand {
    async fn handle_batch(&self, batch: &[Message]) -> Vec<HandleResult> {
        let mut results: Vec<HandleResult> =
            vec![Err(HandleError::Transient("not handled".into())); batch.len()];
        for round in rounds(batch) {
            let outcomes =
                futures::future::join_all(round.iter().map(|&i| self.one(&batch[i]))).await;
            for (i, outcome) in round.into_iter().zip(outcomes) {
                results[i] = outcome;
            }
        }
        results
    }
}

/// Splits a batch into rounds in which every order appears at most once: an order's n-th
/// message is in round n. Rounds run one after another, so one order's messages are handled
/// in their order while different orders' run together.
pub fn rounds(batch: &[Message]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<uuid::Uuid, usize> = HashMap::with_capacity(batch.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, message) in batch.iter().enumerate() {
        let n = seen.entry(message.envelope.order_id.as_uuid()).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::with_capacity(batch.len()));
        }
        rounds[*n].push(i);
        *n += 1;
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::bridge::Handled;
    use crate::domain::envelope::SagaTimeout;
    use crate::domain::ids::OrderId;
    use std::sync::Mutex;
    use std::time::Duration;

    fn message(order: OrderId) -> Message {
        Message {
            envelope: Envelope::new(
                order,
                &SagaTimeout {
                    version: 1,
                    status: "RESERVING".into(),
                },
                chrono::Utc::now(),
            ),
            traceparent: None,
        }
    }

    #[test]
    fn an_orders_messages_fall_in_successive_rounds() {
        let (a, b, c) = (OrderId::new(), OrderId::new(), OrderId::new());
        let batch: Vec<Message> = [a, b, a, c, a, b].into_iter().map(message).collect();
        assert_eq!(rounds(&batch), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
        assert!(rounds(&[]).is_empty());
    }

    /// Records when each message starts and ends; the first message of every order is slow,
    /// and the message `fail` fails.
    struct Probe {
        log: Mutex<Vec<(uuid::Uuid, &'static str)>>,
        first_of: Mutex<Vec<OrderId>>,
        fail: uuid::Uuid,
    }

    #[async_trait]
    impl CommandHandler for Probe {
        async fn handle(&self, envelope: &Envelope, _: Option<&str>) -> HandleResult {
            let first = {
                let mut seen = self.first_of.lock().unwrap_or_else(|e| e.into_inner());
                let first = !seen.contains(&envelope.order_id);
                seen.push(envelope.order_id);
                first
            };
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((envelope.id, "start"));
            if first {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((envelope.id, "end"));
            if envelope.id == self.fail {
                Err(HandleError::Transient("told to fail".into()))
            } else {
                Ok(Handled::Applied)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_orders_commands_run_in_order_others_together_and_fail_alone() {
        let (a, b) = (OrderId::new(), OrderId::new());
        let batch: Vec<Message> = [a, b, a].into_iter().map(message).collect();
        let probe = Arc::new(Probe {
            log: Mutex::new(vec![]),
            first_of: Mutex::new(vec![]),
            fail: batch[1].envelope.id,
        });
        let handler = PerCommand::new(probe.clone());
        let results = handler.handle_batch(&batch).await;
        assert_eq!(results[0], Ok(Handled::Applied));
        assert!(results[1].is_err(), "the failing command fails");
        assert_eq!(results[2], Ok(Handled::Applied), "and only itself");
        let log = probe.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let at = |id: uuid::Uuid, what: &str| {
            log.iter()
                .position(|(i, w)| *i == id && *w == what)
                .unwrap_or(usize::MAX)
        };
        let ids: Vec<_> = batch.iter().map(|m| m.envelope.id).collect();
        // a's and b's first commands ran together; a's second only after a's first ended.
        assert!(at(ids[1], "start") < at(ids[0], "end"));
        assert!(at(ids[0], "end") < at(ids[2], "start"));
    }
}
