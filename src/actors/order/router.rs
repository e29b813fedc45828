//! Routes order events to the saga of their order, starting the saga when needed.

use std::sync::Arc;

use async_trait::async_trait;
use ractor::{ActorCell, ActorRef};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::saga::{OrderSaga, SagaArgs, SagaMsg};
use crate::actors::bridge::{HandleError, Record, Routed, Router, find_or_spawn};
use crate::actors::service::{RouterFactory, ServiceArgs};
use crate::config::{Config, SagaConfig};
use crate::domain::envelope::topics;
use crate::infra::db::batched::Batched;
use crate::infra::db::messaging::Schema;
use crate::infra::db::orders::{SagaLoads, SagaSteps};
use crate::infra::db::writer::Writers;

/// The order service: consumes `order.commands` and the replies on `inventory.events` and
/// `payment.events`, and routes each to its order's saga.
pub fn service(
    config: Arc<Config>,
    producer: rdkafka::producer::FutureProducer,
    pool: PgPool,
    writers: Writers,
    instance: String,
) -> ServiceArgs {
    let saga_config = Arc::new(config.saga.clone());
    let saga_instance = instance.clone();
    let batch_max = config.database.batch_max;
    // One loader for the process's sagas, so the sagas starting on every partition share sets.
    let loads = Batched::start("saga loads", pool, SagaLoads, batch_max);
    let router: RouterFactory = Arc::new(move |supervisor: ActorCell| {
        Arc::new(SagaRouter {
            instance: saga_instance.clone(),
            config: saga_config.clone(),
            steps: SagaSteps::start(writers.get(Schema::Orders).clone(), batch_max),
            loads: loads.clone(),
            supervisor,
        }) as Arc<dyn Router>
    });
    ServiceArgs {
        config,
        producer,
        name: "order",
        // Commands to the saga (cancel requests, timeouts) and the replies of the services it
        // commands; not its own events on order.events (the intake takes its first step).
        topics: vec![
            topics::ORDER_COMMANDS,
            topics::INVENTORY_EVENTS,
            topics::PAYMENT_EVENTS,
        ],
        router,
        instance,
    }
}

/// Routes order events to the saga of their order, starting it when needed.
pub struct SagaRouter {
    instance: String,
    config: Arc<SagaConfig>,
    steps: SagaSteps,
    loads: Batched<SagaLoads>,
    supervisor: ActorCell,
}

impl SagaRouter {
    pub fn saga_name(instance: &str, order_id: Uuid) -> String {
        format!("{instance}/order-saga/{order_id}")
    }

    async fn saga(&self, order_id: Uuid) -> Result<ActorRef<SagaMsg>, HandleError> {
        let args = || SagaArgs {
            order_id,
            config: self.config.clone(),
            steps: self.steps.clone(),
            loads: self.loads.clone(),
        };
        find_or_spawn(
            Self::saga_name(&self.instance, order_id),
            OrderSaga,
            args,
            self.supervisor.clone(),
        )
        .await
    }
}

#[async_trait]
impl Router for SagaRouter {
    async fn route(&self, record: Arc<Record>) -> Result<Routed, HandleError> {
        if record
            .header("message-type")
            .is_some_and(|kind| super::saga::NOT_WAITED_FOR.contains(&kind))
        {
            // An announcement the saga never waits for: no saga is woken for it.
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(crate::actors::bridge::Handled::Ignored));
            return Ok(Routed::at_once(rx));
        }
        let envelope = record.envelope()?;
        let saga = self.saga(envelope.order_id.as_uuid()).await?;
        let (tx, rx) = oneshot::channel();
        saga.cast(SagaMsg::Deliver {
            envelope,
            traceparent: record.header("traceparent").map(str::to_owned),
            reply: tx.into(),
        })
        .map_err(|_| HandleError::Transient("saga stopped before the record arrived".into()))?;
        Ok(Routed::at_once(rx))
    }
}
