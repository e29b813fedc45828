//! The OpenAPI document and the docs page as the server serves them (the fuzz run of
//! scripts/fuzz-api checks the server against the document).

mod support;

use orderflow::actors::Service;
use support::TestEnv;

#[tokio::test]
async fn the_document_and_its_docs_page_are_served_without_a_token() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    let http = reqwest::Client::new();
    let doc: serde_json::Value = http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/orders"]["post"]["requestBody"].is_object());
    assert_eq!(
        doc["components"]["schemas"]["PlaceOrder"]["properties"]["currency"]["enum"][0],
        "AUD"
    );
    let page = http
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap_or_default();
    assert!(html.contains("/openapi.json") && html.contains("/docs/swagger-ui-bundle.js"));
    // The assets come from the npm package scripts/docs-assets installed (scripts/test runs it).
    for (asset, kind) in [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
    ] {
        let resp = http
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{asset}: run scripts/docs-assets"
        );
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with(kind), "{asset}: {ct}");
        assert!(resp.bytes().await.map(|b| b.len()).unwrap_or(0) > 10_000);
    }
    // Nothing else is served from the assets directory.
    let other = http
        .get(app.url("/docs/..%2F..%2Fetc%2Fpasswd"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other.status().as_u16(), 404);
    // A 405 names the methods the route takes.
    let resp = http
        .delete(app.url("/v1/orders"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn browsers_of_the_configured_origins_may_call_the_api_and_no_others() {
    let mut env = TestEnv::new().await;
    env.config.http.cors_allowed_origins = vec!["https://shop.example.com".into()];
    let app = env.spawn(&[Service::Api]).await;
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, app.url("/v1/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, idempotency-key",
            )
            .send()
    };
    let ok = preflight("https://shop.example.com")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://shop.example.com")
    );
    let refused = preflight("https://evil.example.net")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status().as_u16(), 403);
    let body: serde_json::Value = refused.json().await.unwrap_or_default();
    assert_eq!(body["code"], "cors_forbidden");
    // An actual request from the allowed origin carries the header, and its errors too.
    let resp = support::admin_client()
        .get(app.url("/v1/orders"))
        .header("origin", "https://shop.example.com")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().contains_key("access-control-allow-origin"));
    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn the_server_bounds_request_heads_and_response_deadlines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = TestEnv::new().await;
    env.config.http.header_read_timeout_ms = 500;
    env.config.http.max_header_bytes = 16 * 1024;
    let app = env.spawn(&[Service::Api]).await;
    // A head larger than the limit: 431.
    let resp = reqwest::Client::new()
        .get(app.url("/health/live"))
        .header("x-padding", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 431);
    // A client that never finishes its head is cut off after the header read timeout.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(closed.is_ok(), "a slow head kept its connection open");
    drop(app);

    // A response that cannot start within the deadline: 503 deadline_exceeded.
    env.config.http.request_timeout_ms = 1;
    let app = env.spawn(&[Service::Api]).await;
    let resp = reqwest::Client::new()
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(body["code"], "deadline_exceeded");
    drop(app);
    env.cleanup().await;
}
