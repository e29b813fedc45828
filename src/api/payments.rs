//! `GET /v1/orders/{id}/payment`: the payment service's record of an order's payment.

use warp::{Filter, Rejection, Reply};

use super::guard::{owned_order, require};
use super::problem::{ApiError, Problem};
use super::{ApiContext, with_ctx};
use crate::auth::{Principal, scopes};
use crate::infra::db::payment as repo;
use crate::infra::db::payment::PaymentRecord;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("v1" / "orders" / String / "payment")
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(with_ctx(ctx))
        .and_then(get_payment)
        .boxed()
}

/// The payment service's record of the order's payment.
#[utoipa::path(get, path = "/v1/orders/{order_id}/payment", tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The payment", body = PaymentRecord),
        (status = 400, description = "invalid_order_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "order_not_found, payment_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn get_payment(
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
