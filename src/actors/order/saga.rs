//! The order saga actor: one per in-flight order. It applies the pure transition of
//! `domain::saga` to each event, persists the new state with the inbox row and a journal entry
//! in one transaction, and passivates when idle (it is rehydrated from PostgreSQL on its next
//! message).

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sqlx::PgPool;
use uuid::Uuid;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::domain::envelope::{Envelope, OrderPlaced};
use crate::domain::saga::{self, SagaEvent, SagaStatus};
use crate::infra::db::orders::{self as repo, SagaStep, StepOutcome};
use crate::metrics as m;

/// The inbox consumer name of the order saga.
pub const CONSUMER: &str = "order-saga";

pub enum SagaMsg {
    Deliver {
        envelope: Envelope,
        trace_id: Option<String>,
        reply: RpcReplyPort<HandleResult>,
    },
    IdleCheck,
}

pub struct SagaArgs {
    pub order_id: Uuid,
    pub pool: PgPool,
    pub idle_timeout: Duration,
}

pub struct SagaState {
    order_id: Uuid,
    pool: PgPool,
    idle_timeout: Duration,
    /// `None` until the persisted state is loaded (lazily, so spawning never waits on I/O).
    status: Option<SagaStatus>,
    last_activity: Instant,
}

pub struct OrderSaga;

impl Actor for OrderSaga {
    type Msg = SagaMsg;
    type State = SagaState;
    type Arguments = SagaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SagaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::gauge!(m::SAGA_ACTIVE).increment(1.0);
        let check_every = (args.idle_timeout / 2).max(Duration::from_millis(10));
        myself.send_interval(check_every, || SagaMsg::IdleCheck);
        Ok(SagaState {
            order_id: args.order_id,
            pool: args.pool,
            idle_timeout: args.idle_timeout,
            status: None,
            last_activity: Instant::now(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!(m::SAGA_ACTIVE).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SagaMsg::Deliver {
                envelope,
                trace_id,
                reply,
            } => {
                state.last_activity = Instant::now();
                let result = state.apply(&envelope, trace_id.as_deref()).await;
                let outcome = match &result {
                    Ok(Handled::Applied) => "applied",
                    Ok(Handled::Duplicate) => "duplicate",
                    Err(HandleError::Poison(_)) => "poison",
                    Err(HandleError::Transient(_)) => "failed",
                };
                metrics::counter!(m::SAGA_EVENTS, "outcome" => outcome).increment(1);
                let _ = reply.send(result);
            }
            SagaMsg::IdleCheck => {
                if state.last_activity.elapsed() >= state.idle_timeout {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

impl SagaState {
    async fn apply(&mut self, envelope: &Envelope, trace_id: Option<&str>) -> HandleResult {
        let event = if envelope.is::<OrderPlaced>() {
            envelope
                .payload_as::<OrderPlaced>()
                .map_err(|e| HandleError::Poison(e.to_string()))?;
            SagaEvent::OrderPlaced
        } else {
            return Err(HandleError::Poison(format!(
                "the order saga does not handle {} messages",
                envelope.kind
            )));
        };
        let from = self.current_status().await?;
        let transition = saga::apply(from, &event);
        let step = SagaStep {
            consumer: CONSUMER,
            message_id: envelope.id,
            message_type: &envelope.kind,
            order_id: self.order_id,
            from,
            to: transition.status,
            trace_id,
        };
        match repo::record_saga_step(&self.pool, &step).await {
            Ok(StepOutcome::Applied) => {
                self.status = Some(transition.status);
                if transition.changed {
                    tracing::info!(
                        order_id = %self.order_id, message_id = %envelope.id,
                        from = from.as_str(), to = transition.status.as_str(), "saga transition"
                    );
                }
                Ok(Handled::Applied)
            }
            Ok(StepOutcome::Duplicate) => Ok(Handled::Duplicate),
            Err(e) => {
                // The cached status may be stale if the transaction's outcome is unknown.
                self.status = None;
                Err(HandleError::Transient(e.to_string()))
            }
        }
    }

    async fn current_status(&mut self) -> Result<SagaStatus, HandleError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let loaded = repo::load_saga(&self.pool, self.order_id)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?
            .map(|row| row.status)
            .unwrap_or(SagaStatus::New);
        self.status = Some(loaded);
        Ok(loaded)
    }
}
