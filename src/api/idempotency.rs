//! `Idempotency-Key` on the creating routes (`POST /v1/orders`, `POST /v1/files`): a client may
//! retry a request whose answer it lost and get the first answer again instead of a second
//! order or file. Keys belong to the token's subject and the route, are kept
//! `idempotency.ttl_secs` (24 h), and are claimed in PostgreSQL before the request's effect so
//! that concurrent requests with one key make one effect (ADR 0019).

use sha2::{Digest, Sha256};
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection};

use super::ApiContext;
use super::problem::ApiError;
use crate::infra::db::idempotency::{self as repo, Claim, KeyRef, Stored};

/// The request's `Idempotency-Key`, checked: 1–255 visible ASCII characters.
pub fn key() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("idempotency-key").and_then(|k: Option<String>| async move {
        match k {
            None => Ok(None),
            Some(k) if valid(&k) => Ok(Some(k)),
            Some(_) => Err(warp::reject::custom(ApiError::InvalidIdempotencyKey)),
        }
    })
}

fn valid(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A request's fingerprint: SHA-256 over its parts, each length-prefixed.
pub fn fingerprint(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// What to do with a request that may carry a key.
pub enum Begin {
    /// Run it; with `Some`, the key is claimed: store the response or release the key.
    Proceed(Option<KeyRef>),
    /// It ran before: this is its response.
    Replay(warp::reply::Response),
}

/// Claims `key` (if any) for the request of `subject` on `route` with `fingerprint`.
pub async fn begin(
    ctx: &ApiContext,
    subject: &str,
    route: &str,
    key: Option<String>,
    fingerprint: &[u8; 32],
) -> Result<Begin, Rejection> {
    let Some(key) = key else {
        return Ok(Begin::Proceed(None));
    };
    let key = KeyRef {
        subject: subject.to_owned(),
        route: route.to_owned(),
        key,
    };
    let config = &ctx.config.idempotency;
    let claim = repo::claim(
        &ctx.pool,
        &key,
        fingerprint,
        config.ttl_secs,
        config.abandon_after_secs,
    )
    .await
    .map_err(|e| warp::reject::custom(ApiError::Unavailable(e.to_string())))?;
    match claim {
        Claim::Claimed => Ok(Begin::Proceed(Some(key))),
        Claim::Replay(stored) => {
            metrics::counter!(crate::metrics::IDEMPOTENT_REPLAYS, "route" => route.to_owned())
                .increment(1);
            Ok(Begin::Replay(replay(&stored)))
        }
        Claim::Mismatch => Err(warp::reject::custom(ApiError::IdempotencyKeyReused)),
        Claim::InProgress => Err(warp::reject::custom(ApiError::IdempotencyKeyInUse)),
    }
}

/// After a failed request: gives its key up so a retry runs it again (best effort; a key left
/// behind is claimable again after `idempotency.abandon_after_secs`).
pub async fn release(ctx: &ApiContext, key: Option<&KeyRef>) {
    if let Some(key) = key
        && let Err(e) = repo::release(&ctx.pool, key).await
    {
        tracing::warn!(error = %e, route = %key.route, "could not release an idempotency key");
    }
}

/// The stored response, marked as a replay.
fn replay(stored: &Stored) -> warp::reply::Response {
    let mut resp = warp::reply::Response::new(stored.body.clone().into());
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Some(location) = stored
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid("0190b6c4-7d2e-7000-8000-000000000001"));
        assert!(!valid(""));
        assert!(!valid("has space"));
        assert!(!valid("ünïcode"));
        assert!(!valid(&"k".repeat(256)));
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"x"]), fingerprint(&[b"x"]));
    }
}
