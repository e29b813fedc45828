//! `GET /v1/orders/{id}/events`: a websocket that sends the order's current state, then every
//! event of its saga as it happens, and closes after the terminal one. Events come from the
//! status hub, which reads Kafka, so the order may be handled by any process.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::{SinkExt, StreamExt};
use ractor::ActorRef;
use tokio::sync::mpsc;
use uuid::Uuid;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::{Filter, Rejection, Reply};

use super::guard::{owned_order, require};
use super::problem::{ApiError, Problem};
use super::{ApiContext, with_ctx};
use crate::actors::hub::{HubMsg, SUBSCRIBER_BUFFER, StatusEvent};
use crate::auth::{Principal, scopes};
use crate::infra::db::orders as repo;

static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "orders" / String / "events")
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        // A request that is not a websocket upgrade is told so (426), not a 5xx.
        .and(warp::ws().or_else(|_| async {
            Err::<(Ws,), _>(warp::reject::custom(ApiError::UpgradeRequired))
        }))
        .and(with_ctx(ctx))
        .and_then(upgrade)
        .boxed()
}

fn hub(ctx: &ApiContext) -> Option<ActorRef<HubMsg>> {
    ActorRef::<HubMsg>::where_is(format!("{}/status-hub", ctx.instance))
}

/// A websocket of the order's status: the current state, then every saga event as JSON text
/// messages; closed after the terminal one.
#[utoipa::path(get, path = "/v1/orders/{order_id}/events", tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 101, description = "Switching to the websocket protocol"),
        (status = 426, description = "websocket_upgrade_required: not a websocket request", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "invalid_order_id (or not a websocket upgrade)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "order_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn upgrade(
    id: String,
    principal: Principal,
    ws: Ws,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    // Refuse unknown (or someone else's) orders before upgrading, with a problem response.
    let order_id = owned_order(&ctx, &principal, &id).await?;
    if principal.is_admin()
        && repo::owner_of(&ctx.pool, order_id)
            .await
            .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?
            .is_none()
    {
        return Err(warp::reject::custom(ApiError::OrderNotFound(
            order_id.to_string(),
        )));
    }
    let hub = hub(&ctx).ok_or_else(|| {
        warp::reject::custom(ApiError::Unavailable("status hub not running".into()))
    })?;
    Ok(ws
        .on_upgrade(move |socket| stream(socket, ctx, hub, order_id))
        .into_response())
}

async fn stream(mut socket: WebSocket, ctx: ApiContext, hub: ActorRef<HubMsg>, order_id: Uuid) {
    let id = NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<StatusEvent>(SUBSCRIBER_BUFFER);
    // Subscribe before reading the state, so nothing between the two is missed.
    if hub
        .cast(HubMsg::Subscribe {
            order_id,
            id,
            sender: tx,
        })
        .is_err()
    {
        let _ = socket
            .send(Message::close_with(1011u16, "status hub unavailable"))
            .await;
        return;
    }
    let result = async {
        let order = repo::get_order(&ctx.pool, order_id)
            .await
            .map_err(|e| e.to_string())?;
        let Some(order) = order else { return Ok(()) };
        let state = serde_json::json!({"type": "state", "order": order});
        socket
            .send(Message::text(state.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        if order.status.is_terminal() {
            return Ok(());
        }
        loop {
            tokio::select! {
                event = rx.recv() => {
                    // `None`: the hub dropped us as too slow, or stopped; the client reconnects.
                    let Some(event) = event else { return Ok(()) };
                    let text = serde_json::to_string(&event).map_err(|e| e.to_string())?;
                    socket.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                    if event.is_terminal() {
                        return Ok(());
                    }
                }
                incoming = socket.next() => match incoming {
                    Some(Ok(m)) if m.is_close() => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Ok(()),
                },
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%order_id, error = %e, "order event stream ended with an error");
    }
    let _ = hub.cast(HubMsg::Unsubscribe { order_id, id });
    let _ = socket.send(Message::close()).await;
    let _ = socket.close().await;
}
