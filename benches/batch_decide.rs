//! CPU of deciding a batch in memory: 1,000 orders' replies decoded, turned into saga events,
//! applied to their sagas' states and their commands encoded as outbox envelopes — the work a
//! saga pool does per batch besides its database round trip and its producer flush. Numbers go
//! to docs/performance.md and closing notes, never into asserts.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orderflow::domain::envelope::{Envelope, PaymentAuthorized, PricedLine, StockReserved};
use orderflow::domain::ids::{CustomerId, OrderId, Sku};
use orderflow::domain::money::Currency;
use orderflow::domain::order::OrderLine;
use orderflow::domain::saga::{self, SagaEvent, SagaState};

const BATCH: usize = 1_000;

fn currency() -> Currency {
    Currency::parse("EUR").unwrap_or_else(|| panic!("EUR is an accepted currency"))
}

/// A saga that has placed its order and waits for stock.
fn reserving(i: usize) -> SagaState {
    let placed = SagaEvent::OrderPlaced {
        customer_id: CustomerId::parse(&format!("customer-{i}"))
            .unwrap_or_else(|| panic!("valid customer id")),
        currency: currency(),
        lines: vec![OrderLine {
            sku: Sku::parse(&format!("SKU-{:04}", i % 100)).unwrap_or_else(|| panic!("valid sku")),
            quantity: 1,
        }],
        card_token: "tok_visa".into(),
    };
    saga::apply(&SagaState::new(), &placed).state
}

/// The batch: per order its saga state and the reply it receives, encoded as on the wire.
fn batch(reply: impl Fn(usize, OrderId) -> Vec<u8>) -> Vec<(OrderId, SagaState, Vec<u8>)> {
    (0..BATCH)
        .map(|i| {
            let order = OrderId::new();
            (order, reserving(i), reply(i, order))
        })
        .collect()
}

fn stock_reserved(i: usize, order: OrderId) -> Vec<u8> {
    let p = StockReserved {
        currency: currency(),
        lines: vec![PricedLine {
            sku: format!("SKU-{:04}", i % 100),
            name: "A product".into(),
            quantity: 1,
            unit_price_minor: 3_990,
        }],
        total_minor: 3_990,
        expires_at: Utc::now(),
    };
    Envelope::new(order, &p, Utc::now()).encode()
}

/// Decodes, decides and encodes every record of the batch; returns the outbox payload bytes.
fn decide(batch: &[(OrderId, SagaState, Vec<u8>)]) -> usize {
    let now = Utc::now();
    let mut bytes = 0;
    for (order, state, record) in batch {
        let envelope = match Envelope::decode(record) {
            Ok(e) => e,
            Err(e) => panic!("bench records decode: {e}"),
        };
        let event = if envelope.is::<StockReserved>() {
            match envelope.payload_as::<StockReserved>() {
                Ok(p) => SagaEvent::StockReserved {
                    total_minor: p.total_minor,
                    lines: p.lines,
                },
                Err(e) => panic!("bench records decode: {e}"),
            }
        } else {
            match envelope.payload_as::<PaymentAuthorized>() {
                Ok(_) => SagaEvent::PaymentAuthorized,
                Err(e) => panic!("bench records are replies: {e}"),
            }
        };
        let transition = saga::apply(state, &event);
        for (topic, out) in transition.command_envelopes(*order, now) {
            bytes += topic.len() + out.encode().len();
        }
    }
    bytes
}

fn batch_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("saga_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let reserved = batch(stock_reserved);
    group.bench_function("decide_encode/stock_reserved/1000_orders", |b| {
        b.iter(|| black_box(decide(black_box(&reserved))))
    });
    // The last step: payment authorized → CONFIRMED (the outcome event and the stock commit).
    let authorizing: Vec<_> = reserved
        .iter()
        .map(|(order, state, record)| {
            let envelope =
                Envelope::decode(record).unwrap_or_else(|e| panic!("bench records decode: {e}"));
            let p: StockReserved = envelope
                .payload_as()
                .unwrap_or_else(|e| panic!("bench records decode: {e}"));
            let event = SagaEvent::StockReserved {
                total_minor: p.total_minor,
                lines: p.lines,
            };
            let paid = PaymentAuthorized {
                amount_minor: p.total_minor,
                currency: p.currency,
                provider_ref: format!("psp-{order}"),
            };
            let reply = Envelope::new(*order, &paid, Utc::now()).encode();
            (*order, saga::apply(state, &event).state, reply)
        })
        .collect();
    group.bench_function("decide_encode/payment_authorized/1000_orders", |b| {
        b.iter(|| black_box(decide(black_box(&authorizing))))
    });
    group.finish();
}

criterion_group!(benches, batch_decide);
criterion_main!(benches);
