//! OAuth2 against an issuer served over HTTP: the API discovers the issuer's JWKS, accepts
//! RS256 and ES256 tokens from it, refuses every kind of bad token with 401, a missing scope
//! with 403 and another customer's order with 404, and picks up a rotated key.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use orderflow::actors::Service;
use orderflow::auth::{Claims, SigningKey, scopes, unix_now};
use orderflow::config::{AuthConfig, AuthMode};
use serde_json::{Value, json};
use support::TestEnv;

/// An OpenID Connect issuer: a discovery document and a JWKS that the test can change.
struct Issuer {
    url: String,
    jwks: Arc<Mutex<JwkSet>>,
}

async fn issuer(keys: &[&SigningKey]) -> Issuer {
    use warp::Filter;
    let jwks = Arc::new(Mutex::new(JwkSet {
        keys: keys.iter().map(|k| k.jwk().clone()).collect(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{addr}");
    let discovery = {
        let doc = json!({ "issuer": url, "jwks_uri": format!("{url}/certs") });
        warp::path!(".well-known" / "openid-configuration").map(move || warp::reply::json(&doc))
    };
    let certs = {
        let jwks = jwks.clone();
        warp::path!("certs").map(move || {
            let set = jwks
                .lock()
                .map(|s| s.clone())
                .unwrap_or_else(|e| e.into_inner().clone());
            warp::reply::json(&set)
        })
    };
    tokio::spawn(warp::serve(discovery.or(certs)).incoming(listener).run());
    Issuer { url, jwks }
}

fn rsa_key() -> SigningKey {
    let der = std::fs::read("tests/fixtures/rs256-test-key.der").unwrap_or_else(|e| panic!("{e}"));
    SigningKey::from_rs256_der(&der).unwrap_or_else(|e| panic!("{e}"))
}

fn ec_key() -> SigningKey {
    SigningKey::generate_es256()
        .map(|(k, _)| k)
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn get(base: &str, path: &str, token: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.json().await.unwrap_or_default(), challenge)
}

fn sign(key: &SigningKey, claims: &impl serde::Serialize) -> String {
    key.sign(claims).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn tokens_from_an_oidc_issuer_guard_every_route() {
    let rsa = rsa_key();
    let ec = ec_key();
    let idp = issuer(&[&rsa, &ec]).await;
    let mut env = TestEnv::new().await;
    env.config.auth = AuthConfig {
        mode: AuthMode::Oidc,
        issuer: idp.url.clone(),
        audience: "orderflow-api".into(),
        jwks_url: String::new(),
        jwks_min_refresh_ms: 500,
        ..AuthConfig::default()
    };
    let config = env.config.auth.clone();
    let app = env.spawn(&[Service::Api]).await;
    let base = app.base.clone();
    let claims =
        |sub: &str, scopes: &[&str]| Claims::new(&config, sub, scopes, Duration::from_secs(300));
    let admin = sign(&rsa, &claims("ops", &scopes::ALL));

    // Both algorithms are accepted; the keys were discovered through the issuer.
    let (status, _, _) = get(&base, "/v1/products", Some(&admin)).await;
    assert_eq!(status, 200, "RS256 token refused");
    let ec_token = sign(&ec, &claims("ops", &[scopes::CATALOG_READ]));
    assert_eq!(
        get(&base, "/v1/products", Some(&ec_token)).await.0,
        200,
        "ES256 refused"
    );

    // No token: 401 with a Bearer challenge.
    let (status, body, challenge) = get(&base, "/v1/products", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("missing_token"))
    );
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));

    // Every kind of bad token: 401 invalid_token.
    let now = unix_now();
    let base_claims = claims("alice", &[scopes::CATALOG_READ]);
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                &rsa,
                &Claims {
                    exp: now - 600,
                    iat: now - 900,
                    ..base_claims.clone()
                },
            ),
        ),
        (
            "not yet valid",
            sign(
                &rsa,
                &Claims {
                    nbf: Some(now + 600),
                    ..base_claims.clone()
                },
            ),
        ),
        (
            "wrong issuer",
            sign(
                &rsa,
                &Claims {
                    iss: "https://elsewhere.example".into(),
                    ..base_claims.clone()
                },
            ),
        ),
        (
            "wrong audience",
            sign(
                &rsa,
                &Claims {
                    aud: "another-api".into(),
                    ..base_claims.clone()
                },
            ),
        ),
        ("bad signature", {
            let good = sign(&rsa, &base_claims);
            let forged = sign(
                &rsa,
                &Claims {
                    sub: "mallory".into(),
                    ..base_claims.clone()
                },
            );
            // alice's header and claims with the signature of another token.
            let (head, _) = good.rsplit_once('.').unwrap_or_default();
            let (_, sig) = forged.rsplit_once('.').unwrap_or_default();
            format!("{head}.{sig}")
        }),
        ("alg none", {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(serde_json::to_vec(&base_claims).unwrap_or_default())
            )
        }),
        ("unknown kid", sign(&ec_key(), &base_claims)),
        ("garbage", "not.a.token".into()),
    ];
    for (case, token) in &bad {
        let (status, body, challenge) = get(&base, "/v1/products", Some(token)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_token")),
            "{case}: {body}"
        );
        assert!(
            challenge.is_some_and(|c| c.contains(r#"error="invalid_token""#)),
            "{case}"
        );
    }

    // A valid token without the route's scope: 403.
    let reader = sign(&rsa, &claims("alice", &[scopes::CATALOG_READ]));
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/products"))
        .bearer_auth(&reader)
        .json(&json!({"sku": "X-1", "name": "x", "unit_price_minor": 100, "currency": "EUR", "on_hand": 1}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap_or_default();
    assert_eq!(body["code"], "insufficient_scope");

    // Orders belong to the token's subject: alice places one, bob cannot see or cancel it,
    // an admin can; nobody places orders in someone else's name without orders:admin.
    let customer = [scopes::ORDERS_READ, scopes::ORDERS_WRITE];
    let alice = sign(&ec, &claims("alice", &customer));
    let bob = sign(&ec, &claims("bob", &customer));
    let order = |customer: &str| json!({"customer_id": customer, "currency": "EUR", "lines": [{"sku": "X-1", "quantity": 1}]});
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&alice)
        .json(&order("alice"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 201);
    let placed: Value = resp.json().await.unwrap_or_default();
    let id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    let resp = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&bob)
        .json(&order("alice"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap_or_default();
    assert_eq!(body["code"], "customer_mismatch");

    assert_eq!(
        get(&base, &format!("/v1/orders/{id}"), Some(&alice))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&base, &format!("/v1/orders/{id}"), Some(&admin))
            .await
            .0,
        200
    );
    for path in ["", "/payment", "/invoice", "/notifications"] {
        let (status, body, _) = get(&base, &format!("/v1/orders/{id}{path}"), Some(&bob)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("order_not_found")),
            "{path}"
        );
    }
    let resp = http
        .post(format!("{base}/v1/orders/{id}/cancel"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 404, "bob cancelled alice's order");
    let (_, mine, _) = get(&base, "/v1/orders", Some(&alice)).await;
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));
    let (_, theirs, _) = get(&base, "/v1/orders", Some(&bob)).await;
    assert_eq!(theirs["items"].as_array().map(Vec::len), Some(0));
    let (_, snooping, _) = get(&base, "/v1/orders?customer_id=alice", Some(&bob)).await;
    assert_eq!(snooping["items"].as_array().map(Vec::len), Some(0));

    // Key rotation: a token signed by a key the issuer publishes later is accepted once the
    // API fetches the keys again (on the unknown kid, at most every jwks_min_refresh_ms).
    let rotated = ec_key();
    let token = sign(&rotated, &claims("ops", &[scopes::CATALOG_READ]));
    if let Ok(mut set) = idp.jwks.lock() {
        set.keys.push(rotated.jwk().clone());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(&base, "/v1/products", Some(&token)).await.0,
        200,
        "rotated key refused"
    );

    drop(app);
    env.cleanup().await;
}

#[tokio::test]
async fn the_dev_issuer_publishes_its_key_and_its_tokens_work() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api]).await;
    let (status, jwks, _) = get(&app.base, "/.well-known/jwks.json", None).await;
    assert_eq!(status, 200);
    let kid = jwks["keys"][0]["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    let token = support::token("carol", &[scopes::ORDERS_READ]);
    let header = jsonwebtoken::decode_header(&token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
    let (status, page, _) = get(&app.base, "/v1/orders", Some(&token)).await;
    assert_eq!(
        (status, page["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    // Health and metrics stay open (probes and scrapers carry no tokens).
    assert_eq!(get(&app.base, "/health/live", None).await.0, 200);
    drop(app);
    env.cleanup().await;
}
