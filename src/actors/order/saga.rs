//! The order saga actor: one per in-flight order. It turns each message into a
//! `domain::saga` event, applies the pure transition, and persists the new state with its
//! journal entry (which also deduplicates redeliveries), outbox commands and deadline in one
//! transaction. It rehydrates from PostgreSQL when (re)started, stops at a terminal state, and
//! passivates when idle — its deadline lives in the database, where the timer sweeper finds
//! it. The first step (after `OrderPlaced`) is taken by the order intake in the order's
//! transaction ([`first_step`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

use crate::actors::bridge::{HandleError, HandleResult, Handled};
use crate::config::SagaConfig;
use crate::domain::envelope::{
    CancelRequested, Envelope, OrderCancelled, OrderConfirmed, OrderPlaced, Payload,
    PaymentAuthorized, PaymentDeclined, SagaTimeout, StockRejected, StockReleased, StockReserved,
};
use crate::domain::ids::OrderId;
use crate::domain::order::DEFAULT_CARD_TOKEN;
use crate::domain::saga::{self, Deadline, Outcome, SagaCommand, SagaEvent, SagaState, SagaStatus};
use crate::infra::db::batched::Batched;
use crate::infra::db::messaging::OutboxMessage;
use crate::infra::db::orders::{SagaLoads, SagaStep, SagaSteps, StepOutcome};
use crate::metrics as m;

pub enum SagaMsg {
    Deliver {
        envelope: Envelope,
        traceparent: Option<String>,
        reply: RpcReplyPort<HandleResult>,
    },
    IdleCheck,
}

pub struct SagaArgs {
    pub order_id: Uuid,
    pub config: Arc<SagaConfig>,
    /// Where the saga's steps are written (in groups, on the orders writer).
    pub steps: SagaSteps,
    /// Where the saga's state is read when it starts (with the other sagas starting then).
    pub loads: Batched<SagaLoads>,
}

pub struct SagaActorState {
    args: SagaArgs,
    /// `None` until loaded (lazily, so that spawning never waits on I/O) or after a failed
    /// write whose outcome is unknown.
    loaded: Option<(SagaState, Option<i32>)>,
    last_activity: Instant,
    /// The task that sends [`SagaMsg::IdleCheck`]; aborted when the saga stops.
    idle_check: tokio::task::JoinHandle<()>,
}

pub struct OrderSaga;

impl Actor for OrderSaga {
    type Msg = SagaMsg;
    type State = SagaActorState;
    type Arguments = SagaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SagaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::gauge!(m::SAGA_ACTIVE).increment(1.0);
        let idle = Duration::from_millis(args.config.idle_timeout_ms);
        let idle_check = myself.send_interval((idle / 2).max(Duration::from_millis(10)), || {
            SagaMsg::IdleCheck
        });
        Ok(SagaActorState {
            args,
            loaded: None,
            last_activity: Instant::now(),
            idle_check,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!(m::SAGA_ACTIVE).decrement(1.0);
        // The interval task holds the actor's cell (its mailboxes) until its next tick, up to
        // half the idle timeout after the stop: at 1,500 orders/s that kept ~20,000 stopped
        // sagas' memory alive.
        state.idle_check.abort();
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
                traceparent,
                reply,
            } => {
                state.last_activity = Instant::now();
                let result = state.handle(&envelope, traceparent).await;
                let outcome = match &result {
                    Ok(Handled::Applied) => "applied",
                    Ok(Handled::Duplicate) => "duplicate",
                    Ok(Handled::Ignored) => "ignored",
                    Err(HandleError::Poison(_)) => "poison",
                    Err(HandleError::Transient(_) | HandleError::Unavailable(_)) => "failed",
                };
                metrics::counter!(m::SAGA_EVENTS, "outcome" => outcome).increment(1);
                let _ = reply.send(result);
                if state.is_terminal() {
                    myself.stop(Some("terminal".into()));
                } else if state.loaded.is_none() {
                    // Nothing was loaded (an announcement after the end, or a failed load):
                    // nothing to keep in memory.
                    myself.stop(Some("nothing loaded".into()));
                }
            }
            SagaMsg::IdleCheck => {
                let idle = Duration::from_millis(state.args.config.idle_timeout_ms);
                if state.last_activity.elapsed() >= idle {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

/// What a message means to the saga.
enum Meaning {
    Event(SagaEvent),
    /// A timeout announced for a version the saga has moved past, or a message the saga
    /// publishes itself or does not wait for.
    Nothing,
}

/// Messages the saga publishes itself or never waits for: they mean nothing in any state, so
/// the saga does not even load its state for them. `OrderPlaced` is one of them: the intake
/// takes the saga's first step in the order's own transaction ([`first_step`]).
pub(crate) const NOT_WAITED_FOR: [&str; 5] = [
    OrderPlaced::TYPE,
    OrderConfirmed::TYPE,
    OrderCancelled::TYPE,
    crate::domain::envelope::StockCommitted::TYPE,
    crate::domain::envelope::PaymentRefunded::TYPE,
];

fn decode<P: Payload>(envelope: &Envelope) -> Result<P, HandleError> {
    envelope
        .payload_as::<P>()
        .map_err(|e| HandleError::Poison(e.to_string()))
}

fn meaning(envelope: &Envelope, version: Option<i32>) -> Result<Meaning, HandleError> {
    let kind = envelope.kind.as_str();
    let event = match kind {
        k if k == StockReserved::TYPE => {
            let p: StockReserved = decode(envelope)?;
            SagaEvent::StockReserved {
                total_minor: p.total_minor,
                lines: p.lines,
            }
        }
        k if k == StockRejected::TYPE => {
            let p: StockRejected = decode(envelope)?;
            let lines: Vec<String> = p
                .lines
                .iter()
                .map(|l| format!("{} {}", l.sku, l.reason.as_str()))
                .collect();
            SagaEvent::StockRejected {
                reason: format!("stock_rejected: {}", lines.join(", ")),
            }
        }
        k if k == StockReleased::TYPE => {
            decode::<StockReleased>(envelope)?;
            SagaEvent::StockReleased
        }
        k if k == PaymentAuthorized::TYPE => {
            decode::<PaymentAuthorized>(envelope)?;
            SagaEvent::PaymentAuthorized
        }
        k if k == PaymentDeclined::TYPE => SagaEvent::PaymentDeclined {
            reason: decode::<PaymentDeclined>(envelope)?.reason,
        },
        k if k == CancelRequested::TYPE => SagaEvent::CancelRequested {
            reason: decode::<CancelRequested>(envelope)?.reason,
        },
        k if k == SagaTimeout::TYPE => {
            let p: SagaTimeout = decode(envelope)?;
            let status = SagaStatus::parse(&p.status)
                .ok_or_else(|| HandleError::Poison(format!("unknown saga status {}", p.status)))?;
            if version != Some(p.version) {
                return Ok(Meaning::Nothing);
            }
            SagaEvent::TimedOut { status }
        }
        k if NOT_WAITED_FOR.contains(&k) => return Ok(Meaning::Nothing),
        other => {
            return Err(HandleError::Poison(format!(
                "the order saga does not handle {other} messages"
            )));
        }
    };
    Ok(Meaning::Event(event))
}

impl SagaActorState {
    fn is_terminal(&self) -> bool {
        self.loaded
            .as_ref()
            .is_some_and(|(s, _)| s.status.is_terminal())
    }

    async fn load(&mut self) -> Result<(SagaState, Option<i32>), HandleError> {
        if let Some(loaded) = &self.loaded {
            return Ok(loaded.clone());
        }
        let row = self
            .args
            .loads
            .submit(self.args.order_id)
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        let loaded = match row {
            Some(row) => (row.state, Some(row.version)),
            None => (SagaState::new(), None),
        };
        self.loaded = Some(loaded.clone());
        Ok(loaded)
    }

    async fn handle(&mut self, envelope: &Envelope, traceparent: Option<String>) -> HandleResult {
        if NOT_WAITED_FOR.contains(&envelope.kind.as_str()) {
            return Ok(Handled::Ignored);
        }
        let (state, version) = self.load().await?;
        let event = match meaning(envelope, version)? {
            Meaning::Event(e) => e,
            Meaning::Nothing => return Ok(Handled::Ignored),
        };
        let transition = saga::apply(&state, &event);
        if !transition.changed {
            return Ok(Handled::Ignored);
        }
        let order_id = OrderId::from_uuid(self.args.order_id);
        let envelopes = transition.command_envelopes(order_id, Utc::now());
        let messages = envelopes
            .iter()
            .map(|(topic, env)| OutboxMessage {
                topic,
                envelope: env,
                traceparent: traceparent.clone(),
            })
            .collect();
        let outcome = transition.commands.iter().find_map(|c| match c {
            SagaCommand::Complete(o) => Some(o),
            _ => None,
        });
        let trace_id = traceparent
            .as_deref()
            .and_then(crate::telemetry::TraceContext::parse)
            .map(|t| t.trace_id_hex());
        let step = SagaStep {
            message_id: envelope.id,
            message_type: &envelope.kind,
            order_id: self.args.order_id,
            expected_version: version,
            from: state.status,
            to: &transition.state,
            deadline: transition
                .deadline
                .map(|d| Utc::now() + deadline_length(&self.args.config, d)),
            trace_id: trace_id.as_deref(),
            messages,
            order_update: outcome.map(|o| match o {
                Outcome::Confirmed { .. } => (o.order_status(), None),
                Outcome::Cancelled { reason } => (o.order_status(), Some(reason.as_str())),
            }),
        };
        match self.args.steps.record(&step).await {
            Ok(StepOutcome::Applied { version }) => {
                self.loaded = Some((transition.state.clone(), Some(version)));
                tracing::debug!(
                    order_id = %self.args.order_id, message = %envelope.kind,
                    from = state.status.as_str(), to = transition.state.status.as_str(),
                    "saga transition"
                );
                Ok(Handled::Applied)
            }
            Ok(StepOutcome::Duplicate) => {
                // The state this was computed from may have been assumed: read it next time.
                self.loaded = None;
                Ok(Handled::Duplicate)
            }
            Ok(StepOutcome::Conflict) => {
                self.loaded = None;
                Err(HandleError::Transient(
                    "saga state changed underneath; reloading".into(),
                ))
            }
            Err(e) => {
                self.loaded = None;
                Err(HandleError::Transient(e.to_string()))
            }
        }
    }
}

/// How long the saga waits in the step a deadline guards.
fn deadline_length(c: &SagaConfig, d: Deadline) -> chrono::Duration {
    let ms = match d {
        Deadline::Stock => c.stock_timeout_ms,
        Deadline::Payment => c.payment_timeout_ms,
        Deadline::Release => c.release_timeout_ms,
    };
    chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The saga's first step, which the order intake writes in the order's own transaction: the
/// state after `OrderPlaced` (RESERVING), its deadline and its command (`ReserveStock`). It is
/// the pure transition the saga would take, so the saga never needs to see `OrderPlaced`.
pub struct FirstStep {
    pub state: SagaState,
    pub deadline: Option<DateTime<Utc>>,
    pub commands: Vec<(&'static str, Envelope)>,
}

pub fn first_step(
    order: OrderId,
    placed: &OrderPlaced,
    config: &SagaConfig,
    now: DateTime<Utc>,
) -> FirstStep {
    let event = SagaEvent::OrderPlaced {
        customer_id: placed.customer_id.clone(),
        currency: placed.currency,
        lines: placed.lines.clone(),
        card_token: placed
            .card_token
            .clone()
            .unwrap_or_else(|| DEFAULT_CARD_TOKEN.to_owned()),
    };
    let transition = saga::apply(&SagaState::new(), &event);
    FirstStep {
        deadline: transition
            .deadline
            .map(|d| now + deadline_length(config, d)),
        commands: transition.command_envelopes(order, now),
        state: transition.state,
    }
}
