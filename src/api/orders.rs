//! `/v1/orders`: place an order (stored with its `OrderPlaced` outbox row and its saga's first
//! step in one transaction), read one, and list them with cursor pagination.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::guard::{owned_order, require};
use super::idempotency::{self, Begin};
use super::problem::{ApiError, Problem};
use super::{ApiContext, cached_json, json_bytes, with_ctx};
use crate::actors::order::saga;
use crate::auth::{Principal, scopes};
use crate::domain::envelope::{Envelope, OrderPlaced, topics};
use crate::domain::ids::OrderId;
use crate::domain::order::{OrderStatus, PlaceOrder};
use crate::infra::cache;
use crate::infra::db::messaging::Schema;
use crate::infra::db::orders::{
    self as repo, CancelError, OrderFilter, OrderRecord, OutboxMessage,
};
use crate::telemetry::TraceContext;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let limit = ctx.config.http.body_limit_bytes;
    let place = warp::path!("v1" / "orders")
        .and(warp::post())
        .and(require(&ctx, scopes::ORDERS_WRITE))
        .and(with_ctx(ctx.clone()))
        .and(super::idempotency::key())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("traceparent"))
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .and_then(place_order);
    let get = warp::path!("v1" / "orders" / String)
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(with_ctx(ctx.clone()))
        .and_then(get_order);
    let cancel = warp::path!("v1" / "orders" / String / "cancel")
        .and(warp::post())
        .and(require(&ctx, scopes::ORDERS_WRITE))
        .and(with_ctx(ctx.clone()))
        .and(warp::header::optional::<String>("traceparent"))
        .and_then(cancel_order);
    let list = warp::path!("v1" / "orders")
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(with_ctx(ctx))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(list_orders);
    place
        .or(get)
        .unify()
        .or(cancel)
        .unify()
        .or(list)
        .unify()
        .boxed()
}

fn reject(e: ApiError) -> Rejection {
    warp::reject::custom(e)
}

fn unavailable(e: impl std::fmt::Display) -> Rejection {
    reject(ApiError::Unavailable(e.to_string()))
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .map(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

/// Place an order. It is stored with its `OrderPlaced` message in one transaction and answered
/// at once; the saga then reserves stock, takes the payment and ends CONFIRMED or CANCELLED.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = PlaceOrder,
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retry-safe key, 1-255 visible ASCII; the same key and body answer the first response again"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue"),
    ),
    responses(
        (status = 201, description = "Accepted (PENDING); `Idempotent-Replayed: true` on a replay", body = OrderRecord,
            headers(("Location" = String, description = "/v1/orders/{order_id}"))),
        (status = 400, description = "malformed_json, unknown_field, missing_field, invalid_field_type, invalid_idempotency_key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "customer_mismatch (or insufficient_scope)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_key_in_use", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body_too_large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_media_type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_customer_id, unknown_currency, no_order_lines, too_many_order_lines, invalid_sku, invalid_quantity, duplicate_sku, invalid_card_token, invalid_email, idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "overloaded (too many orders in progress; retry after `Retry-After` seconds), service_unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"])))]
pub(crate) async fn place_order(
    principal: Principal,
    ctx: ApiContext,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    traceparent: Option<String>,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    if !is_json(content_type.as_deref()) {
        return Err(reject(ApiError::UnsupportedMediaType));
    }
    let request: PlaceOrder =
        serde_json::from_slice(&body).map_err(|e| reject(ApiError::from_json(&e)))?;
    let order = request.validate().map_err(|e| reject(e.into()))?;
    if !principal.may_access(order.customer_id.as_str()) {
        return Err(reject(ApiError::CustomerMismatch(format!(
            "customer_id {} is not the token's subject {}; placing orders for others needs {}",
            order.customer_id,
            principal.subject,
            scopes::ORDERS_ADMIN
        ))));
    }
    let claimed = match idempotency::begin(
        &ctx,
        &principal.subject,
        "POST /v1/orders",
        idempotency_key,
        &idempotency::fingerprint(&[&body]),
    )
    .await?
    {
        Begin::Replay(response) => return Ok(response),
        Begin::Proceed(claimed) => claimed,
    };
    let trace = traceparent
        .as_deref()
        .and_then(TraceContext::parse)
        .map(|t| t.child())
        .unwrap_or_else(TraceContext::new_root);
    let id = OrderId::new();
    // Counted as open from before its write, so its terminal event cannot come first.
    if let Err(full) = ctx.open_orders.admit(id.as_uuid()) {
        idempotency::release(&ctx, claimed.as_ref()).await;
        return Err(reject(ApiError::Overloaded(full.open)));
    }
    let now = Utc::now();
    let placed = OrderPlaced::of(&order);
    let envelope = Envelope::new(id, &placed, now);
    // The saga's first step (RESERVING, `ReserveStock`) commits with the order: one hop less.
    let first = saga::first_step(id, &placed, &ctx.config.saga, now);
    let traceparent = Some(trace.to_header());
    let messages: Vec<OutboxMessage<'_>> = std::iter::once((topics::ORDER_EVENTS, &envelope))
        .chain(first.commands.iter().map(|(topic, e)| (*topic, e)))
        .map(|(topic, envelope)| OutboxMessage {
            topic,
            envelope,
            traceparent: traceparent.clone(),
        })
        .collect();
    let start = repo::SagaStart {
        state: &first.state,
        deadline: first.deadline,
        message_id: envelope.id,
        message_type: &envelope.kind,
    };
    let record = ctx
        .intakes
        .insert_order(
            id,
            &order,
            now,
            &trace.trace_id_hex(),
            &start,
            &messages,
            claimed.as_ref(),
        )
        .await;
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            ctx.open_orders.abandon(id.as_uuid());
            idempotency::release(&ctx, claimed.as_ref()).await;
            return Err(unavailable(e));
        }
    };
    metrics::counter!(crate::metrics::ORDERS_ACCEPTED).increment(1);
    metrics::gauge!(crate::metrics::INTAKE_OPEN_ORDERS).set(ctx.open_orders.len() as f64);
    tracing::debug!(order_id = %id, trace_id = %trace.trace_id_hex(), lines = order.lines.len(), "order accepted");
    let location = format!("/v1/orders/{id}");
    let reply = warp::reply::with_status(warp::reply::json(&record), StatusCode::CREATED);
    let reply = warp::reply::with_header(reply, "location", location);
    Ok(warp::reply::with_header(reply, "traceparent", trace.to_header()).into_response())
}

/// One order with its lines and links to its documents (from the read cache when present).
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order id POST /v1/orders returned")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "invalid_order_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "order_not_found (also for another customer's order)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn get_order(
    id: String,
    principal: Principal,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = Uuid::try_parse(&id).map_err(|_| reject(ApiError::InvalidOrderId(id.clone())))?;
    let body = cached_json(&ctx, "order", &cache::order_key(uuid), "json", || {
        load_order(&ctx, uuid)
    })
    .await?;
    // Someone else's order is answered exactly as a missing one.
    let owner = body
        .as_deref()
        .and_then(|b| serde_json::from_slice::<OwnerOnly>(b).ok())
        .map(|o| o.customer_id);
    match (body, owner) {
        (Some(body), Some(owner)) if principal.may_access(&owner) => Ok(json_bytes(body)),
        _ => Err(reject(ApiError::OrderNotFound(uuid.to_string()))),
    }
}

/// The part of a cached order the ownership check reads.
#[derive(serde::Deserialize)]
struct OwnerOnly {
    customer_id: String,
}

/// The order as `GET /v1/orders/{id}` shows it, with links to its documents.
async fn load_order(ctx: &ApiContext, uuid: Uuid) -> Result<Option<Vec<u8>>, Rejection> {
    let Some(order) = repo::get_order(&ctx.pool, uuid)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    // The documents the file service stored for it (invoice, receipt), as links.
    let documents = crate::infra::db::files::documents_of(&ctx.pool, uuid)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|d| DocumentLink {
            href: format!("/v1/orders/{uuid}/{}", d.kind),
            kind: d.kind,
            size_bytes: d.size_bytes,
            sha256: d.sha256,
        })
        .collect();
    serde_json::to_vec(&OrderView { order, documents })
        .map(Some)
        .map_err(unavailable)
}

/// An order as `GET /v1/orders/{order_id}` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    #[serde(flatten)]
    pub order: OrderRecord,
    /// The invoice and receipt the file service stored, once they exist.
    pub documents: Vec<DocumentLink>,
}

/// A link to one of an order's documents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentLink {
    /// `invoice` or `receipt`.
    pub kind: String,
    /// Where to get it (a redirect to a presigned link).
    pub href: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the PDF (also the S3 checksum).
    pub sha256: String,
}

/// The answer of `POST /v1/orders/{order_id}/cancel`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelAccepted {
    pub order_id: Uuid,
    /// The order's status when the request was recorded.
    pub status: OrderStatus,
    /// Always `requested`.
    pub cancel: &'static str,
}

/// `POST /v1/orders/{id}/cancel`: asks the order's saga to cancel. `202 Accepted`: the saga
/// compensates what was done and the order ends CANCELLED — unless it confirmed first.
/// Ask the order's saga to cancel: it compensates what was done and the order ends CANCELLED,
/// unless it confirmed first.
#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders",
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 202, description = "Cancellation requested", body = CancelAccepted),
        (status = 400, description = "invalid_order_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "order_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "order_not_cancellable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"])))]
pub(crate) async fn cancel_order(
    id: String,
    principal: Principal,
    ctx: ApiContext,
    traceparent: Option<String>,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = owned_order(&ctx, &principal, &id).await?;
    let trace = traceparent
        .as_deref()
        .and_then(TraceContext::parse)
        .map(|t| t.child())
        .unwrap_or_else(TraceContext::new_root);
    match repo::request_cancel(
        ctx.writers.get(Schema::Orders),
        uuid,
        "customer_cancelled",
        Some(trace.to_header()),
    )
    .await
    {
        Ok(status) => {
            tracing::info!(order_id = %uuid, "cancel requested");
            let body = CancelAccepted {
                order_id: uuid,
                status,
                cancel: "requested",
            };
            Ok(
                warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED)
                    .into_response(),
            )
        }
        Err(CancelError::NotFound(id)) => Err(reject(ApiError::OrderNotFound(id.to_string()))),
        Err(e @ CancelError::Final(..)) => {
            Err(reject(ApiError::OrderNotCancellable(e.to_string())))
        }
        Err(CancelError::Db(e)) => Err(unavailable(e)),
    }
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    items: Vec<OrderRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Cursors are opaque to clients: a version tag and the last order id of the page.
fn encode_cursor(id: Uuid) -> String {
    format!("c1{}", id.simple())
}

fn decode_cursor(s: &str) -> Result<Uuid, ApiError> {
    let hex = s.strip_prefix("c1").ok_or(ApiError::InvalidCursor)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::InvalidCursor);
    }
    Uuid::try_parse(hex).map_err(|_| ApiError::InvalidCursor)
}

fn parse_filter(
    query: &HashMap<String, String>,
    default_limit: u32,
    max_limit: u32,
) -> Result<OrderFilter, ApiError> {
    let mut filter = OrderFilter {
        limit: default_limit,
        ..OrderFilter::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "status" => {
                filter.status = Some(value.parse::<OrderStatus>().map_err(|()| {
                    ApiError::InvalidQuery(format!(
                        "status must be one of PENDING, CONFIRMED, CANCELLED; got {value:?}"
                    ))
                })?);
            }
            "customer_id" => {
                let c = crate::domain::ids::CustomerId::parse(value).ok_or_else(|| {
                    ApiError::InvalidQuery(format!(
                        "customer_id {value:?} is not a valid customer id"
                    ))
                })?;
                filter.customer_id = Some(c.as_str().to_owned());
            }
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=max_limit).contains(l))
                    .ok_or_else(|| {
                        ApiError::InvalidQuery(format!(
                            "limit must be a number from 1 to {max_limit}"
                        ))
                    })?;
            }
            "cursor" => filter.before = Some(decode_cursor(value)?),
            other => {
                return Err(ApiError::InvalidQuery(format!(
                    "unknown query parameter {other:?}; expected status, customer_id, limit, cursor"
                )));
            }
        }
    }
    Ok(filter)
}

/// The caller's orders, newest first (every customer's with `orders:admin`).
#[utoipa::path(get, path = "/v1/orders", tag = "orders",
    params(
        ("status" = Option<OrderStatus>, Query, description = "Only orders in this state"),
        ("customer_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:@-]{1,64}$", description = "Only this customer's orders (customers see only their own)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, at most http.max_page_size (500 by default)"),
        ("cursor" = Option<String>, Query, pattern = "^c1[0-9a-f]{32}$", description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "invalid_query, invalid_cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn list_orders(
    principal: Principal,
    ctx: ApiContext,
    query: HashMap<String, String>,
) -> Result<warp::reply::Response, Rejection> {
    let http = &ctx.config.http;
    let mut filter =
        parse_filter(&query, http.default_page_size, http.max_page_size).map_err(reject)?;
    if !principal.is_admin() {
        // A customer lists their own orders; filtering on someone else finds nothing.
        if filter
            .customer_id
            .as_ref()
            .is_some_and(|c| *c != principal.subject)
        {
            let empty = OrderPage {
                items: Vec::new(),
                next_cursor: None,
            };
            return Ok(warp::reply::json(&empty).into_response());
        }
        filter.customer_id = Some(principal.subject.clone());
    }
    let items = repo::list_orders(&ctx.pool, &filter)
        .await
        .map_err(unavailable)?;
    let next_cursor = (items.len() == filter.limit as usize)
        .then(|| items.last().map(|o| encode_cursor(o.order_id)))
        .flatten();
    Ok(warp::reply::json(&OrderPage { items, next_cursor }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Ok(id));
        for bad in [
            "",
            "c1",
            "c2abc",
            "c1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "c1' OR 1=1 --",
        ] {
            assert_eq!(decode_cursor(bad), Err(ApiError::InvalidCursor), "{bad}");
        }
    }

    #[test]
    fn filters_parse_and_reject_unknown_parameters() {
        let q: HashMap<String, String> = [("status", "PENDING"), ("limit", "10")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let f = parse_filter(&q, 50, 500);
        assert_eq!(f.as_ref().map(|f| f.limit).ok(), Some(10));
        assert_eq!(f.ok().and_then(|f| f.status), Some(OrderStatus::Pending));
        let q: HashMap<String, String> = [("sort".to_owned(), "asc".to_owned())]
            .into_iter()
            .collect();
        assert!(parse_filter(&q, 50, 500).is_err());
        let q: HashMap<String, String> =
            [("limit".to_owned(), "0".to_owned())].into_iter().collect();
        assert!(parse_filter(&q, 50, 500).is_err());
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }
}
