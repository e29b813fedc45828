//! Redis: the shared connection pool (catalogue cache, idempotency keys and rate limits use it).

use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8::Pool;

use crate::config::RedisConfig;

pub type RedisPool = Pool<RedisConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis error: {0}")]
    Redis(#[from] bb8_redis::redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
}

/// Builds the pool without connecting, so the process starts while Redis is down.
pub fn pool(config: &RedisConfig) -> Result<RedisPool, RedisError> {
    let manager = RedisConnectionManager::new(config.url.expose())?;
    Ok(Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(2))
        .build_unchecked(manager))
}

pub async fn ping(pool: &RedisPool) -> Result<(), RedisError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| RedisError::Pool(e.to_string()))?;
    let pong: String = bb8_redis::redis::cmd("PING")
        .query_async(&mut *conn)
        .await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(RedisError::Pool(format!("unexpected PING reply {pong:?}")))
    }
}
