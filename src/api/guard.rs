//! The API's side of OAuth2: the filter that turns a request's bearer token into a
//! [`Principal`] holding a route's scope, the ownership rule for orders, and the development
//! issuer's published keys.

use uuid::Uuid;
use warp::{Filter, Rejection, Reply};

use super::ApiContext;
use super::problem::ApiError;
use crate::auth::{AuthError, Principal};

/// Requires a valid bearer token that grants `scope`; extracts its principal. Put it after the
/// route's path and method, so a refused token is the answer of the route it was meant for.
pub fn require(
    ctx: &ApiContext,
    scope: &'static str,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone + use<> {
    let auth = ctx.auth.clone();
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let auth = auth.clone();
        async move {
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
