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
//! before it answers), and PostgreSQL triggers (migration 0011) that record, in the changing
//! transaction itself, every change of a product, an order's status or an order's documents,
//! whoever made it, as a row of `cache.changes`; a drainer in each process
//! ([`spawn_drainer`]) invalidates those entries in batches and deletes the rows only once
//! Redis took them, so no committed change is ever left uninvalidated (the row waits).
//!
//! Every Redis failure degrades to PostgreSQL: a lookup that fails is a miss that is not
//! stored, a failed invalidation keeps its change rows for the next drain, and readers keep
//! working. Change rows older than the TTL are pruned ([`prune_changes`]): their entries have
//! expired anyway.

use std::time::Duration;

use bb8_redis::redis::{self, Script};
use sqlx::PgPool;

use super::redis::{RedisError, RedisPool};
use crate::config::CacheConfig;
use crate::metrics as m;

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
}

/// The hashes the changed entries invalidate, each once: the entries themselves, and for a
/// product the listing pages too.
fn hashes_of<'a>(entries: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for entry in entries {
        if entry.starts_with("product:") && seen.insert(PRODUCT_PAGES) {
            out.push(PRODUCT_PAGES.to_owned());
        }
        if seen.insert(entry.as_str()) {
            out.push(entry.clone());
        }
    }
    out
}

/// How the drainer of `cache.changes` runs.
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// Without a wake-up (changes made by other processes or by hand), look this often.
    pub poll: Duration,
    /// After a drain, wait this long before the next one, so one drain takes what several
    /// commits wrote.
    pub gap: Duration,
    /// The most change rows one drain takes.
    pub batch: i64,
}

/// Drains `cache.changes` (rows the triggers of migration 0011 write with every change of a
/// product, an order's status or an order's documents, in the change's own transaction) and
/// invalidates their entries, until the process closes its pool. `wake` is notified by this
/// process's writers after each commit; otherwise the table is polled. A drain deletes its rows
/// in a transaction that commits only after Redis took the invalidations, so a failure keeps
/// the rows for the next drain (of this process or another: rows are taken `SKIP LOCKED`).
pub fn spawn_drainer(
    pg: PgPool,
    cache: std::sync::Arc<Cache>,
    wake: std::sync::Arc<tokio::sync::Notify>,
    config: DrainConfig,
) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            if pg.is_closed() {
                return;
            }
            match drain(&pg, &cache, config.batch).await {
                Ok(taken) => {
                    if failures > 0 {
                        tracing::info!(failures, "cache invalidation works again");
                    }
                    failures = 0;
                    if taken >= config.batch {
                        continue;
                    }
                    tokio::time::sleep(config.gap).await;
                    let _ = tokio::time::timeout(config.poll, wake.notified()).await;
                }
                Err(_) if pg.is_closed() => return,
                Err(e) => {
                    failures += 1;
                    metrics::counter!(m::CACHE_INVALIDATION_ERRORS).increment(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cache invalidation failed; the changes are kept and retried");
                    }
                    tokio::time::sleep(Duration::from_millis(100) * failures.min(10)).await;
                }
            }
        }
    });
}

/// Deletes change rows older than `ttl`: every entry cached before such a change has expired,
/// so nothing needs them. The app runs it every minute in every process, so the table stays
/// small where no drainer runs (cache disabled) or Redis is away.
pub async fn prune_changes(pg: PgPool, ttl: Duration) -> Result<u64, crate::infra::db::DbError> {
    let done = sqlx::query(
        "DELETE FROM cache.changes
         WHERE created_at < now() - make_interval(secs => $1::double precision)",
    )
    .bind(ttl.as_secs_f64())
    .execute(&pg)
    .await?;
    Ok(done.rows_affected())
}

/// What stopped a drain (its rows stay in the table).
#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// One drain: takes up to `batch` change rows, invalidates their entries, commits the delete.
/// Returns how many rows it took.
async fn drain(pg: &PgPool, cache: &Cache, batch: i64) -> Result<i64, DrainError> {
    // One round trip for both. Losing this commit in a server crash only means the entries
    // are invalidated again.
    let mut tx = pg
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    let rows: Vec<Vec<String>> = sqlx::query_scalar(
        "DELETE FROM cache.changes WHERE id IN (
             SELECT id FROM cache.changes ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING entries",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    cache.invalidate(&hashes_of(rows.iter().flatten())).await?;
    tx.commit().await?;
    Ok(rows.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_change_invalidates_the_listing_once() {
        let changed = ["product:A", "product:B", "order:1", "product:A"].map(String::from);
        assert_eq!(
            hashes_of(&changed),
            [PRODUCT_PAGES, "product:A", "product:B", "order:1"]
        );
    }
}
