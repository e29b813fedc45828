//! The warp HTTP API: routes per resource (`orders`, `health`), the shared context, and the
//! error map (`problem`). Every rejection becomes RFC 9457 problem+json.

pub mod documents;
pub mod errors_doc;
pub mod events;
pub mod guard;
pub mod health;
pub mod idempotency;
pub mod notifications;
pub mod openapi;
pub mod orders;
pub mod payments;
pub mod problem;
pub mod products;
pub mod server;
pub mod uploads;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use warp::Filter;

use crate::config::Config;
use crate::infra::circuit::CircuitBreaker;
use crate::infra::db::writer::Writers;
use crate::infra::redis::RedisPool;

/// What request handlers share. Cheap to clone (everything inside is a handle).
#[derive(Clone)]
pub struct ApiContext {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub redis: RedisPool,
    pub s3: aws_sdk_s3::Client,
    /// The circuit around S3, shared with the file service of this process.
    pub s3_breaker: Arc<CircuitBreaker>,
    /// The circuit around SMTP, shared with the notification service of this process.
    pub smtp_breaker: Arc<CircuitBreaker>,
    pub writers: Writers,
    /// Stores new orders in groups, on the orders writer.
    pub intakes: crate::infra::db::orders::Intakes,
    pub metrics: PrometheusHandle,
    /// Validates the bearer tokens of `/v1` requests.
    pub auth: Arc<crate::auth::Authenticator>,
    /// The read cache (`None` when `cache.enabled` is off).
    pub cache: Option<Arc<crate::infra::cache::Cache>>,
    /// The shared rate limits (`None` when `rate_limit.enabled` is off).
    pub limiter: Option<Arc<crate::infra::ratelimit::RateLimiter>>,
    /// Serve `/v1` (the `api` service); health and metrics are always served.
    pub serve_v1: bool,
    /// This process's actor-name prefix (to find the status hub).
    pub instance: String,
    /// The intake's bound on orders in progress (the status hub reports their ends).
    pub open_orders: Arc<crate::admission::OpenOrders>,
}

fn with_ctx(ctx: ApiContext) -> impl Filter<Extract = (ApiContext,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// All routes, with problem+json errors and request metrics.
pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let config = ctx.config.clone();
    let ops = health::routes(ctx.clone());
    let problems = warp::path!("problems" / String)
        .and(warp::get())
        .and_then(|code: String| async move { problem::describe(&code) })
        .map(warp::Reply::into_response);
    let base = ops
        .or(problems)
        .unify()
        .or(guard::jwks_route(ctx.clone()))
        .unify()
        .or(openapi::route(&ctx.config.http.docs_dir))
        .unify();
    let all = if ctx.serve_v1 {
        base.or(orders::routes(ctx.clone()))
            .unify()
            .or(products::routes(ctx.clone()))
            .unify()
            .or(payments::routes(ctx.clone()))
            .unify()
            .or(documents::routes(ctx.clone()))
            .unify()
            .or(notifications::routes(ctx.clone()))
            .unify()
            .or(uploads::routes(ctx.clone()))
            .unify()
            .or(events::routes(ctx))
            .unify()
            .boxed()
    } else {
        base.boxed()
    };
    let origins = &config.http.cors_allowed_origins;
    let all = if origins.is_empty() {
        all
    } else {
        // Browser pages of these origins may call the API with a bearer token (no cookies).
        let cors = warp::cors()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "PUT", "DELETE"])
            .allow_headers([
                "authorization",
                "content-type",
                "idempotency-key",
                "traceparent",
            ])
            .expose_headers([
                "location",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
                "ratelimit-policy",
                "idempotent-replayed",
                "traceparent",
                "www-authenticate",
            ])
            .max_age(600);
        all.with(cors).map(warp::Reply::into_response).boxed()
    };
    all.recover(problem::recover)
        .unify()
        .with(warp::wrap_fn(with_allow_header))
        .with(warp::log::custom(record_metrics))
        .map(warp::Reply::into_response)
        .boxed()
}

/// Adds `Allow` to a 405 (RFC 9110 §15.5.6): the methods the request's route takes.
fn with_allow_header<F>(
    filter: F,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    warp::path::full().and(filter).map(
        |path: warp::path::FullPath, mut resp: warp::reply::Response| {
            if resp.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED
                && let Some(allow) = allowed_methods(route_label(path.as_str()))
            {
                resp.headers_mut().insert(
                    warp::http::header::ALLOW,
                    warp::http::HeaderValue::from_static(allow),
                );
            }
            resp
        },
    )
}

/// The methods each route takes.
fn allowed_methods(route: &str) -> Option<&'static str> {
    Some(match route {
        "/v1/orders" | "/v1/files" | "/v1/products" => "GET, POST",
        "/v1/orders/{id}/cancel" => "POST",
        "/v1/files/{id}" => "GET, DELETE",
        "/v1/products/{sku}" => "GET, PUT",
        "other" => return None,
        _ => "GET",
    })
}

fn record_metrics(info: warp::log::Info<'_>) {
    let route = route_label(info.path());
    let status = info.status().as_u16().to_string();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route, "method" => info.method().to_string(), "status" => status)
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => route)
        .record(info.elapsed().as_secs_f64());
}

/// A bounded label for a path (ids replaced by placeholders).
pub(crate) fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "orders"] => "/v1/orders",
        ["v1", "orders", _] => "/v1/orders/{id}",
        ["v1", "orders", _, "payment"] => "/v1/orders/{id}/payment",
        ["v1", "orders", _, "invoice"] => "/v1/orders/{id}/invoice",
        ["v1", "orders", _, "receipt"] => "/v1/orders/{id}/receipt",
        ["v1", "orders", _, "notifications"] => "/v1/orders/{id}/notifications",
        ["v1", "orders", _, "cancel"] => "/v1/orders/{id}/cancel",
        ["v1", "orders", _, "events"] => "/v1/orders/{id}/events",
        ["v1", "files"] => "/v1/files",
        ["v1", "files", _] => "/v1/files/{id}",
        ["v1", "products"] => "/v1/products",
        ["v1", "products", _] => "/v1/products/{sku}",
        ["health", "live"] => "/health/live",
        ["health", "ready"] => "/health/ready",
        ["metrics"] => "/metrics",
        ["problems", _] => "/problems/{code}",
        [".well-known", "jwks.json"] => "/.well-known/jwks.json",
        ["openapi.json"] => "/openapi.json",
        ["docs"] => "/docs",
        ["docs", _] => "/docs/{asset}",
        _ => "other",
    }
}

/// A JSON document from the read cache, or loaded by `load` (`Ok(None)`: it does not exist,
/// which is not cached) and cached. Without a cache, or when Redis fails, it is simply loaded.
pub async fn cached_json<F, Fut>(
    ctx: &ApiContext,
    kind: &'static str,
    hash: &str,
    field: &str,
    load: F,
) -> Result<Option<Vec<u8>>, warp::Rejection>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<u8>>, warp::Rejection>>,
{
    let Some(cache) = &ctx.cache else {
        return load().await;
    };
    match cache.lookup(kind, hash, field).await {
        crate::infra::cache::Lookup::Hit(bytes) => Ok(Some(bytes)),
        crate::infra::cache::Lookup::Miss(ticket) => {
            let loaded = load().await?;
            if let Some(bytes) = &loaded {
                cache.store(ticket, bytes).await;
            }
            Ok(loaded)
        }
    }
}

/// A `200` with a JSON body that is already serialised.
pub fn json_bytes(body: Vec<u8>) -> warp::reply::Response {
    let mut resp = warp::reply::Response::new(body.into());
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Time since a request started, for handlers that log their own latency.
pub fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1_000.0
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn route_labels_never_contain_ids() {
        assert_eq!(route_label("/v1/orders/0190-abc"), "/v1/orders/{id}");
        assert_eq!(route_label("/v1/orders"), "/v1/orders");
        assert_eq!(route_label("/anything/else/x"), "other");
    }
}
