//! The file service against the real servers: a confirmed order gets exactly one invoice PDF in
//! S3 (real bytes, parsed back), recorded with its checksum, announced on `file.events`, and
//! downloadable through the API and through a presigned link that S3 itself verifies.

mod support;

use std::time::Duration;

use orderflow::actors::Service;
use orderflow::domain::envelope::topics;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{TestApp, TestEnv, eventually};

const WAIT: Duration = Duration::from_secs(60);
const ALL: &[Service] = support::THROUGH_FILES;

async fn order(app: &TestApp, lines: &[(&str, u32)], card: &str) -> String {
    let mut body = support::order_body("invoice-customer", lines);
    body["card_token"] = json!(card);
    app.place_order_id(&body).await
}

async fn status(app: &TestApp, id: &str) -> String {
    app.get_json(&format!("/v1/orders/{id}")).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The text a PDF shows, from the string operands of its text-showing operators.
fn pdf_text(bytes: &[u8]) -> String {
    let doc = lopdf::Document::load_mem(bytes).unwrap_or_else(|e| panic!("not a PDF: {e}"));
    let mut text = String::new();
    for (_, page) in doc.get_pages() {
        let content = doc.get_page_content(page);
        let ops = lopdf::content::Content::decode(&content)
            .unwrap_or_else(|e| panic!("content stream: {e}"));
        for op in ops.operations {
            if op.operator == "Tj" {
                for operand in op.operands {
                    if let lopdf::Object::String(s, _) = operand {
                        text.push_str(&String::from_utf8_lossy(&s));
                        text.push('\n');
                    }
                }
            }
        }
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_gets_one_invoice_pdf_in_s3_with_a_verified_download_link() {
    let env = TestEnv::new().await;
    let app = env.spawn(ALL).await;
    support::create_product(&app.base, "BOOK", 3_990, 10).await;
    support::create_product(&app.base, "MUG", 1_250, 10).await;
    let id = order(&app, &[("BOOK", 1), ("MUG", 2)], "tok_visa").await;

    // The invoice appears shortly after the order is confirmed.
    let inline = app.url(&format!("/v1/orders/{id}/invoice?inline"));
    let resp = eventually(WAIT, "the invoice is stored", || async {
        let r = app.http.get(&inline).send().await.ok()?;
        (r.status().as_u16() == 200).then_some(r)
    })
    .await;
    assert_eq!(status(&app, &id).await, "CONFIRMED");
    // The order shows its documents.
    let order = app.get_json(&format!("/v1/orders/{id}")).await;
    let hrefs: Vec<&str> = order["documents"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["href"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        hrefs.contains(&format!("/v1/orders/{id}/invoice").as_str()),
        "{order}"
    );
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/pdf")
    );
    let recorded_sha = resp
        .headers()
        .get("x-checksum-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = resp.bytes().await.unwrap_or_default().to_vec();
    let sha = hex(&Sha256::digest(&bytes));
    assert_eq!(sha, recorded_sha, "the recorded checksum is the object's");

    // A real PDF: parsed back, it names the order, its lines and the grand total.
    let text = pdf_text(&bytes);
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("Customer: invoice-customer"), "{text}");
    assert!(
        text.contains("MUG | Product MUG | 2 | 12.50 EUR | 25.00 EUR"),
        "{text}"
    );
    assert!(text.contains("Grand total: 64.90 EUR"), "{text}");
    assert!(text.contains("VAT 20% (included): 10.82 EUR"), "{text}");

    // Without `inline`: a redirect to a presigned link that downloads the same bytes, with the
    // checksum in the object's metadata.
    let no_redirect = support::client_builder_as("test-admin", &orderflow::auth::scopes::ALL)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let redirect = no_redirect
        .get(app.url(&format!("/v1/orders/{id}/invoice")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(redirect.status().as_u16(), 303);
    let location = redirect
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        location.contains(&format!("invoices/{id}/invoice.pdf")),
        "{location}"
    );
    let download = no_redirect
        .get(&location)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(
        download
            .headers()
            .get("x-amz-meta-sha256")
            .and_then(|v| v.to_str().ok()),
        Some(sha.as_str())
    );
    assert_eq!(download.bytes().await.unwrap_or_default().to_vec(), bytes);
    // S3 checks the signature: a tampered link is refused.
    let tampered = location.replacen("invoice.pdf", "invoice.pdX", 1);
    let refused = no_redirect
        .get(&tampered)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        refused.status().as_u16(),
        403,
        "a tampered link must not work"
    );

    // Redelivery of the confirmation: still one invoice, one announcement, the same bytes.
    support::redeliver(&env.config, topics::ORDER_EVENTS, "OrderConfirmed", 3).await;
    let announced = support::read_topic(&env.config, topics::FILE_EVENTS, WAIT, |seen| {
        seen.len() >= 2
    })
    .await;
    let invoice_stored: Vec<_> = announced
        .iter()
        .filter(|s| s.envelope.kind == "InvoiceStored")
        .collect();
    assert_eq!(invoice_stored.len(), 1, "{announced:?}");
    assert_eq!(invoice_stored[0].envelope.payload["sha256"], sha.as_str());
    assert!(announced.iter().any(|s| s.envelope.kind == "ReceiptStored"));
    // Give the redeliveries time to be handled (the inbox records each handled message).
    eventually(WAIT, "the redeliveries are handled", || async {
        (support::group_caught_up(&env.config, &env.config.group("file"), topics::ORDER_EVENTS))
            .then_some(())
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM files.documents WHERE kind = 'invoice'")
            .await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM files.outbox").await, 0);
    // Exactly the two announcements: nothing for the copies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(support::topic_size(&env.config, topics::FILE_EVENTS), 2);
    let again = app
        .http
        .get(&inline)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .bytes()
        .await
        .unwrap_or_default()
        .to_vec();
    assert_eq!(again, bytes, "the same object, not a second rendering");

    // The payment's receipt: its own PDF, with the amount and the card network's reference.
    let receipt = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/receipt?inline")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(receipt.status().as_u16(), 200);
    let payment = app.get_json(&format!("/v1/orders/{id}/payment")).await;
    let receipt_text = pdf_text(&receipt.bytes().await.unwrap_or_default());
    assert!(
        receipt_text.contains("Amount paid: 64.90 EUR"),
        "{receipt_text}"
    );
    assert!(
        receipt_text.contains(&format!(
            "Payment reference: {}",
            payment["provider_ref"].as_str().unwrap_or("?")
        )),
        "{receipt_text}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM files.documents WHERE kind = 'receipt'")
            .await,
        1
    );

    app.app.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_has_no_invoice() {
    let env = TestEnv::new().await;
    let app = env.spawn(ALL).await;
    support::create_product(&app.base, "GADGET", 9_900, 5).await;
    let id = order(&app, &[("GADGET", 1)], "tok_decline").await;
    eventually(WAIT, "the order is cancelled", || async {
        (status(&app, &id).await == "CANCELLED").then_some(())
    })
    .await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/invoice")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status().as_u16(), 404);
    let problem: Value = resp.json().await.unwrap_or_default();
    assert_eq!(problem["code"], "invoice_not_found");
    let no_receipt = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/receipt")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        no_receipt.status().as_u16(),
        404,
        "a declined payment has no receipt"
    );
    let bad = app
        .http
        .get(app.url("/v1/orders/not-an-id/invoice"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(env.count("SELECT count(*) FROM files.documents").await, 0);
    app.app.shutdown().await;
    env.cleanup().await;
}

/// The file service's batch contract against the real S3 server and PostgreSQL: a batch holding
/// a redelivered message and a message whose payload is not valid stores each document once,
/// fails only the bad record, and answers a later redelivery of the whole batch with duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stores_each_document_once_and_fails_only_its_bad_record() {
    use orderflow::actors::batch::{BatchHandler, Message};
    use orderflow::actors::bridge::{HandleError, Handled};
    use orderflow::actors::files::handler::{FileHandler, invoice_key, receipt_key};
    use orderflow::domain::envelope::{Envelope, OrderConfirmed, PaymentAuthorized};
    use orderflow::domain::ids::OrderId;
    use orderflow::domain::money::Currency;
    use orderflow::infra::{circuit::CircuitBreaker, s3};
    use std::sync::Arc;

    let env = TestEnv::new().await;
    orderflow::infra::db::migrate(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    let client = s3::client(&env.config.s3);
    s3::ensure_bucket(&client, &env.config.s3.bucket)
        .await
        .unwrap_or_else(|e| panic!("bucket: {e}"));
    let breaker = Arc::new(CircuitBreaker::new("s3", 5, Duration::from_secs(5)));
    let handler = FileHandler::new(
        &env.config,
        env.pool.clone(),
        client.clone(),
        breaker,
        support::writers(&env.pool),
    );
    let eur = Currency::parse("EUR").unwrap_or_else(|| unreachable!());
    let now = chrono::Utc::now();
    let confirmed = |order| {
        Envelope::new(
            order,
            &OrderConfirmed {
                total_minor: 3_990,
                currency: eur,
                customer_id: None,
                lines: vec![],
            },
            now,
        )
    };
    let (a, b) = (OrderId::new(), OrderId::new());
    let confirmed_a = confirmed(a);
    let paid_a = Envelope::new(
        a,
        &PaymentAuthorized {
            amount_minor: 3_990,
            currency: eur,
            provider_ref: "ref-a".into(),
        },
        now,
    );
    let mut bad = confirmed(OrderId::new());
    bad.payload = json!({"total_minor": "not a number"});
    let batch: Vec<Message> = [confirmed_a.clone(), paid_a, confirmed_a, bad, confirmed(b)]
        .into_iter()
        .map(|envelope| Message {
            envelope,
            traceparent: None,
        })
        .collect();

    let results = handler.handle_batch(&batch).await;
    assert_eq!(results.len(), 5);
    assert_eq!(results[0], Ok(Handled::Applied));
    assert_eq!(results[1], Ok(Handled::Applied));
    assert_eq!(
        results[2],
        Ok(Handled::Duplicate),
        "the redelivery in the batch"
    );
    assert!(
        matches!(results[3], Err(HandleError::Poison(_))),
        "{:?}",
        results[3]
    );
    assert_eq!(
        results[4],
        Ok(Handled::Applied),
        "the record after the bad one"
    );

    let again = handler.handle_batch(&batch).await;
    assert!(
        again.iter().enumerate().all(|(i, r)| if i == 3 {
            r.is_err()
        } else {
            *r == Ok(Handled::Duplicate)
        }),
        "a redelivered batch changes nothing: {again:?}"
    );
    let documents = env.count("SELECT count(*) FROM files.documents").await;
    let announcements = env.count("SELECT count(*) FROM files.outbox").await;
    assert_eq!((documents, announcements), (3, 3));
    for key in [
        invoice_key(a.as_uuid()),
        receipt_key(a.as_uuid()),
        invoice_key(b.as_uuid()),
    ] {
        let bytes = s3::get_bytes(&client, &env.config.s3.bucket, &key)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let recorded: String =
            sqlx::query_scalar("SELECT sha256 FROM files.documents WHERE object_key = $1")
                .bind(&key)
                .fetch_one(&env.pool)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(hex(&Sha256::digest(&bytes)), recorded, "{key}");
    }
    env.cleanup().await;
}
