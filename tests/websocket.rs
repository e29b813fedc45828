//! `GET /v1/orders/{id}/events`: the websocket sends the current state, then each event of the
//! saga, and closes after the terminal one — also when another process runs the saga.

mod support;

use std::time::Duration;

use futures::StreamExt;
use orderflow::actors::Service;
use serde_json::Value;
use support::{TestApp, TestEnv, order_body};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads every text message until the server closes the socket.
async fn collect(app: &TestApp, id: &str) -> Vec<Value> {
    let (socket, first) = open(app, id).await;
    rest(socket, first).await
}

/// Opens the order's stream and reads its first message (the state): from then on the hub
/// forwards the order's events, since the server subscribes before it reads the state.
async fn open(app: &TestApp, id: &str) -> (Socket, Vec<Value>) {
    let url = format!(
        "{}/v1/orders/{id}/events",
        app.base.replacen("http://", "ws://", 1)
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    // Without a token the upgrade is refused before it happens.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "an unauthenticated upgrade was not refused with 401"
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .unwrap_or_else(|e| panic!("{e}"));
    let token = support::token(
        "test-admin",
        &[
            orderflow::auth::scopes::ORDERS_ADMIN,
            orderflow::auth::scopes::ORDERS_READ,
        ],
    );
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|e| panic!("websocket connect: {e}"));
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => {
                    break vec![serde_json::from_str(t.as_str()).unwrap_or(Value::Null)];
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break Vec::new(),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream of {id} sent nothing"));
    (socket, first)
}

/// Reads the rest of the stream until the server closes it.
async fn rest(mut socket: Socket, mut messages: Vec<Value>) -> Vec<Value> {
    let read = async {
        while let Some(msg) = socket.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    messages.push(serde_json::from_str(t.as_str()).unwrap_or(Value::Null))
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("the stream did not close"));
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_follows_an_order_handled_by_another_process() {
    let mut env = TestEnv::new().await;
    env.config.payment.latency_ms = 300;
    // The API process runs no saga; the worker process runs every service but the API. It
    // starts once the stream is open, so every saga event comes after the subscription.
    let edge = env.spawn(&[Service::Api]).await;
    support::create_product(&edge.base, "WS", 250, 5).await;
    let resp = edge
        .place_order(&order_body("ws-client", &[("WS", 2)]))
        .await;
    let id: Value = resp.json().await.unwrap_or_default();
    let id = id["order_id"].as_str().unwrap_or_default().to_owned();

    let (socket, first) = open(&edge, &id).await;
    let workers = env
        .spawn(&[Service::Order, Service::Inventory, Service::Payment])
        .await;
    let messages = rest(socket, first).await;
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds.first(), Some(&"state"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"OrderConfirmed"), "{kinds:?}");
    for expected in ["StockReserved", "PaymentAuthorized"] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    assert!(
        messages
            .iter()
            .skip(1)
            .all(|m| m["order_id"] == id.as_str())
    );

    // A finished order: its state, then the stream closes at once.
    let messages = collect(&edge, &id).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["order"]["status"], "CONFIRMED");

    // Unknown and malformed ids are refused before the upgrade.
    for (path, status) in [
        (format!("/v1/orders/{}/events", uuid::Uuid::now_v7()), 404),
        ("/v1/orders/nope/events".to_owned(), 400),
    ] {
        let resp = edge
            .http
            .get(edge.url(&path))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    workers.app.shutdown().await;
    edge.app.shutdown().await;
    env.cleanup().await;
}
