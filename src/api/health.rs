//! Operations endpoints: liveness, readiness (PostgreSQL, Kafka, Redis, S3) and Prometheus
//! metrics.

use std::time::Duration;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{ApiContext, with_ctx};
use crate::infra::{db, kafka, redis, s3};

#[derive(Debug, Serialize)]
pub struct Check {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub checks: std::collections::BTreeMap<&'static str, Check>,
    /// The circuit breakers of this process (`closed`, `half_open`, `open`).
    pub circuits: std::collections::BTreeMap<&'static str, crate::infra::circuit::State>,
}

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "live"})).into_response());
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .then(|ctx: ApiContext| async move {
            let r = readiness(&ctx).await;
            let code = if r.status == "ready" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&r), code).into_response()
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_ctx(ctx))
        .map(|ctx: ApiContext| {
            warp::reply::with_header(
                ctx.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        });
    live.or(ready).unify().or(metrics).unify().boxed()
}

/// Probes every dependency concurrently, each bounded by `http.ready_timeout_ms`.
pub async fn readiness(ctx: &ApiContext) -> Readiness {
    let timeout = Duration::from_millis(ctx.config.http.ready_timeout_ms);
    let bounded = |f| async move {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(())) => Check {
                status: "up",
                error: None,
            },
            Ok(Err(e)) => Check {
                status: "down",
                error: Some(e),
            },
            Err(_) => Check {
                status: "down",
                error: Some(format!("no answer within {timeout:?}")),
            },
        }
    };
    let (pg, kf, rd, s3c) = tokio::join!(
        bounded(
            Box::pin(async { db::ping(&ctx.pool).await.map_err(|e| e.to_string()) })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        ),
        bounded(Box::pin(async {
            kafka::probe(&ctx.producer, timeout)
                .await
                .map_err(|e| e.to_string())
        })),
        bounded(Box::pin(async {
            redis::ping(&ctx.redis).await.map_err(|e| e.to_string())
        })),
        bounded(Box::pin(async {
            s3::probe(&ctx.s3, &ctx.config.s3.bucket)
                .await
                .map_err(|e| e.to_string())
        })),
    );
    let mut checks = std::collections::BTreeMap::new();
    checks.insert("postgres", pg);
    checks.insert("kafka", kf);
    checks.insert("redis", rd);
    checks.insert("s3", s3c);
    let status = if checks.values().all(|c| c.status == "up") {
        "ready"
    } else {
        "unready"
    };
    let circuits = [&ctx.s3_breaker, &ctx.smtp_breaker]
        .into_iter()
        .map(|b| (b.dependency(), b.state()))
        .collect();
    Readiness {
        status,
        checks,
        circuits,
    }
}
