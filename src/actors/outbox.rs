//! The outbox relay actor: publishes committed outbox rows to Kafka. Woken by a writer (when
//! rows are not published on commit), it publishes everything pending; its poll publishes rows
//! older than `outbox.stale_after_ms` when writers publish on commit (everything otherwise), so
//! rows committed by a process that died, or whose publish failed, are published too.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::OutboxConfig;
use crate::infra::outbox::{self, OutboxTable};
use crate::metrics as m;

pub enum RelayMsg {
    /// Publish everything pending (woken by a commit).
    Pass,
    /// Publish what is pending for longer than the writers take to publish it (poll timer).
    Sweep,
    /// Publish everything pending, then reply (shutdown).
    Flush(RpcReplyPort<usize>),
}

pub struct RelayArgs {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub table: OutboxTable,
    pub config: OutboxConfig,
    pub wake: Arc<Notify>,
    pub publish_timeout: Duration,
}

pub struct RelayState {
    args: RelayArgs,
    waker: JoinHandle<()>,
    failures: u32,
}

pub struct OutboxRelay;

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RelayArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Notify keeps at most one permit, so a burst of commits becomes one or two passes.
        let wake = args.wake.clone();
        let poll = args.config.poll_interval();
        let gather = std::time::Duration::from_millis(args.config.batch_delay_ms);
        let me = myself.clone();
        let waker = tokio::spawn(async move {
            loop {
                let msg = match tokio::time::timeout(poll, wake.notified()).await {
                    Ok(()) => {
                        if !gather.is_zero() {
                            tokio::time::sleep(gather).await;
                        }
                        RelayMsg::Pass
                    }
                    Err(_) => RelayMsg::Sweep,
                };
                if me.cast(msg).is_err() {
                    break;
                }
            }
        });
        myself.cast(RelayMsg::Sweep)?;
        Ok(RelayState {
            args,
            waker,
            failures: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.waker.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RelayMsg::Pass => {
                state.drain(Duration::ZERO).await;
            }
            RelayMsg::Sweep => {
                let min_age = state.args.config.sweep_min_age();
                state.drain(min_age).await;
            }
            RelayMsg::Flush(reply) => {
                let n = state.drain(Duration::ZERO).await;
                let _ = reply.send(n);
            }
        }
        Ok(())
    }
}

impl RelayState {
    /// Publishes batches until none is full; returns how many rows went out. Failures are
    /// logged and counted; the rows stay pending and the next pass retries them.
    async fn drain(&mut self, min_age: Duration) -> usize {
        let schema = self.args.table.schema.name();
        let mut total = 0;
        loop {
            let pass = outbox::relay_once(
                &self.args.pool,
                &self.args.producer,
                &self.args.table,
                self.args.config.batch_size,
                min_age,
                self.args.publish_timeout,
            )
            .await;
            match pass {
                Ok(outcome) => {
                    if self.failures > 0 {
                        tracing::info!(schema, "outbox relay recovered");
                        self.failures = 0;
                    }
                    total += outcome.published;
                    metrics::counter!(m::OUTBOX_PUBLISHED, "schema" => schema, "via" => "relay")
                        .increment(outcome.published as u64);
                    if outcome.lock_busy || (outcome.published as i64) < self.args.config.batch_size
                    {
                        break;
                    }
                }
                Err(e) => {
                    self.failures += 1;
                    metrics::counter!(m::OUTBOX_PUBLISH_ERRORS, "schema" => schema, "via" => "relay").increment(1);
                    // Log the first failure of a streak and then every 20th, not every poll.
                    if self.failures == 1 || self.failures.is_multiple_of(20) {
                        tracing::warn!(schema, error = %e, failures = self.failures, "outbox publish failed; rows stay pending");
                    }
                    break;
                }
            }
        }
        total
    }
}
