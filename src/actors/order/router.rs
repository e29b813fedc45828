//! Routes order events to the saga of their order, starting the saga when needed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorRef};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::saga::{OrderSaga, SagaArgs, SagaMsg};
use crate::actors::bridge::{HandleError, HandleResult, Record, Router};
use crate::actors::service::{RouterFactory, ServiceArgs};
use crate::config::Config;
use crate::domain::envelope::{Envelope, topics};
use crate::telemetry::TraceContext;

/// The order service: consumes `order.events` and routes each to its order's saga.
pub fn service(config: Arc<Config>, pool: PgPool, instance: String) -> ServiceArgs {
    let idle_timeout = Duration::from_millis(config.saga.idle_timeout_ms);
    let saga_instance = instance.clone();
    let router: RouterFactory = Arc::new(move |supervisor: ActorCell| {
        Arc::new(SagaRouter {
            instance: saga_instance.clone(),
            pool: pool.clone(),
            idle_timeout,
            supervisor,
        }) as Arc<dyn Router>
    });
    ServiceArgs {
        config,
        name: "order",
        topics: vec![topics::ORDER_EVENTS],
        router,
        instance,
    }
}

/// Routes order events to the saga of their order, starting it when needed.
pub struct SagaRouter {
    instance: String,
    pool: PgPool,
    idle_timeout: Duration,
    supervisor: ActorCell,
}

impl SagaRouter {
    pub fn saga_name(instance: &str, order_id: Uuid) -> String {
        format!("{instance}/order-saga/{order_id}")
    }

    async fn saga(&self, order_id: Uuid) -> Result<ActorRef<SagaMsg>, HandleError> {
        let name = Self::saga_name(&self.instance, order_id);
        if let Some(saga) = ActorRef::<SagaMsg>::where_is(name.clone()) {
            return Ok(saga);
        }
        let args = SagaArgs {
            order_id,
            pool: self.pool.clone(),
            idle_timeout: self.idle_timeout,
        };
        match Actor::spawn_linked(Some(name.clone()), OrderSaga, args, self.supervisor.clone())
            .await
        {
            Ok((saga, _)) => Ok(saga),
            // Registered between the lookup and the spawn, or still stopping: look again.
            Err(e) => ActorRef::<SagaMsg>::where_is(name)
                .ok_or_else(|| HandleError::Transient(format!("cannot start saga: {e}"))),
        }
    }
}

#[async_trait]
impl Router for SagaRouter {
    async fn route(
        &self,
        record: Arc<Record>,
    ) -> Result<oneshot::Receiver<HandleResult>, HandleError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| HandleError::Poison("record has no payload".into()))?;
        let envelope = Envelope::decode(payload).map_err(|e| HandleError::Poison(e.to_string()))?;
        let saga = self.saga(envelope.order_id.as_uuid()).await?;
        let trace_id = record
            .header("traceparent")
            .and_then(TraceContext::parse)
            .map(|t| t.trace_id_hex());
        let (tx, rx) = oneshot::channel();
        saga.cast(SagaMsg::Deliver {
            envelope,
            trace_id,
            reply: tx.into(),
        })
        .map_err(|_| HandleError::Transient("saga stopped before the record arrived".into()))?;
        Ok(rx)
    }
}
