//! The payment service against the real servers: the local card network's rules, one charge
//! per order whatever is redelivered, refunds, and `GET /v1/orders/{id}/payment`.

mod support;

use std::time::Duration;

use chrono::Utc;
use orderflow::actors::Service;
use orderflow::domain::envelope::{
    AuthorizePayment, Envelope, PaymentAuthorized, RefundPayment, topics,
};
use orderflow::domain::ids::OrderId;
use orderflow::domain::money::Currency;
use serde_json::Value;
use support::{Seen, TestEnv, eventually, publish, publish_all, read_topic};

const WAIT: Duration = Duration::from_secs(60);

fn authorize(order: OrderId, amount_minor: i64, card_token: &str) -> Envelope {
    let currency = Currency::parse("EUR").unwrap_or_else(|| unreachable!());
    Envelope::new(
        order,
        &AuthorizePayment {
            amount_minor,
            currency,
            card_token: card_token.into(),
        },
        Utc::now(),
    )
}

fn reply_for(seen: &[Seen], order: OrderId) -> &Seen {
    seen.iter()
        .find(|r| r.envelope.order_id == order)
        .unwrap_or_else(|| panic!("no reply for {order}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_network_approves_declines_and_limits_by_its_rules() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Api, Service::Payment]).await;
    let cases = [
        ("tok_visa", 1_999, "PaymentAuthorized", None),
        ("tok_mastercard", 25_000, "PaymentAuthorized", None),
        (
            "tok_decline",
            1_000,
            "PaymentDeclined",
            Some("card_declined"),
        ),
        (
            "tok_insufficient_funds",
            1_000,
            "PaymentDeclined",
            Some("insufficient_funds"),
        ),
        (
            "tok_visa",
            500_001,
            "PaymentDeclined",
            Some("amount_limit_exceeded"),
        ),
        ("tok_bogus", 1_000, "PaymentDeclined", Some("invalid_card")),
    ];
    let orders: Vec<OrderId> = cases.iter().map(|_| OrderId::new()).collect();
    let commands: Vec<Envelope> = cases
        .iter()
        .zip(&orders)
        .map(|((token, amount, _, _), order)| authorize(*order, *amount, token))
        .collect();
    publish_all(&env.config, topics::PAYMENT_COMMANDS, &commands).await;
    let seen = read_topic(&env.config, topics::PAYMENT_EVENTS, WAIT, |s| {
        s.len() >= cases.len()
    })
    .await;
    for ((token, amount, kind, reason), order) in cases.iter().zip(&orders) {
        let reply = reply_for(&seen, *order);
        assert_eq!(&reply.envelope.kind, kind, "{token} {amount}");
        if let Some(reason) = reason {
            assert_eq!(
                reply.envelope.payload["reason"], *reason,
                "{token} {amount}"
            );
        }
        let payment = app.get_json(&format!("/v1/orders/{order}/payment")).await;
        let status = if *kind == "PaymentAuthorized" {
            "AUTHORIZED"
        } else {
            "DECLINED"
        };
        assert_eq!(payment["status"], status, "{token}");
        assert_eq!(payment["amount_minor"], *amount);
        assert!(
            payment.get("card_token").is_none(),
            "card tokens are not exposed"
        );
    }
    for (path, status, code) in [
        (
            format!("/v1/orders/{}/payment", OrderId::new()),
            404,
            "payment_not_found",
        ),
        (
            "/v1/orders/nope/payment".to_owned(),
            400,
            "invalid_order_id",
        ),
    ] {
        let resp = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status);
        let problem: Value = resp.json().await.unwrap_or_default();
        assert_eq!(problem["code"], code);
    }
    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_repeated_authorizations_charge_once() {
    let env = TestEnv::new().await;
    let app = env.spawn(&[Service::Payment]).await;
    let order = OrderId::new();
    let command = authorize(order, 4_200, "tok_visa");
    publish_all(&env.config, topics::PAYMENT_COMMANDS, &vec![command; 5]).await;
    // A new message for the same order (a saga retry) gets the same answer, not a new charge.
    publish(
        &env.config,
        topics::PAYMENT_COMMANDS,
        &authorize(order, 4_200, "tok_visa"),
    )
    .await;
    let group = env.config.group("payment");
    eventually(WAIT, "all six commands are consumed", || async {
        support::group_caught_up(&env.config, &group, topics::PAYMENT_COMMANDS).then_some(())
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM card_network.charges").await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM payment.payments").await, 1);
    let seen = read_topic(&env.config, topics::PAYMENT_EVENTS, WAIT, |s| s.len() >= 2).await;
    let refs: Vec<String> = seen
        .iter()
        .map(|r| {
            r.envelope
                .payload_as::<PaymentAuthorized>()
                .map(|p| p.provider_ref)
                .unwrap_or_default()
        })
        .collect();
    assert!(
        refs.iter().all(|r| r == &refs[0] && r.starts_with("ch_")),
        "{refs:?}"
    );

    // Refund gives the money back once.
    let refund = Envelope::new(
        order,
        &RefundPayment {
            reason: "cancelled".into(),
        },
        Utc::now(),
    );
    publish_all(
        &env.config,
        topics::PAYMENT_COMMANDS,
        &[refund.clone(), refund],
    )
    .await;
    eventually(WAIT, "the refund is recorded", || async {
        (env.count("SELECT count(*) FROM payment.payments WHERE status = 'REFUNDED'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM card_network.charges WHERE refunded")
            .await,
        1
    );
    let seen = read_topic(&env.config, topics::PAYMENT_EVENTS, WAIT, |s| {
        s.iter().any(|r| r.envelope.kind == "PaymentRefunded")
    })
    .await;
    let refunded = seen
        .iter()
        .find(|r| r.envelope.kind == "PaymentRefunded")
        .unwrap_or_else(|| unreachable!());
    assert_eq!(refunded.envelope.payload["refunded_minor"], 4_200);
    // One reply per distinct message, none for the copies: the writers publish only the rows
    // their statements wrote (two authorizations answered, one refund).
    eventually(WAIT, "the refund copies are consumed", || async {
        support::group_caught_up(&env.config, &group, topics::PAYMENT_COMMANDS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(support::topic_size(&env.config, topics::PAYMENT_EVENTS), 3);
    app.app.shutdown().await;
    env.cleanup().await;
}

/// The batch path of the payment decisions, straight against PostgreSQL: one group holding a
/// message twice, two messages for one order and a message for another order stores each
/// message once, one payment per order (the first decision wins) and one reply per message.
#[tokio::test]
async fn a_group_of_decisions_with_duplicates_stores_each_message_once() {
    use orderflow::domain::envelope::PaymentDeclined;
    use orderflow::infra::db::messaging::Schema;
    use orderflow::infra::db::payment::{Handling, NewPayment, PaymentDecisions};

    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let writers = support::writers(&env.pool);
    let decisions = PaymentDecisions::start(writers.get(Schema::Payment).clone(), 16);
    let (a, b) = (OrderId::new(), OrderId::new());
    let (m1, m2, m3) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let h = |message_id| Handling {
        consumer: "payment-commands",
        message_id,
        traceparent: None,
    };
    let pay = |order_id, approved| NewPayment {
        order_id,
        approved,
        amount_minor: 1_000,
        currency: "EUR",
        card_token: "tok_visa",
        provider_ref: approved.then_some("ref-1"),
        decline_reason: (!approved).then_some("card_declined"),
    };
    let approved = PaymentAuthorized {
        amount_minor: 1_000,
        currency: Currency::parse("EUR").unwrap_or_else(|| unreachable!()),
        provider_ref: "ref-1".into(),
    };
    let declined = PaymentDeclined {
        reason: "card_declined".into(),
    };
    let (h1, h2, h3) = (h(m1), h(m2), h(m3));
    let (pa_yes, pa_no, pb_yes) = (pay(a, true), pay(a, false), pay(b, true));
    // On this single-threaded runtime all four are queued before the group task runs, so they
    // are written as one group.
    let results = futures::future::join_all([
        Box::pin(decisions.record(&h1, &pa_yes, &approved))
            as std::pin::Pin<Box<dyn Future<Output = _>>>,
        Box::pin(decisions.record(&h1, &pa_yes, &approved)),
        Box::pin(decisions.record(&h2, &pa_no, &declined)),
        Box::pin(decisions.record(&h3, &pb_yes, &approved)),
    ])
    .await;
    let fresh: Vec<Option<bool>> = results.iter().map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(fresh, [Some(true), Some(false), Some(true), Some(true)]);
    assert_eq!(env.count("SELECT count(*) FROM payment.inbox").await, 3);
    assert_eq!(env.count("SELECT count(*) FROM payment.outbox").await, 3);
    assert_eq!(
        env.count("SELECT count(*) FROM payment.payments WHERE status = 'AUTHORIZED'")
            .await,
        2,
        "the first decision for order a wins over the later decline"
    );
    // Alone and later, a message handled before changes nothing.
    let again = decisions.record(&h2, &pa_no, &declined).await;
    assert_eq!(again.ok(), Some(false));
    assert_eq!(env.count("SELECT count(*) FROM payment.outbox").await, 3);
    env.cleanup().await;
}

/// The local card network's ledger writes concurrent charges as sets (one statement each):
/// every key is charged once and answers the same whatever set or process asks again, and a
/// key asked twice at once is answered with its first charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_charges_are_written_as_sets_and_each_key_answers_once() {
    use orderflow::infra::payment_provider::{
        AuthorizeRequest, Decision, LocalCardNetwork, LocalNetworkRules, PaymentProvider,
    };

    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let rules = LocalNetworkRules {
        latency: Duration::ZERO,
        slow_latency: Duration::ZERO,
        amount_limit_minor: 10_000,
    };
    let network = LocalCardNetwork::new(env.pool.clone(), rules.clone());
    let request = |i: usize| AuthorizeRequest {
        idempotency_key: format!("order-{}", i % 40),
        amount_minor: 100,
        currency: "EUR".into(),
        card_token: if i % 40 == 7 {
            "tok_decline"
        } else {
            "tok_visa"
        }
        .into(),
    };
    // 120 requests for 40 keys at once: each key asked three times.
    let answers = futures::future::join_all((0..120).map(|i| {
        let (network, request) = (&network, request(i));
        async move { network.authorize(&request).await }
    }))
    .await;
    let answers: Vec<Decision> = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for i in 0..40 {
        assert_eq!(answers[i], answers[i + 40], "key {i}");
        assert_eq!(answers[i], answers[i + 80], "key {i}");
    }
    assert_eq!(
        answers[7],
        Decision::Declined {
            code: "card_declined".into()
        }
    );
    assert!(matches!(answers[8], Decision::Approved { .. }));
    assert_eq!(
        env.count("SELECT count(*) FROM card_network.charges").await,
        40
    );
    // Another instance (another process) gets the recorded answers.
    let other = LocalCardNetwork::new(env.pool.clone(), rules);
    let again = other
        .authorize(&request(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, answers[3]);
    env.cleanup().await;
}
