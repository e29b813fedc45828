//! Idempotency keys: the first request with a key claims it, its response is stored, and later
//! requests with the same key get that response again — or a refusal when their request
//! differs, or while the first one still runs.

use sqlx::{PgConnection, PgPool, Row};

use super::DbError;

/// A key as the API scopes it: per token subject and route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub subject: String,
    /// `"METHOD /route"`.
    pub route: String,
    pub key: String,
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is this request's: run it, then [`finish`] (or [`release`] on failure).
    Claimed,
    /// The same request ran before: answer its response.
    Replay(Stored),
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

/// Claims `key` for a request whose fingerprint is `sha256`. An expired key, or one whose
/// first request was abandoned (no response after `abandon_after_secs`: its process died
/// before committing anything) is claimed afresh.
pub async fn claim(
    pool: &PgPool,
    key: &KeyRef,
    sha256: &[u8; 32],
    ttl_secs: u64,
    abandon_after_secs: u64,
) -> Result<Claim, DbError> {
    let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
    let abandon = i64::try_from(abandon_after_secs).unwrap_or(i64::MAX);
    let claimed = sqlx::query(
        "INSERT INTO api.idempotency_keys (subject, route, key, request_sha256, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         ON CONFLICT (subject, route, key) DO UPDATE
           SET request_sha256 = EXCLUDED.request_sha256, status = NULL, location = NULL,
               body = NULL, created_at = now(), expires_at = EXCLUDED.expires_at
           WHERE api.idempotency_keys.expires_at < now()
              OR (api.idempotency_keys.status IS NULL
                  AND api.idempotency_keys.created_at < now() - make_interval(secs => $6))
         RETURNING 1",
    )
    .bind(&key.subject)
    .bind(&key.route)
    .bind(&key.key)
    .bind(&sha256[..])
    .bind(ttl as f64)
    .bind(abandon as f64)
    .fetch_optional(pool)
    .await?;
    if claimed.is_some() {
        return Ok(Claim::Claimed);
    }
    let row = sqlx::query(
        "SELECT request_sha256, status, location, body FROM api.idempotency_keys
         WHERE subject = $1 AND route = $2 AND key = $3",
    )
    .bind(&key.subject)
    .bind(&key.route)
    .bind(&key.key)
    .fetch_optional(pool)
    .await?;
    // Released between the two statements: the caller may simply try again.
    let Some(row) = row else {
        return Ok(Claim::InProgress);
    };
    let stored_sha: Vec<u8> = row.try_get("request_sha256")?;
    if stored_sha != sha256[..] {
        return Ok(Claim::Mismatch);
    }
    let status: Option<i16> = row.try_get("status")?;
    Ok(match status {
        None => Claim::InProgress,
        Some(status) => Claim::Replay(Stored {
            status: u16::try_from(status).unwrap_or(500),
            location: row.try_get("location")?,
            body: row
                .try_get::<Option<Vec<u8>>, _>("body")?
                .unwrap_or_default(),
        }),
    })
}

/// Stores the response of a claimed key on `conn` (inside the transaction of the request's
/// own writes, where it has them, so a committed effect always has its response).
pub async fn finish_on(
    conn: &mut PgConnection,
    key: &KeyRef,
    response: &Stored,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE api.idempotency_keys SET status = $4, location = $5, body = $6
         WHERE subject = $1 AND route = $2 AND key = $3",
    )
    .bind(&key.subject)
    .bind(&key.route)
    .bind(&key.key)
    .bind(i16::try_from(response.status).unwrap_or(i16::MAX))
    .bind(response.location.as_deref())
    .bind(&response.body)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`finish_on`] in a transaction of its own.
pub async fn finish(pool: &PgPool, key: &KeyRef, response: &Stored) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    finish_on(&mut conn, key, response).await
}

/// Gives a claimed key up after its request failed, so a retry runs it again.
pub async fn release(pool: &PgPool, key: &KeyRef) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM api.idempotency_keys
         WHERE subject = $1 AND route = $2 AND key = $3 AND status IS NULL",
    )
    .bind(&key.subject)
    .bind(&key.route)
    .bind(&key.key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes up to `limit` expired keys; returns how many.
pub async fn purge_expired(pool: &PgPool, limit: i64) -> Result<u64, DbError> {
    let done = sqlx::query(
        "DELETE FROM api.idempotency_keys WHERE ctid IN (
           SELECT ctid FROM api.idempotency_keys WHERE expires_at < now() LIMIT $1)",
    )
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
