//! The root supervisor: starts one outbox relay per schema of the selected services, the
//! services themselves and their helpers, restarts a child that fails (capped backoff, restart
//! budget), and stops them in order on shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use super::Service;
use super::hub::StatusHub;
use super::inventory::expiry::{ExpirySweeper, SweeperArgs};
use super::order::timers::{SagaTimers, TimerArgs};
use super::outbox::{OutboxRelay, RelayArgs, RelayMsg};
use super::service::{ServiceMsg, ServiceSupervisor};
use super::supervision::{Decision, Ended, RestartPolicy, ended};
use crate::config::Config;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::messaging::Schema;
use crate::infra::db::writer::Writers;
use crate::infra::outbox::OutboxTable;
use crate::infra::payment_provider::PaymentProvider;
use crate::infra::smtp::Mailer;
use crate::metrics as m;

/// A child of the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Child {
    Relay(SchemaKey),
    Service(Service),
    ReservationSweeper,
    SagaTimers,
    StatusHub,
}

/// `Schema` with an order, for the child map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SchemaKey {
    Orders,
    Inventory,
    Payment,
    Files,
}

impl SchemaKey {
    fn schema(self) -> Schema {
        match self {
            SchemaKey::Orders => Schema::Orders,
            SchemaKey::Inventory => Schema::Inventory,
            SchemaKey::Payment => Schema::Payment,
            SchemaKey::Files => Schema::Files,
        }
    }
}

impl Child {
    fn kind(&self) -> String {
        match self {
            Child::Relay(s) => format!("outbox-relay/{}", s.schema().name()),
            Child::Service(s) => format!("{s}-service"),
            Child::ReservationSweeper => "reservation-sweeper".into(),
            Child::SagaTimers => "saga-timers".into(),
            Child::StatusHub => "status-hub".into(),
        }
    }
}

pub enum RootMsg {
    Start(Child),
    /// Ordered shutdown: services drain and commit, then the relays flush.
    Shutdown(RpcReplyPort<()>),
}

pub struct RootArgs {
    pub config: Arc<Config>,
    pub services: Vec<Service>,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub writers: Writers,
    pub payment_provider: Arc<dyn PaymentProvider>,
    pub s3: aws_sdk_s3::Client,
    pub s3_breaker: Arc<CircuitBreaker>,
    pub mailer: Mailer,
    pub smtp_breaker: Arc<CircuitBreaker>,
    pub instance: String,
    /// The intake's open orders, which the status hub closes on their terminal events.
    pub open_orders: Arc<crate::admission::OpenOrders>,
}

pub struct RootState {
    args: RootArgs,
    children: BTreeMap<Child, ActorCell>,
    restarts: RestartPolicy,
    stopping: bool,
}

pub struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RootArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = RootState {
            restarts: RestartPolicy::new(&args.config.supervision),
            args,
            children: BTreeMap::new(),
            stopping: false,
        };
        for child in state.wanted() {
            state.start(&myself, child).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Start(child) if !state.stopping => state.start(&myself, child).await?,
            RootMsg::Start(_) => {}
            RootMsg::Shutdown(reply) => {
                state.stopping = true;
                state.shutdown().await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(Ended { cell, reason, .. }) = ended(event) else {
            return Ok(());
        };
        let Some(child) = state
            .children
            .iter()
            .find(|(_, c)| c.get_id() == cell.get_id())
            .map(|(k, _)| *k)
        else {
            return Ok(());
        };
        state.children.remove(&child);
        if state.stopping {
            return Ok(());
        }
        let kind = child.kind();
        metrics::counter!(m::ACTOR_RESTARTS, "kind" => kind.clone()).increment(1);
        match state.restarts.on_failure(Instant::now()) {
            Decision::RestartAfter(delay) => {
                tracing::error!(child = %kind, %reason, ?delay, "child stopped; restarting");
                myself.send_after(delay, move || RootMsg::Start(child));
                Ok(())
            }
            Decision::Escalate => {
                tracing::error!(child = %kind, %reason, "restart budget spent; stopping");
                Err(format!("{kind} keeps failing: {reason}").into())
            }
        }
    }
}

impl RootState {
    /// The children the selected services need, in start order.
    fn wanted(&self) -> Vec<Child> {
        let relays = self.args.config.outbox.relay_enabled;
        let mut wanted = Vec::new();
        for service in &self.args.services {
            match service {
                Service::Api => wanted.push(Child::StatusHub),
                Service::Order => {
                    if relays {
                        wanted.push(Child::Relay(SchemaKey::Orders));
                    }
                    wanted.push(Child::Service(Service::Order));
                    wanted.push(Child::SagaTimers);
                }
                Service::Inventory => {
                    if relays {
                        wanted.push(Child::Relay(SchemaKey::Inventory));
                    }
                    wanted.push(Child::Service(Service::Inventory));
                    wanted.push(Child::ReservationSweeper);
                }
                Service::Payment => {
                    if relays {
                        wanted.push(Child::Relay(SchemaKey::Payment));
                    }
                    wanted.push(Child::Service(Service::Payment));
                }
                Service::File => {
                    if relays {
                        wanted.push(Child::Relay(SchemaKey::Files));
                    }
                    wanted.push(Child::Service(Service::File));
                }
                Service::Notification => wanted.push(Child::Service(Service::Notification)),
            }
        }
        wanted
    }

    async fn start(
        &mut self,
        myself: &ActorRef<RootMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let supervisor = myself.get_cell();
        let a = &self.args;
        let name = format!("{}/{}", a.instance, child.kind());
        let cell = match child {
            Child::Relay(key) => {
                let schema = key.schema();
                let args = RelayArgs {
                    pool: a.pool.clone(),
                    producer: a.producer.clone(),
                    table: OutboxTable {
                        schema,
                        topic_prefix: a.config.kafka.topic_prefix.clone(),
                    },
                    config: a.config.outbox.clone(),
                    wake: a.writers.wakers().get(schema),
                    publish_timeout: Duration::from_millis(a.config.kafka.request_timeout_ms),
                };
                Actor::spawn_linked(Some(name), OutboxRelay, args, supervisor)
                    .await?
                    .0
                    .get_cell()
            }
            Child::Service(service) => {
                let args = match service {
                    Service::Order => super::order::router::service(
                        a.config.clone(),
                        a.producer.clone(),
                        a.pool.clone(),
                        a.writers.clone(),
                        a.instance.clone(),
                    ),
                    Service::Inventory => super::inventory::service(
                        a.config.clone(),
                        a.producer.clone(),
                        a.writers.clone(),
                        a.instance.clone(),
                    ),
                    Service::Payment => super::payment::service(
                        a.config.clone(),
                        a.producer.clone(),
                        a.pool.clone(),
                        a.payment_provider.clone(),
                        a.writers.clone(),
                        a.instance.clone(),
                    ),
                    Service::File => super::files::service(
                        a.config.clone(),
                        a.producer.clone(),
                        a.pool.clone(),
                        a.s3.clone(),
                        a.s3_breaker.clone(),
                        a.writers.clone(),
                        a.instance.clone(),
                    ),
                    Service::Notification => super::notifications::service(
                        a.config.clone(),
                        a.producer.clone(),
                        a.pool.clone(),
                        a.mailer.clone(),
                        a.smtp_breaker.clone(),
                        a.writers.clone(),
                        a.instance.clone(),
                    ),
                    Service::Api => return Ok(()),
                };
                Actor::spawn_linked(Some(name), ServiceSupervisor, args, supervisor)
                    .await?
                    .0
                    .get_cell()
            }
            Child::StatusHub => {
                let args = (a.config.clone(), a.open_orders.clone());
                Actor::spawn_linked(Some(name), StatusHub, args, supervisor)
                    .await?
                    .0
                    .get_cell()
            }
            Child::SagaTimers => {
                let args = TimerArgs {
                    interval: Duration::from_millis(a.config.saga.timer_interval_ms),
                    writers: a.writers.clone(),
                };
                Actor::spawn_linked(Some(name), SagaTimers, args, supervisor)
                    .await?
                    .0
                    .get_cell()
            }
            Child::ReservationSweeper => {
                let args = SweeperArgs {
                    interval: Duration::from_millis(a.config.inventory.expiry_interval_ms),
                    writers: a.writers.clone(),
                };
                Actor::spawn_linked(Some(name), ExpirySweeper, args, supervisor)
                    .await?
                    .0
                    .get_cell()
            }
        };
        self.children.insert(child, cell);
        tracing::info!(child = %child.kind(), "started");
        Ok(())
    }

    /// Services first (they drain and commit), then the rows published on commit settle,
    /// then the relays flush what is pending.
    async fn shutdown(&mut self) {
        let children = std::mem::take(&mut self.children);
        for (child, cell) in &children {
            if let Child::Service(_) = child {
                let service: ActorRef<ServiceMsg> = cell.clone().into();
                if ractor::call_t!(service, ServiceMsg::Shutdown, 30_000).is_err() {
                    tracing::warn!(child = %child.kind(), "service did not drain in time");
                }
            }
        }
        // Rows published on commit are deleted a moment after their acks: a flush before
        // that would publish them a second time, after the consumers stopped.
        if !self
            .args
            .writers
            .settle_published(Duration::from_secs(10))
            .await
        {
            tracing::warn!("rows published on commit not all deleted; the flush may repeat some");
        }
        for (child, cell) in &children {
            match child {
                Child::Relay(_) => {
                    let relay: ActorRef<RelayMsg> = cell.clone().into();
                    match ractor::call_t!(relay, RelayMsg::Flush, 30_000) {
                        Ok(n) => {
                            tracing::info!(child = %child.kind(), published = n, "outbox flushed")
                        }
                        Err(e) => {
                            tracing::warn!(child = %child.kind(), error = %e, "outbox flush did not finish")
                        }
                    }
                    cell.stop(Some("shutdown".into()));
                }
                Child::ReservationSweeper | Child::SagaTimers | Child::StatusHub => {
                    cell.stop(Some("shutdown".into()))
                }
                Child::Service(_) => {}
            }
        }
    }
}
