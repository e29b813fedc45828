//! The read cache in Redis: catalogue entries and order status, cache-aside.
//!
//! Every entry is a field of a Redis hash (`product:<sku>`, `order:<id>`, and one hash
//! `products:pages` for every page of the catalogue listing) with a **version key** beside it
//! (`<hash>:v`). A reader that misses notes the version, reads PostgreSQL, and stores its
//! answer only if the version is still the one it noted (one Lua script); an invalidation bumps
//! the version and deletes the hash. So a reader that loaded the old row can never put it
//! back after the change was invalidated — the classic cache-aside race — and the TTL only
//! bounds memory, not correctness.
//!
//! Invalidations come from two places: the API after its own catalogue writes (synchronously,
//! before it answers), and PostgreSQL triggers (migration 0010) that `NOTIFY orderflow_cache`
//! on every change of a product, an order's status or an order's documents, whoever made it;
//! each API process listens and invalidates in batches. A lost listener connection may have
//! lost notifications: the listener then flushes the whole cache.
//!
//! Every Redis failure degrades to PostgreSQL: a lookup that fails is a miss that is not
//! stored, a failed invalidation is logged, and readers keep working.

use std::time::Duration;

use bb8_redis::redis::{self, Script};
use sqlx::PgPool;

use super::redis::{RedisError, RedisPool};
use crate::config::CacheConfig;
use crate::metrics as m;

/// The PostgreSQL channel the triggers notify.
pub const CHANNEL: &str = "orderflow_cache";
/// The hash of every catalogue listing page.
pub const PRODUCT_PAGES: &str = "products:pages";

const STORE_IF_CURRENT: &str = r#"
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"#;

pub fn product_key(sku: &str) -> String {
    format!("product:{sku}")
}

pub fn order_key(id: uuid::Uuid) -> String {
    format!("order:{id}")
}

/// What a lookup found.
pub enum Lookup {
    Hit(Vec<u8>),
    /// Not cached: load it, then [`Cache::store`] it with this ticket (`None`: Redis did not
    /// answer, do not store).
    Miss(Option<Ticket>),
}

/// The version an entry had when its lookup missed.
pub struct Ticket {
    hash: String,
    field: String,
    version: String,
}

pub struct Cache {
    pool: RedisPool,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    store: Script,
}

impl Cache {
    pub fn new(pool: RedisPool, config: &CacheConfig) -> Self {
        Self {
            pool,
            prefix: config.key_prefix.clone(),
            ttl_secs: config.ttl_secs.max(1),
            timeout: Duration::from_millis(config.timeout_ms),
            store: Script::new(STORE_IF_CURRENT),
        }
    }

    async fn conn(
        &self,
    ) -> Result<bb8_redis::bb8::PooledConnection<'_, bb8_redis::RedisConnectionManager>, RedisError>
    {
        self.pool
            .get()
            .await
            .map_err(|e| RedisError::Pool(e.to_string()))
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| RedisError::Pool(format!("no answer within {:?}", self.timeout)))?
    }

    /// Looks `field` of `hash` up; `kind` labels the metrics (`product`, `products`, `order`).
    pub async fn lookup(&self, kind: &'static str, hash: &str, field: &str) -> Lookup {
        let full = format!("{}{hash}", self.prefix);
        let found = self
            .bounded(async {
                let mut conn = self.conn().await?;
                let (value, version): (Option<Vec<u8>>, Option<String>) = redis::pipe()
                    .hget(&full, field)
                    .get(format!("{full}:v"))
                    .query_async(&mut *conn)
                    .await?;
                Ok((value, version))
            })
            .await;
        match found {
            Ok((Some(value), _)) => {
                metrics::counter!(m::CACHE_LOOKUPS, "cache" => kind, "outcome" => "hit")
                    .increment(1);
                Lookup::Hit(value)
            }
            Ok((None, version)) => {
                metrics::counter!(m::CACHE_LOOKUPS, "cache" => kind, "outcome" => "miss")
                    .increment(1);
                Lookup::Miss(Some(Ticket {
                    hash: full,
                    field: field.to_owned(),
                    version: version.unwrap_or_else(|| "0".into()),
                }))
            }
            Err(e) => {
                metrics::counter!(m::CACHE_LOOKUPS, "cache" => kind, "outcome" => "error")
                    .increment(1);
                tracing::debug!(error = %e, "cache lookup failed; reading the database");
                Lookup::Miss(None)
            }
        }
    }

    /// Stores what a missed lookup loaded, unless the entry was invalidated since.
    pub async fn store(&self, ticket: Option<Ticket>, value: &[u8]) {
        let Some(t) = ticket else {
            return;
        };
        let stored = self
            .bounded(async {
                let mut conn = self.conn().await?;
                let _: i64 = self
                    .store
                    .key(&t.hash)
                    .key(format!("{}:v", t.hash))
                    .arg(&t.version)
                    .arg(&t.field)
                    .arg(value)
                    .arg(self.ttl_secs)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            tracing::debug!(error = %e, "cache store failed");
        }
    }

    /// Invalidates `hashes` (bumps each version, deletes each hash) in one round trip.
    pub async fn invalidate(&self, hashes: &[String]) -> Result<(), RedisError> {
        if hashes.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut conn = self.conn().await?;
            let mut pipe = redis::pipe();
            for h in hashes {
                let full = format!("{}{h}", self.prefix);
                pipe.incr(format!("{full}:v"), 1)
                    .ignore()
                    .expire(format!("{full}:v"), 86_400)
                    .ignore()
                    .del(&full)
                    .ignore();
            }
            let () = pipe.query_async(&mut *conn).await?;
            metrics::counter!(m::CACHE_INVALIDATIONS).increment(hashes.len() as u64);
            Ok(())
        })
        .await
    }

    /// Deletes every entry (not the versions: a reader holding a ticket stays refused).
    pub async fn flush(&self) -> Result<u64, RedisError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut *conn)
                .await?;
            let entries: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":v")).collect();
            if !entries.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&entries)
                    .query_async(&mut *conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// The hashes a trigger's notification invalidates: the entry itself, and for a product the
/// listing pages too.
fn hashes_of(payload: &str, out: &mut Vec<String>) {
    out.push(payload.to_owned());
    if payload.starts_with("product:") && !out.iter().any(|h| h == PRODUCT_PAGES) {
        out.push(PRODUCT_PAGES.to_owned());
    }
}

/// Listens to the triggers' notifications and invalidates in batches (what arrived within
/// 5 ms, at most 500), until the process closes its pool. Reconnects after losing PostgreSQL,
/// flushing the cache because notifications may have been lost meanwhile.
pub fn spawn_invalidator(pg: PgPool, cache: std::sync::Arc<Cache>) {
    tokio::spawn(async move {
        loop {
            let listened = listen(&pg, &cache).await;
            if pg.is_closed() {
                return;
            }
            if let Err(e) = listened {
                tracing::warn!(error = %e, "cache invalidation listener lost; reconnecting");
            }
            match cache.flush().await {
                Ok(n) => tracing::info!(entries = n, "cache flushed after a listener gap"),
                Err(e) => tracing::warn!(error = %e, "cache flush failed"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen(pg: &PgPool, cache: &Cache) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pg).await?;
    listener.listen(CHANNEL).await?;
    loop {
        // None: the connection dropped (notifications may be lost).
        let Some(first) = listener.try_recv().await? else {
            return Ok(());
        };
        let mut hashes = Vec::new();
        hashes_of(first.payload(), &mut hashes);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
        while hashes.len() < 500 {
            match tokio::time::timeout_at(deadline, listener.try_recv()).await {
                Ok(Ok(Some(n))) => hashes_of(n.payload(), &mut hashes),
                Ok(Ok(None)) => {
                    invalidate_logged(cache, &hashes).await;
                    return Ok(());
                }
                Ok(Err(e)) => {
                    invalidate_logged(cache, &hashes).await;
                    return Err(e);
                }
                Err(_) => break,
            }
        }
        invalidate_logged(cache, &hashes).await;
    }
}

async fn invalidate_logged(cache: &Cache, hashes: &[String]) {
    if let Err(e) = cache.invalidate(hashes).await {
        metrics::counter!(m::CACHE_INVALIDATION_ERRORS).increment(1);
        tracing::warn!(error = %e, entries = hashes.len(), "cache invalidation failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_change_invalidates_the_listing_once() {
        let mut out = Vec::new();
        hashes_of("product:A", &mut out);
        hashes_of("product:B", &mut out);
        hashes_of("order:1", &mut out);
        assert_eq!(out, ["product:A", PRODUCT_PAGES, "product:B", "order:1"]);
    }
}
