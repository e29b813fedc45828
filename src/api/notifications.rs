//! `GET /v1/orders/{id}/notifications`: the notification service's log of an order — each
//! customer mail with its template, recipient, status (`SENT`, `SKIPPED`, `FAILING`),
//! attempts and last error.

use warp::{Filter, Rejection, Reply};

use super::guard::{owned_order, require};
use super::problem::{ApiError, Problem};
use super::{ApiContext, with_ctx};
use crate::auth::{Principal, scopes};
use crate::infra::db::notifications as repo;
use crate::infra::db::notifications::LogEntry;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "orders" / String / "notifications")
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(with_ctx(ctx))
        .and_then(list)
        .boxed()
}

/// The notification service's log of the order's mails.
#[utoipa::path(get, path = "/v1/orders/{order_id}/notifications", tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The mails, oldest first", body = NotificationList),
        (status = 400, description = "invalid_order_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "order_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn list(
    id: String,
    principal: Principal,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = owned_order(&ctx, &principal, &id).await?;
    let items = repo::for_order(&ctx.pool, uuid)
        .await
        .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?;
    Ok(warp::reply::json(&NotificationList {
        order_id: uuid,
        items,
    })
    .into_response())
}

/// An order's notifications, oldest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NotificationList {
    pub order_id: uuid::Uuid,
    pub items: Vec<LogEntry>,
}
