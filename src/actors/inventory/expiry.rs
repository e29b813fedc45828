//! The reservation sweeper: releases reservations whose time ran out, so stock held by an
//! order that never completed returns to sale. Several processes may sweep at once (rows are
//! claimed with `SKIP LOCKED`).

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::infra::db::inventory as repo;
use crate::infra::db::messaging::Schema;
use crate::infra::db::writer::Writers;

pub enum SweepMsg {
    Sweep,
}

pub struct SweeperArgs {
    pub interval: Duration,
    /// The sweep runs as a job of the inventory writer.
    pub writers: Writers,
}

pub struct ExpirySweeper;

impl Actor for ExpirySweeper {
    type Msg = SweepMsg;
    type State = SweeperArgs;
    type Arguments = SweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SweeperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.interval, || SweepMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        _msg: SweepMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match repo::expire_due(state.writers.get(Schema::Inventory), 500).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(released = n, "expired reservations released");
            }
            Err(e) => tracing::warn!(error = %e, "reservation sweep failed; retrying next tick"),
        }
        Ok(())
    }
}
