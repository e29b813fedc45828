//! `GET /v1/orders/{id}/notifications`: the notification service's log of an order — each
//! customer mail with its template, recipient, status (`SENT`, `SKIPPED`, `FAILING`),
//! attempts and last error.

use warp::{Filter, Rejection, Reply};

use super::guard::{owned_order, require};
use super::problem::ApiError;
use super::{ApiContext, with_ctx};
use crate::auth::{Principal, scopes};
use crate::infra::db::notifications as repo;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "orders" / String / "notifications")
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(with_ctx(ctx))
        .and_then(list)
        .boxed()
}

async fn list(
    id: String,
    principal: Principal,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = owned_order(&ctx, &principal, &id).await?;
    let items = repo::for_order(&ctx.pool, uuid)
        .await
        .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?;
    Ok(warp::reply::json(&serde_json::json!({ "order_id": uuid, "items": items })).into_response())
}
