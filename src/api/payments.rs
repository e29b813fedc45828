//! `GET /v1/orders/{id}/payment`: the payment service's record of an order's payment.

use warp::{Filter, Rejection, Reply};

use super::guard::{owned_order, require};
use super::problem::ApiError;
use super::{ApiContext, with_ctx};
use crate::auth::{Principal, scopes};
use crate::infra::db::payment as repo;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "orders" / String / "payment")
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(with_ctx(ctx))
        .and_then(get_payment)
        .boxed()
}

async fn get_payment(
    id: String,
    principal: Principal,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = owned_order(&ctx, &principal, &id).await?;
    match repo::get_payment(&ctx.pool, uuid)
        .await
        .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?
    {
        Some(payment) => Ok(warp::reply::json(&payment).into_response()),
        None => Err(warp::reject::custom(ApiError::PaymentNotFound(
            uuid.to_string(),
        ))),
    }
}
