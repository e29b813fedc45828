//! Throughput of the CPU work on the order intake path: parsing and validating a request body
//! and encoding its `OrderPlaced` envelope. Numbers go to docs and closing notes, not asserts.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orderflow::domain::envelope::{Envelope, OrderPlaced};
use orderflow::domain::ids::OrderId;
use orderflow::domain::order::PlaceOrder;

fn body(lines: usize) -> Vec<u8> {
    let lines: Vec<String> = (0..lines)
        .map(|i| format!(r#"{{"sku":"SKU-{i:05}","quantity":{}}}"#, i % 7 + 1))
        .collect();
    format!(
        r#"{{"customer_id":"customer-42","currency":"EUR","lines":[{}]}}"#,
        lines.join(",")
    )
    .into_bytes()
}

fn intake(c: &mut Criterion) {
    let mut group = c.benchmark_group("intake");
    for lines in [1usize, 10, 100] {
        let bytes = body(lines);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("parse_validate_encode/{lines}_lines"), |b| {
            b.iter(|| {
                let request: PlaceOrder = match serde_json::from_slice(black_box(&bytes)) {
                    Ok(r) => r,
                    Err(e) => panic!("bench body must parse: {e}"),
                };
                let order = match request.validate() {
                    Ok(o) => o,
                    Err(e) => panic!("bench body must validate: {e}"),
                };
                let placed = OrderPlaced {
                    customer_id: order.customer_id,
                    currency: order.currency,
                    lines: order.lines,
                    card_token: Some(order.card_token),
                    email: order.email,
                };
                black_box(Envelope::new(OrderId::new(), &placed, Utc::now()).encode())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let request: PlaceOrder = match serde_json::from_slice(&body(10)) {
        Ok(r) => r,
        Err(e) => panic!("bench body must parse: {e}"),
    };
    let order = match request.validate() {
        Ok(o) => o,
        Err(e) => panic!("bench body must validate: {e}"),
    };
    let placed = OrderPlaced {
        customer_id: order.customer_id,
        currency: order.currency,
        lines: order.lines,
        card_token: Some(order.card_token),
        email: order.email,
    };
    let bytes = Envelope::new(OrderId::new(), &placed, Utc::now()).encode();
    let mut group = c.benchmark_group("bridge");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_envelope/10_lines", |b| {
        b.iter(|| {
            let env = Envelope::decode(black_box(&bytes));
            black_box(env.map(|e| e.payload_as::<OrderPlaced>().is_ok()).ok())
        })
    });
    group.finish();
}

criterion_group!(benches, intake, decode);
criterion_main!(benches);
