//! The API's edge for every `/v1` route: the rate limits (per client IP, then per token
//! subject and route), the filter that turns a request's bearer token into a [`Principal`]
//! holding the route's scope, the ownership rule for orders, and the development issuer's
//! published keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;
use warp::path::FullPath;
use warp::{Filter, Rejection, Reply};

use super::ApiContext;
use super::problem::ApiError;
use crate::auth::{AuthError, Principal};
use crate::config::{FailMode, RateLimitConfig};
use crate::infra::ratelimit::{Check, Decision, RateLimiter};

/// The rate limits as the guard applies them.
#[derive(Clone)]
struct Limits {
    limiter: Option<Arc<RateLimiter>>,
    config: Arc<crate::config::Config>,
}

/// When the last "rate limiter unavailable" warning was logged (seconds since the epoch), so
/// an outage logs once a second, not once a request.
static LAST_WARNING: AtomicU64 = AtomicU64::new(0);

impl Limits {
    fn config(&self) -> &RateLimitConfig {
        &self.config.rate_limit
    }

    /// Charges one request to `key` under `limit`; `kind` (`ip`, `subject`) labels metrics.
    async fn enforce(
        &self,
        kind: &'static str,
        key: String,
        limit: crate::config::Limit,
    ) -> Result<(), Rejection> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = format!("{}{key}", self.config().key_prefix);
        match limiter.check(&[Check { key, limit }]).await {
            Ok(Decision::Allowed { .. }) => Ok(()),
            Ok(Decision::Limited { retry_after, limit }) => {
                metrics::counter!(crate::metrics::RATE_LIMITED, "kind" => kind).increment(1);
                Err(warp::reject::custom(ApiError::RateLimited {
                    retry_after,
                    burst: limit.burst,
                    window_secs: (f64::from(limit.burst) / limit.per_second).ceil().max(1.0) as u64,
                }))
            }
            Err(e) => {
                let mode = self.config().on_redis_error;
                let label = if mode == FailMode::Open {
                    "open"
                } else {
                    "closed"
                };
                metrics::counter!(crate::metrics::RATE_LIMIT_ERRORS, "mode" => label).increment(1);
                let now = crate::auth::unix_now();
                if LAST_WARNING.swap(now, Ordering::Relaxed) != now {
                    tracing::warn!(error = %e, mode = label, "rate limiter unavailable");
                }
                match mode {
                    FailMode::Open => Ok(()),
                    FailMode::Closed => Err(warp::reject::custom(ApiError::Unavailable(format!(
                        "rate limiter unavailable: {e}"
                    )))),
                }
            }
        }
    }
}

/// Requires a valid bearer token that grants `scope`; extracts its principal. Put it after the
/// route's path and method, so a refused token is the answer of the route it was meant for.
/// Before the token is checked the client IP's limit is charged, after it the subject's limit
/// for this route (`429 rate_limited` when one is spent).
pub fn require(
    ctx: &ApiContext,
    scope: &'static str,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone + use<> {
    let auth = ctx.auth.clone();
    let limits = Limits {
        limiter: ctx.limiter.clone(),
        config: ctx.config.clone(),
    };
    warp::method()
        .and(warp::path::full())
        .and(warp::ext::optional::<super::server::PeerAddr>())
        .and(warp::header::optional::<String>("authorization"))
        .and_then(
        move |method: warp::http::Method,
              path: FullPath,
              remote: Option<super::server::PeerAddr>,
              header: Option<String>| {
        let auth = auth.clone();
        let limits = limits.clone();
        async move {
            let ip = remote.map_or_else(|| "unknown".to_owned(), |a| a.0.ip().to_string());
            let per_ip = limits.config().per_ip;
            limits.enforce("ip", format!("ip:{ip}"), per_ip).await?;
            let principal = auth.authenticate(header.as_deref()).await.map_err(|e| {
                metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => e.reason())
                    .increment(1);
                warp::reject::custom(match e {
                    AuthError::KeysUnavailable(detail) => {
                        ApiError::Unavailable(format!("token issuer keys unavailable: {detail}"))
                    }
                    AuthError::Missing => ApiError::MissingToken,
                    AuthError::Invalid(reason) => ApiError::InvalidToken(reason),
                })
            })?;
            if !principal.has(scope) {
                metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => "insufficient_scope")
                    .increment(1);
                return Err(warp::reject::custom(ApiError::InsufficientScope(scope)));
            }
            let route = format!("{method} {}", super::route_label(path.as_str()));
            let limit = limits
                .config()
                .routes
                .get(&route)
                .copied()
                .unwrap_or(limits.config().per_subject);
            limits
                .enforce("subject", format!("sub:{}:{route}", principal.subject), limit)
                .await?;
            Ok::<_, Rejection>(principal)
        }
    })
}

/// Like [`require`], for routes that need the scope but not the caller's identity.
pub fn allow(
    ctx: &ApiContext,
    scope: &'static str,
) -> impl Filter<Extract = (), Error = Rejection> + Clone + use<> {
    require(ctx, scope).map(|_: Principal| ()).untuple_one()
}

/// The order `id` when the caller may see it: their own (it exists), or any with the admin
/// scope (not looked up: the resource's own lookup answers 404). Someone else's order answers
/// 404, exactly as a missing one, so ids reveal nothing.
pub async fn owned_order(
    ctx: &ApiContext,
    principal: &Principal,
    id: &str,
) -> Result<Uuid, Rejection> {
    let uuid = Uuid::try_parse(id)
        .map_err(|_| warp::reject::custom(ApiError::InvalidOrderId(id.to_owned())))?;
    if principal.is_admin() {
        return Ok(uuid);
    }
    let owner = crate::infra::db::orders::owner_of(&ctx.pool, uuid)
        .await
        .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?;
    match owner {
        Some(owner) if principal.may_access(&owner) => Ok(uuid),
        _ => Err(warp::reject::custom(ApiError::OrderNotFound(
            uuid.to_string(),
        ))),
    }
}

/// `GET /.well-known/jwks.json`: the development issuer's public key, for other processes and
/// tools that validate its tokens (404 when tokens come from an OIDC provider).
pub fn jwks_route(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!(".well-known" / "jwks.json")
        .and(warp::get())
        .and_then(move || {
            let jwks = ctx.auth.published_jwks();
            async move {
                jwks.map(|set| warp::reply::json(&set).into_response())
                    .ok_or_else(|| warp::reject::custom(ApiError::RouteNotFound))
            }
        })
        .boxed()
}
