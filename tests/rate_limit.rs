//! Rate limits shared by every instance through the real Redis: 429 with Retry-After and
//! RateLimit headers once a subject's budget is spent, the budget shared by two processes,
//! other subjects unaffected, the budget back after Retry-After, and both Redis failure modes.

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use orderflow::auth::scopes;
use orderflow::config::{FailMode, Limit, SecretUrl};
use support::{TestEnv, client_as};

async fn status(http: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap) {
    let resp = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (resp.status().as_u16(), resp.headers().clone())
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_subjects_budget_is_shared_by_every_instance_and_refills() {
    let mut env = TestEnv::new().await;
    env.config.rate_limit.enabled = true;
    // 1 request per second, 4 at once, on GET /v1/products; the default IP limit.
    env.config.rate_limit.routes.insert(
        "GET /v1/products".into(),
        Limit {
            per_second: 1.0,
            burst: 4,
        },
    );
    let a = env.spawn(&[Service::Api]).await;
    let b = env.spawn(&[Service::Api]).await;
    let alice = client_as("alice", &[scopes::CATALOG_READ]);
    let bob = client_as("bob", &[scopes::CATALOG_READ]);
    // Four requests fit, spread over both instances; the fifth is refused wherever it goes.
    let mut codes = Vec::new();
    for i in 0..4 {
        let app = if i % 2 == 0 { &a } else { &b };
        codes.push(status(&alice, &app.url("/v1/products")).await.0);
    }
    assert_eq!(codes, vec![200; 4]);
    let (code, headers) = status(&alice, &b.url("/v1/products")).await;
    assert_eq!(code, 429);
    assert_eq!(header(&headers, "retry-after"), "1", "{headers:?}");
    assert_eq!(header(&headers, "ratelimit-limit"), "4");
    assert_eq!(header(&headers, "ratelimit-remaining"), "0");
    assert_eq!(header(&headers, "ratelimit-policy"), "4;w=4");
    assert_eq!(header(&headers, "content-type"), "application/problem+json");
    assert_eq!(status(&alice, &a.url("/v1/products")).await.0, 429);
    // Another subject has its own budget.
    assert_eq!(status(&bob, &a.url("/v1/products")).await.0, 200);
    // Other routes have theirs (the default per-subject limit).
    assert_eq!(
        status(
            &client_as("alice", &[scopes::ORDERS_READ]),
            &a.url("/v1/orders")
        )
        .await
        .0,
        200
    );
    // After Retry-After one more fits.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(status(&alice, &a.url("/v1/products")).await.0, 200);
    drop((a, b));
    env.cleanup().await;
}

#[tokio::test]
async fn the_client_ip_has_a_limit_before_any_token_is_checked() {
    let mut env = TestEnv::new().await;
    env.config.rate_limit.enabled = true;
    env.config.rate_limit.per_ip = Limit {
        per_second: 1.0,
        burst: 3,
    };
    let app = env.spawn(&[Service::Api]).await;
    // Requests without a token count against the IP too (401 until the budget is spent).
    let anonymous = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(status(&anonymous, &app.url("/v1/products")).await.0);
    }
    assert_eq!(codes, vec![401, 401, 401, 429]);
    let admin = support::admin_client();
    assert_eq!(status(&admin, &app.url("/v1/products")).await.0, 429);
    // Health probes are not limited.
    assert_eq!(status(&anonymous, &app.url("/health/live")).await.0, 200);
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn redis_unreachable_fails_open_or_closed_as_configured() {
    let mut env = TestEnv::new().await;
    env.config.rate_limit.enabled = true;
    // Nothing listens there.
    env.config.redis.url = SecretUrl::new(format!("redis://127.0.0.1:{}", support::free_port()));
    env.config.rate_limit.on_redis_error = FailMode::Open;
    let open = env.spawn(&[Service::Api]).await;
    env.config.rate_limit.on_redis_error = FailMode::Closed;
    let closed = env.spawn(&[Service::Api]).await;
    let http = support::admin_client();
    assert_eq!(status(&http, &open.url("/v1/products")).await.0, 200);
    let resp = http
        .get(closed.url("/v1/products"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(body["code"], "service_unavailable");
    assert!(
        !body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "internal detail leaked: {body}"
    );
    // Both count what happened.
    let metrics = reqwest::get(open.url("/metrics"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        metrics.contains("orderflow_rate_limit_errors_total{mode=\"open\"}"),
        "{metrics}"
    );
    drop((open, closed));
    env.cleanup().await;
}
