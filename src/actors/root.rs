//! The root supervisor: starts the outbox relay and the selected services, restarts a child
//! that fails (capped backoff, restart budget), and stops them in order on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::Notify;

use super::Service;
use super::outbox::{OutboxRelay, RelayArgs, RelayMsg};
use super::service::{ServiceMsg, ServiceSupervisor};
use super::supervision::{Decision, RestartPolicy};
use crate::config::Config;
use crate::infra::outbox::{OutboxSchema, OutboxTable};
use crate::metrics as m;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    Relay,
    OrderService,
}

impl Child {
    fn kind(&self) -> &'static str {
        match self {
            Child::Relay => "outbox-relay",
            Child::OrderService => "order-service",
        }
    }
}

pub enum RootMsg {
    Start(Child),
    /// Ordered shutdown: services drain and commit, then the relay flushes.
    Shutdown(RpcReplyPort<()>),
    /// Which children run (tests and `/health`).
    Children(RpcReplyPort<Vec<Child>>),
}

pub struct RootArgs {
    pub config: Arc<Config>,
    pub services: Vec<Service>,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub outbox_wake: Arc<Notify>,
    pub instance: String,
}

pub struct RootState {
    args: RootArgs,
    relay: Option<ActorRef<RelayMsg>>,
    order: Option<ActorRef<ServiceMsg>>,
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
            relay: None,
            order: None,
            stopping: false,
        };
        if state.args.services.contains(&Service::Order) {
            if state.args.config.outbox.relay_enabled {
                state.start(&myself, Child::Relay).await?;
            }
            state.start(&myself, Child::OrderService).await?;
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
                if let Some(order) = state.order.take() {
                    let _ = ractor::call_t!(order, ServiceMsg::Shutdown, 30_000);
                }
                if let Some(relay) = state.relay.take() {
                    match ractor::call_t!(relay, RelayMsg::Flush, 30_000) {
                        Ok(n) => tracing::info!(published = n, "outbox flushed"),
                        Err(e) => tracing::warn!(error = %e, "outbox flush did not finish"),
                    }
                    relay.stop(Some("shutdown".into()));
                }
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
            RootMsg::Children(reply) => {
                let mut children = Vec::new();
                if state.relay.is_some() {
                    children.push(Child::Relay);
                }
                if state.order.is_some() {
                    children.push(Child::OrderService);
                }
                let _ = reply.send(children);
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
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) if !state.stopping => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let child = if state
            .relay
            .as_ref()
            .is_some_and(|r| r.get_id() == cell.get_id())
        {
            state.relay = None;
            Child::Relay
        } else if state
            .order
            .as_ref()
            .is_some_and(|o| o.get_id() == cell.get_id())
        {
            state.order = None;
            Child::OrderService
        } else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        metrics::counter!(m::ACTOR_RESTARTS, "kind" => child.kind()).increment(1);
        match state.restarts.on_failure(Instant::now()) {
            Decision::RestartAfter(delay) => {
                tracing::error!(child = child.kind(), %reason, ?delay, "child stopped; restarting");
                myself.send_after(delay, move || RootMsg::Start(child));
                Ok(())
            }
            Decision::Escalate => {
                tracing::error!(child = child.kind(), %reason, "restart budget spent; stopping");
                Err(format!("{} keeps failing: {reason}", child.kind()).into())
            }
        }
    }
}

impl RootState {
    async fn start(
        &mut self,
        myself: &ActorRef<RootMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let cell = myself.get_cell();
        let instance = &self.args.instance;
        match child {
            Child::Relay => {
                let args = RelayArgs {
                    pool: self.args.pool.clone(),
                    producer: self.args.producer.clone(),
                    table: OutboxTable {
                        schema: OutboxSchema::Orders,
                        topic_prefix: self.args.config.kafka.topic_prefix.clone(),
                    },
                    config: self.args.config.outbox.clone(),
                    wake: self.args.outbox_wake.clone(),
                    publish_timeout: Duration::from_millis(
                        self.args.config.kafka.request_timeout_ms,
                    ),
                };
                let name = format!("{instance}/outbox-relay/orders");
                let (relay, _) = Actor::spawn_linked(Some(name), OutboxRelay, args, cell).await?;
                self.relay = Some(relay);
            }
            Child::OrderService => {
                let args = super::order::router::service(
                    self.args.config.clone(),
                    self.args.pool.clone(),
                    instance.clone(),
                );
                let name = format!("{instance}/order-service");
                let (order, _) =
                    Actor::spawn_linked(Some(name), ServiceSupervisor, args, cell).await?;
                self.order = Some(order);
            }
        }
        tracing::info!(child = child.kind(), "started");
        Ok(())
    }
}
