//! The notification service against the real SMTP sink (mailpit): one mail per customer-visible
//! event to the order's address, nothing twice on redelivery, a log per order, and orders
//! without an address logged as skipped; log attempts and recipients written in groups.

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use orderflow::domain::envelope::topics;
use serde_json::{Value, json};
use support::{TestApp, TestEnv, eventually};

const WAIT: Duration = Duration::from_secs(60);
const ALL: &[Service] = &[
    Service::Api,
    Service::Order,
    Service::Inventory,
    Service::Payment,
    Service::File,
    Service::Notification,
];

async fn order(app: &TestApp, sku: &str, card: &str, email: Option<&str>) -> String {
    let mut body = support::order_body("mail-customer", &[(sku, 1)]);
    body["card_token"] = json!(card);
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    app.place_order_id(&body).await
}

/// Subjects of the mails the sink received for `address`.
async fn mails_to(address: &str) -> Vec<String> {
    let base = std::env::var("ORDERFLOW_MAILPIT_URL")
        .unwrap_or_else(|_| panic!("ORDERFLOW_MAILPIT_URL is not set: run through ./scripts/test"));
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/search"))
        .query(&[("query", format!("to:{address}")), ("limit", "50".into())])
        .send()
        .await
        .unwrap_or_else(|e| panic!("mailpit: {e}"))
        .json()
        .await
        .unwrap_or_default();
    let mut subjects: Vec<String> = v["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|m| {
            m["To"]
                .as_array()
                .is_some_and(|to| to.iter().any(|t| t["Address"] == address))
        })
        .map(|m| m["Subject"].as_str().unwrap_or_default().to_owned())
        .collect();
    subjects.sort();
    subjects
}

async fn log(app: &TestApp, id: &str) -> Vec<(String, String)> {
    let v = app
        .get_json(&format!("/v1/orders/{id}/notifications"))
        .await;
    let mut entries: Vec<(String, String)> = v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            (
                i["template"].as_str().unwrap_or_default().to_owned(),
                i["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_event_mails_its_customer_once() {
    let env = TestEnv::new().await;
    let app = env.spawn(ALL).await;
    support::create_product(&app.base, "LAMP", 4_500, 10).await;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let buyer = format!("buyer-{tag}@example.com");
    let unlucky = format!("declined-{tag}@example.com");

    let id = order(&app, "LAMP", "tok_visa", Some(&buyer)).await;
    let short = &id.replace('-', "")[24..];
    let expected = vec![
        format!("Your invoice for order {short}"),
        format!("Your order {short} is confirmed"),
    ];
    eventually(
        WAIT,
        "the confirmation and the invoice are mailed",
        || async { (mails_to(&buyer).await == expected).then_some(()) },
    )
    .await;
    // The mail reaches the sink before the log row that records it commits.
    let sent = vec![
        ("invoice_ready".to_owned(), "SENT".to_owned()),
        ("order_confirmed".to_owned(), "SENT".to_owned()),
    ];
    eventually(WAIT, "both mails are logged as sent", || async {
        (log(&app, &id).await == sent).then_some(())
    })
    .await;

    // The confirmation delivered three more times: no second mail.
    support::redeliver(&env.config, topics::ORDER_EVENTS, "OrderConfirmed", 3).await;
    eventually(WAIT, "the redeliveries are handled", || async {
        support::group_caught_up(
            &env.config,
            &env.config.group("notification"),
            topics::ORDER_EVENTS,
        )
        .then_some(())
    })
    .await;
    assert_eq!(mails_to(&buyer).await, expected, "nothing mailed twice");

    // A declined payment: one cancellation mail, no invoice.
    let declined = order(&app, "LAMP", "tok_decline", Some(&unlucky)).await;
    let short = &declined.replace('-', "")[24..];
    eventually(WAIT, "the cancellation is mailed", || async {
        (mails_to(&unlucky).await == vec![format!("Your order {short} was cancelled")])
            .then_some(())
    })
    .await;

    // No address: the events are logged as skipped and nothing is mailed.
    let silent = order(&app, "LAMP", "tok_visa", None).await;
    eventually(
        WAIT,
        "the silent order's notifications are skipped",
        || async {
            (log(&app, &silent).await
                == vec![
                    ("invoice_ready".to_owned(), "SKIPPED".to_owned()),
                    ("order_confirmed".to_owned(), "SKIPPED".to_owned()),
                ])
            .then_some(())
        },
    )
    .await;

    // A bad address is refused at intake.
    let bad = app
        .http
        .post(app.url("/v1/orders"))
        .json(&json!({
            "customer_id": "c", "currency": "EUR", "email": "not an address",
            "lines": [{"sku": "LAMP", "quantity": 1}],
        }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status().as_u16(), 422);
    let problem: Value = bad.json().await.unwrap_or_default();
    assert_eq!(problem["code"], "invalid_email");

    app.app.shutdown().await;
    env.cleanup().await;
}

/// Attempts handed in together are written as one group: a failed attempt then a sent one of
/// the same event end SENT after two attempts (they cannot share a statement, so they are
/// written one group after the other), a SKIPPED row is never changed again, and recipients
/// submitted twice keep the first address.
#[tokio::test]
async fn log_attempts_written_together_keep_the_first_final_status() {
    use orderflow::infra::db::notifications::{Attempt, NotificationWrites};

    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let writers = support::writers(&env.pool);
    let writes = NotificationWrites::start(writers.notifications().clone(), 16);
    let order = uuid::Uuid::now_v7();
    let (confirmed, cancelled) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let attempt = |event, template, status: &'static str| Attempt {
        event_id: event,
        template,
        order_id: order,
        recipient: Some("a@example.com".into()),
        subject: "subject".into(),
        status,
        error: (status == "FAILING").then(|| "smtp down".into()),
    };
    let results = futures::future::join_all([
        writes.remember_recipient(order, "c-1".into(), Some("a@example.com".into())),
        writes.remember_recipient(order, "c-1".into(), Some("b@example.com".into())),
    ])
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let results = futures::future::join_all([
        writes.log(attempt(confirmed, "order_confirmed", "FAILING")),
        writes.log(attempt(confirmed, "order_confirmed", "SENT")),
        writes.log(attempt(cancelled, "order_cancelled", "SKIPPED")),
    ])
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    writes
        .log(attempt(cancelled, "order_cancelled", "FAILING"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT template, status, attempts FROM notifications.log WHERE order_id = $1
         ORDER BY template",
    )
    .bind(order)
    .fetch_all(&env.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rows,
        [
            ("order_cancelled".to_owned(), "SKIPPED".to_owned(), 1),
            ("order_confirmed".to_owned(), "SENT".to_owned(), 2),
        ]
    );
    let email: Option<String> =
        sqlx::query_scalar("SELECT email FROM notifications.recipients WHERE order_id = $1")
            .bind(order)
            .fetch_one(&env.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(email.as_deref(), Some("a@example.com"));
    env.cleanup().await;
}

/// The notification service's batch contract against the real SMTP sink and PostgreSQL: in one
/// batch an order's `OrderPlaced` is remembered before its confirmation is mailed, a redelivered
/// event mails nothing twice, an order without an address is logged SKIPPED, and an event whose
/// order is not known yet fails alone (retried by its bridge) without failing the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mails_each_event_once_and_fails_only_the_unknown_order() {
    use orderflow::actors::batch::{BatchHandler, Message};
    use orderflow::actors::bridge::{HandleError, Handled};
    use orderflow::actors::notifications::handler::NotificationHandler;
    use orderflow::domain::envelope::{Envelope, OrderConfirmed, OrderPlaced};
    use orderflow::domain::ids::{CustomerId, OrderId};
    use orderflow::domain::money::Currency;
    use orderflow::infra::{circuit::CircuitBreaker, smtp::Mailer};
    use std::sync::Arc;

    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let mailer = Mailer::new(&env.config.smtp).unwrap_or_else(|e| panic!("mailer: {e}"));
    let breaker = Arc::new(CircuitBreaker::new("smtp", 5, Duration::from_secs(5)));
    let handler = NotificationHandler::new(
        &env.config,
        env.pool.clone(),
        mailer,
        breaker,
        support::writers(&env.pool),
    );
    let eur = Currency::parse("EUR").unwrap_or_else(|| unreachable!());
    let now = chrono::Utc::now();
    let buyer = format!("batch-{}@example.test", uuid::Uuid::now_v7().simple());
    let placed = |order, email: Option<&str>| {
        Envelope::new(
            order,
            &OrderPlaced {
                customer_id: CustomerId::parse("batch-customer").unwrap_or_else(|| unreachable!()),
                currency: eur,
                lines: vec![],
                card_token: None,
                email: email.map(str::to_owned),
            },
            now,
        )
    };
    let confirmed = |order| {
        Envelope::new(
            order,
            &OrderConfirmed {
                total_minor: 1_250,
                currency: eur,
                customer_id: None,
                lines: vec![],
            },
            now,
        )
    };
    let (a, b, unknown) = (OrderId::new(), OrderId::new(), OrderId::new());
    let confirmed_a = confirmed(a);
    let batch: Vec<Message> = [
        placed(a, Some(&buyer)),
        confirmed_a.clone(),
        confirmed_a,
        placed(b, None),
        confirmed(b),
        confirmed(unknown),
    ]
    .into_iter()
    .map(|envelope| Message {
        envelope,
        traceparent: None,
    })
    .collect();

    let results = handler.handle_batch(&batch).await;
    assert_eq!(
        results[..5],
        [
            Ok(Handled::Applied),
            Ok(Handled::Applied),
            Ok(Handled::Duplicate),
            Ok(Handled::Applied),
            Ok(Handled::Applied),
        ]
    );
    assert!(
        matches!(results[5], Err(HandleError::Transient(_))),
        "{:?}",
        results[5]
    );

    let again = handler.handle_batch(&batch).await;
    assert_eq!(again[1], Ok(Handled::Duplicate), "{again:?}");
    assert_eq!(again[4], Ok(Handled::Duplicate), "{again:?}");
    let logged = env
        .count("SELECT count(*) FROM notifications.log WHERE status IN ('SENT', 'SKIPPED')")
        .await;
    assert_eq!(logged, 2, "one SENT for the address, one SKIPPED without");
    eventually(WAIT, "the confirmation reaches the sink", || async {
        (mails_to(&buyer).await.len() == 1).then_some(())
    })
    .await;
    // Every send finished (accepted by the sink) before `handle_batch` returned.
    assert_eq!(mails_to(&buyer).await.len(), 1, "nothing mailed twice");
    env.cleanup().await;
}
