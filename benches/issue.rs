//! The hot path in-process: a serial from the pool plus the codec (ns per number), and the
//! request-side work around it (query validation, record JSON).

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use tracknum::domain::{Codec, Country, Record, TrackingNumber};
use tracknum::http::query::parse_issue;
use tracknum::serials::SerialPool;

const QUERY: &str = "origin_country_id=MY&destination_country_id=ID&weight=1.234\
    &created_at=2018-11-20T19:29:32%2B08:00&customer_id=de619854-b59b-425e-9db4-943979e1bd49\
    &customer_name=RedBox%20Logistics&customer_slug=redbox-logistics";

fn issue_one_number(c: &mut Criterion) {
    let codec = Codec::new(b"bench-secret");
    let pool = SerialPool::new(1);
    let origin = Country::parse("MY");
    let tag = codec.customer_tag(Some("de619854-b59b-425e-9db4-943979e1bd49"));
    let mut next_block = 0u64;
    c.bench_function("pool take + encode", |b| {
        b.iter(|| {
            let serial = match pool.try_take() {
                Some(serial) => serial,
                None => {
                    // Stands in for the background refill: a lease per million numbers.
                    pool.add_block(next_block..next_block + 1_000_000);
                    next_block += 1_000_000;
                    pool.try_take().unwrap()
                }
            };
            black_box(codec.encode(origin, tag, serial))
        })
    });
    c.bench_function("codec permute", |b| {
        let mut serial = 0u64;
        b.iter(|| {
            serial += 1;
            black_box(codec.permute(black_box(serial)))
        })
    });
}

fn request_work(c: &mut Criterion) {
    c.bench_function("parse and validate the full query", |b| {
        b.iter(|| black_box(parse_issue(black_box(QUERY), Utc::now()).unwrap()))
    });
    let order = parse_issue(QUERY, Utc::now()).unwrap().order;
    let record = Record::new(
        TrackingNumber::parse("MY7K0A9Z3Q1B2C4D").unwrap(),
        Utc::now(),
        Utc::now(),
        order,
        None,
    );
    c.bench_function("record to JSON", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&record)).unwrap()))
    });
}

criterion_group!(benches, issue_one_number, request_work);
criterion_main!(benches);
