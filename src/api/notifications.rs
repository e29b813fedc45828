//! `GET /v1/orders/{id}/notifications`: the notification service's log of an order — each
//! customer mail with its template, recipient, status (`SENT`, `SKIPPED`, `FAILING`),
//! attempts and last error.

use uuid::Uuid;
use warp::{Filter, Rejection, Reply};

use super::problem::ApiError;
use super::{ApiContext, with_ctx};
use crate::infra::db::notifications as repo;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "orders" / String / "notifications")
        .and(warp::get())
        .and(with_ctx(ctx))
        .and_then(list)
        .boxed()
}

async fn list(id: String, ctx: ApiContext) -> Result<warp::reply::Response, Rejection> {
    let uuid = Uuid::try_parse(&id)
        .map_err(|_| warp::reject::custom(ApiError::InvalidOrderId(id.clone())))?;
    let items = repo::for_order(&ctx.pool, uuid)
        .await
        .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?;
    Ok(warp::reply::json(&serde_json::json!({ "order_id": uuid, "items": items })).into_response())
}
