//! PostgreSQL: the connection pool, migrations, and one repository module per service schema.

pub mod batched;
pub mod files;
pub mod group;
pub mod idempotency;
pub mod inventory;
pub mod messaging;
pub mod notifications;
pub mod orders;
pub mod payment;
pub mod reserve;
pub mod stock_commits;
pub mod writer;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("the {0} writer stopped")]
    WriterStopped(&'static str),
    #[error("the batch's commit failed: {0}")]
    BatchFailed(String),
}

/// Opens a pool. Connections are made lazily so a process starts while PostgreSQL restarts;
/// `/health/ready` reports it.
pub fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = config
        .url
        .expose()
        .parse::<PgConnectOptions>()?
        // Every statement is prepared once per connection. The set-based statements (arrays
        // of a whole group) would otherwise be planned again on every execution, because a
        // custom plan looks cheaper for each new set of arrays: planning cost as much as
        // running them (pg_stat_statements with track_planning, docs/performance.md).
        .options([("plan_cache_mode", "force_generic_plan")])
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_lazy_with(options))
}

/// Applies every pending migration (each service schema is one numbered file).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Runs `purge` every `period` (the first time at once) until `pool` closes, logging how many
/// rows it deleted (`what`) and any failure; a failed run is simply tried again next period.
pub fn spawn_purge<F, Fut>(pool: PgPool, period: Duration, what: &'static str, purge: F)
where
    F: Fn(PgPool) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, DbError>> + Send,
{
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            every.tick().await;
            if pool.is_closed() {
                return;
            }
            match purge(pool.clone()).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "{what} deleted"),
                Err(_) if pool.is_closed() => return,
                Err(e) => tracing::warn!(error = %e, "deleting {what} failed"),
            }
        }
    });
}

pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
