//! The saga timer sweeper: saga deadlines live in `orders.saga_state`, so they survive restarts
//! and passivation. Every tick this actor announces the passed ones as `SagaTimeout` messages on
//! `order.commands`, where the partition's owner delivers them to the saga like any other event.
//! Several processes may sweep at once (rows are claimed with `SKIP LOCKED`, once each).

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::infra::db::messaging::Schema;
use crate::infra::db::orders as repo;
use crate::infra::db::writer::Writers;

pub enum TimerMsg {
    Sweep,
}

pub struct TimerArgs {
    pub interval: Duration,
    pub writers: Writers,
}

pub struct SagaTimers;

impl Actor for SagaTimers {
    type Msg = TimerMsg;
    type State = TimerArgs;
    type Arguments = TimerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TimerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.interval, || TimerMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _msg: TimerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match repo::announce_due_timeouts(state.writers.get(Schema::Orders), 500).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(timeouts = n, "saga deadlines passed");
            }
            Err(e) => tracing::warn!(error = %e, "saga timer sweep failed; retrying next tick"),
        }
        Ok(())
    }
}
