//! The record lifecycle over HTTP (read, change, remove, register, check), batch issuing and
//! idempotent retries, against both backends.

use std::collections::HashSet;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tracknum::domain::Codec;
use tracknum::domain::codec::Layout;
use tracknum::domain::codec::has_valid_check;

use crate::client::record_path;
use crate::contract::{assert_problem, error_fields};
use crate::helpers::{RedisServer, SECRET, TestApp, sleep_past_time, spawn_on_redis};

on_both_backends!(
    records_carry_etags_and_patches_honour_if_match,
    racing_patches_without_if_match_lose_no_field,
    status_moves_forward_only,
    patches_are_validated_field_by_field,
    expiry_can_be_moved_and_an_expired_record_is_gone,
    delete_removes_and_honours_if_match,
    put_registers_foreign_numbers_only,
    batches_issue_in_order_and_a_bad_order_issues_nothing,
    a_batch_of_a_thousand_is_one_call,
    idempotency_keys_replay_the_first_reply,
    concurrent_retries_get_one_number,
    check_decodes_without_a_record,
    issuing_accepts_an_expiry,
    times_past_year_9999_in_utc_are_refused_everywhere,
);

/// A reply: status, headers and JSON body.
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn etag(&self) -> String {
        self.header("etag").expect("an ETag").to_owned()
    }

    fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "{}", self.text);
        if status >= 400 {
            let content_type = self.header("content-type").unwrap_or("").to_owned();
            assert_problem(self.status.as_u16(), &content_type, &self.body, status);
        }
        self
    }
}

/// The reply to a request: read whole.
async fn answer(response: impl Future<Output = Response>) -> Reply {
    let response = response.await;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        body,
    }
}

async fn issue(app: &TestApp, query: &str) -> String {
    app.issue(query).await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn patch(app: &TestApp, number: &str, body: Value, if_match: Option<&str>) -> Reply {
    answer(app.patch_record(number, &body, if_match)).await
}

async fn records_carry_etags_and_patches_honour_if_match(app: &TestApp) {
    let number = issue(app, "origin_country_id=MY&weight=1.5").await;
    let read = answer(app.get_record(&number)).await.expect(200);
    let first_tag = read.etag();
    let issued = app.get("/next-tracking-number").await;
    assert!(
        issued.headers().contains_key("etag"),
        "an issued record has an ETag too"
    );

    let changed = patch(app, &number, json!({"weight": 2}), Some(&first_tag))
        .await
        .expect(200);
    assert_eq!(changed.body["weight"], 2.0);
    assert_eq!(changed.body["origin_country_id"], "MY");
    assert_ne!(changed.etag(), first_tag, "a change makes a new version");
    assert!(changed.body["updated_at"].as_str() > read.body["updated_at"].as_str());
    assert_eq!(changed.body["created_at"], read.body["created_at"]);

    // The first version is stale now.
    let stale = patch(app, &number, json!({"weight": 3}), Some(&first_tag))
        .await
        .expect(412);
    assert!(stale.body["detail"].is_string());
    let now = answer(app.get_record(&number)).await.expect(200);
    assert_eq!(now.body["weight"], 2.0, "a refused change changes nothing");
    assert_eq!(now.etag(), changed.etag(), "reads give the version's tag");
    patch(app, &number, json!({"weight": 4}), Some("*"))
        .await
        .expect(200);
}

async fn racing_patches_without_if_match_lose_no_field(app: &TestApp) {
    for _ in 0..5 {
        let number = issue(app, "").await;
        let bodies = [
            json!({"weight": 7.5}),
            json!({"customer_name": "Blue Box"}),
            json!({"destination_country_id": "SG"}),
            json!({"customer_slug": "blue-box"}),
            json!({"status": "label_printed"}),
        ];
        let replies = futures_join_all(
            bodies
                .iter()
                .map(|body| patch(app, &number, body.clone(), None)),
        )
        .await;
        for reply in replies {
            reply.expect(200);
        }
        let record = answer(app.get_record(&number)).await.expect(200).body;
        assert_eq!(record["weight"], 7.5, "{record}");
        assert_eq!(record["customer_name"], "Blue Box", "{record}");
        assert_eq!(record["destination_country_id"], "SG", "{record}");
        assert_eq!(record["customer_slug"], "blue-box", "{record}");
        assert_eq!(record["status"], "label_printed", "{record}");
    }
}

/// Runs futures concurrently on the test's runtime, in order of the input.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs = Vec::new();
    let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
    // Poll every future until all are done: a tiny join_all without another crate.
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for slot in pending.iter_mut() {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        outputs.push(Some(output));
                        *slot = None;
                    }
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

async fn status_moves_forward_only(app: &TestApp) {
    let number = issue(app, "").await;
    for status in ["label_printed", "in_transit", "in_transit", "delivered"] {
        let reply = patch(app, &number, json!({"status": status}), None)
            .await
            .expect(200);
        assert_eq!(reply.body["status"], status);
    }
    let back = patch(app, &number, json!({"status": "in_transit"}), None)
        .await
        .expect(409);
    assert_eq!(back.body["from"], "delivered");
    assert_eq!(back.body["to"], "in_transit");
    let detail = back.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("delivered") && detail.contains("in_transit"),
        "{detail}"
    );

    let cancelled = issue(app, "").await;
    patch(app, &cancelled, json!({"status": "cancelled"}), None)
        .await
        .expect(200);
    for status in ["issued", "in_transit", "delivered"] {
        let reply = patch(app, &cancelled, json!({"status": status}), None)
            .await
            .expect(409);
        assert_eq!(reply.body["from"], "cancelled");
    }
    let record = answer(app.get_record(&cancelled)).await.expect(200);
    assert_eq!(record.body["status"], "cancelled");
}

async fn patches_are_validated_field_by_field(app: &TestApp) {
    let number = issue(app, "origin_country_id=MY").await;
    let bad = patch(
        app,
        &number,
        json!({
            "weight": 0, "destination_country_id": "XX", "status": "lost",
            "origin_country_id": "ID", "tracking_number": "X", "colour": "red",
            "expires_at": "2001-01-01T00:00:00Z"
        }),
        None,
    )
    .await
    .expect(400);
    let mut fields = error_fields(&bad.body);
    fields.sort();
    assert_eq!(
        fields,
        [
            "colour",
            "destination_country_id",
            "expires_at",
            "origin_country_id",
            "status",
            "tracking_number",
            "weight"
        ]
    );
    let record = answer(app.get_record(&number)).await.expect(200);
    assert_eq!(record.body["status"], "issued", "nothing was changed");
    assert!(record.body.get("weight").is_none());

    // Not JSON at all: no typed request sends that.
    let not_json = app
        .request(Method::PATCH, &record_path(&number))
        .body("{weight")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let body: Value = not_json.json().await.unwrap();
    assert_eq!(error_fields(&body), ["body"]);
    patch(app, "ZZ00AAAAAAAAAAAA", json!({"weight": 1}), None)
        .await
        .expect(404);
    patch(app, "bad-number", json!({"weight": 1}), None)
        .await
        .expect(400);
    // A null clears an optional field.
    patch(app, &number, json!({"weight": 1.25}), None)
        .await
        .expect(200);
    let cleared = patch(app, &number, json!({"weight": null}), None)
        .await
        .expect(200);
    assert!(cleared.body.get("weight").is_none(), "{}", cleared.body);
}

async fn expiry_can_be_moved_and_an_expired_record_is_gone(app: &TestApp) {
    let number = issue(app, "").await;
    let later = (chrono::Utc::now() + chrono::Duration::days(90)).to_rfc3339();
    let extended = patch(app, &number, json!({"expires_at": later}), None)
        .await
        .expect(200);
    let expires =
        chrono::DateTime::parse_from_rfc3339(extended.body["expires_at"].as_str().unwrap())
            .unwrap();
    assert!((expires.to_utc() - chrono::Utc::now()).num_days() >= 89);

    // Soon enough to wait out, late enough that the change and a read come first.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(600);
    patch(app, &number, json!({"expires_at": soon.to_rfc3339()}), None)
        .await
        .expect(200);
    answer(app.get_record(&number)).await.expect(200);
    sleep_past_time(soon).await;
    answer(app.get_record(&number)).await.expect(404);
    patch(app, &number, json!({"weight": 1}), None)
        .await
        .expect(404);
    answer(app.delete_record(&number, None)).await.expect(404);
}

async fn delete_removes_and_honours_if_match(app: &TestApp) {
    let number = issue(app, "").await;
    let tag = answer(app.get_record(&number)).await.expect(200).etag();
    answer(app.delete_record(&number, Some("\"old\"")))
        .await
        .expect(412);
    let deleted = answer(app.delete_record(&number, Some(&tag)))
        .await
        .expect(204);
    assert!(deleted.text.is_empty());
    answer(app.get_record(&number)).await.expect(404);
    answer(app.delete_record(&number, None)).await.expect(404);
    // Its number is never issued again: the next ones are all new.
    let next: HashSet<String> = futures_join_all((0..50).map(|_| issue(app, "")))
        .await
        .into_iter()
        .collect();
    assert!(!next.contains(&number));
    // Without If-Match, a delete just deletes.
    let other = issue(app, "").await;
    answer(app.delete_record(&other, None)).await.expect(204);
}

async fn put_registers_foreign_numbers_only(app: &TestApp) {
    let suffix = format!("{:08}", rand::random::<u32>() % 100_000_000);
    let number = format!("LEGACY{suffix}");
    let created = answer(app.put_record(
        &number.to_lowercase(),
        Some(&json!({"origin_country_id": "SG", "weight": "0.5"})),
    ))
    .await
    .expect(201);
    assert_eq!(created.body["tracking_number"], number.as_str());
    assert_eq!(created.body["status"], "issued");
    assert_eq!(created.body["weight"], 0.5);
    assert_eq!(
        created.header("location"),
        Some(record_path(&number).as_str())
    );
    created.etag();
    let read = answer(app.get_record(&number)).await.expect(200);
    assert_eq!(read.body, created.body);
    answer(app.put_record(&number, None)).await.expect(409);
    // A registered record is a record like any other.
    patch(app, &number, json!({"status": "in_transit"}), None)
        .await
        .expect(200);

    // A number in our own layout with a valid check character could collide with one we issue.
    let ours = issue(app, "").await;
    let reserved = answer(app.put_record(&ours, None)).await.expect(422);
    assert!(reserved.body["detail"].as_str().unwrap().contains(&ours));
    let codec = Codec::new(b"any secret");
    let any_valid = codec.encode(None, 5, 424242).unwrap().to_string();
    answer(app.put_record(&any_valid, None)).await.expect(422);
    // Sixteen characters with a wrong check character cannot be ours: fine.
    let mut wrong_check = any_valid.clone().into_bytes();
    wrong_check[15] = if wrong_check[15] == b'0' { b'1' } else { b'0' };
    let wrong_check = String::from_utf8(wrong_check).unwrap();
    assert!(!has_valid_check(&wrong_check));
    answer(app.put_record(&wrong_check, None)).await.expect(201);

    for bad in ["ABC-123", "A%20B", "ABCDEFGHIJKLMNOPQ"] {
        let reply = answer(app.put_record(bad, None)).await.expect(400);
        assert_eq!(error_fields(&reply.body), ["tracking_number"]);
    }
    let reply = answer(app.put_record("NEWONE1", Some(&json!({"weight": -1, "nope": 1}))))
        .await
        .expect(400);
    let mut fields = error_fields(&reply.body);
    fields.sort();
    assert_eq!(fields, ["nope", "weight"]);
    answer(app.get_record("NEWONE1")).await.expect(404);
}

/// The serial behind a number (the tests know the secret).
/// A number's serial under each layout a backend may use: Redis' shared one, and the embedded
/// store's node layout (a new data dir, node 0).
fn serials(number: &str) -> [u64; 2] {
    [
        Layout::Shared,
        Layout::Nodes {
            legacy_below: 0,
            skip_below: 0,
        },
    ]
    .map(|layout| {
        Codec::with_layout(SECRET.as_bytes(), layout)
            .decode_serial(number)
            .unwrap()
    })
}

async fn batches_issue_in_order_and_a_bad_order_issues_nothing(app: &TestApp) {
    let orders = json!({"orders": [
        {"origin_country_id": "MY", "weight": 1},
        {"origin_country_id": "SG", "customer_name": "Blue Box"},
        {}
    ]});
    let batch = answer(app.batch(&orders)).await.expect(201);
    assert_eq!(batch.body["count"], 3);
    let records = batch.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert!(
        records[0]["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("MY")
    );
    assert!(
        records[1]["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("SG")
    );
    assert_eq!(records[1]["customer_slug"], "blue-box");
    assert!(
        records[2]["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("ZZ")
    );
    for record in records {
        let number = record["tracking_number"].as_str().unwrap();
        let stored = answer(app.get_record(number)).await.expect(200);
        assert_eq!(&stored.body, record);
    }

    let before = issue(app, "").await;
    let bad = json!({"orders": [
        {"origin_country_id": "MY"},
        {"weight": "heavy"},
        {"origin_country_id": "XX", "colour": "red"}
    ]});
    let refused = answer(app.batch(&bad)).await.expect(400);
    assert_eq!(
        error_fields(&refused.body),
        [
            "orders[1].weight",
            "orders[2].colour",
            "orders[2].origin_country_id"
        ]
    );
    let after = issue(app, "").await;
    let (after, before) = (serials(&after), serials(&before));
    assert!(
        (0..2).any(|layout| after[layout] == before[layout] + 1),
        "the bad batch used no serial: {before:?} then {after:?}"
    );

    for bad in [
        json!({"count": 0}),
        json!({"count": 1001}),
        json!({}),
        json!([1]),
    ] {
        answer(app.batch(&bad)).await.expect(400);
    }
    let counted = answer(app.batch(&json!({"count": 4, "origin_country_id": "ID"})))
        .await
        .expect(201);
    let numbers: HashSet<&str> = counted.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tracking_number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers.len(), 4);
    assert!(numbers.iter().all(|n| n.starts_with("ID")));
}

async fn a_batch_of_a_thousand_is_one_call(app: &TestApp) {
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let batch = answer(app.batch(&json!({"count": 1000}))).await.expect(201);
        for record in batch.body["records"].as_array().unwrap() {
            let number = record["tracking_number"].as_str().unwrap().to_owned();
            assert!(has_valid_check(&number));
            assert!(seen.insert(number), "a number was issued twice");
        }
    }
    assert_eq!(seen.len(), 3000);
    let last = seen.iter().next().unwrap();
    answer(app.get_record(last)).await.expect(200);
}

async fn idempotency_keys_replay_the_first_reply(app: &TestApp) {
    let keyed = app.with_header("idempotency-key", "order-1234 attempt");
    let first = answer(keyed.issue_with("origin_country_id=MY"))
        .await
        .expect(200);
    let again = answer(keyed.issue_with("origin_country_id=MY"))
        .await
        .expect(200);
    assert_eq!(again.text, first.text, "replayed byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.etag(), first.etag());
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same key, other inputs: refused, and nothing issued.
    let other = answer(keyed.issue_with("origin_country_id=SG"))
        .await
        .expect(422);
    assert!(
        other.body["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    // Another key is another request.
    let fresh = answer(
        app.with_header("idempotency-key", "order-1235")
            .issue_with("origin_country_id=MY"),
    )
    .await
    .expect(200);
    assert_ne!(fresh.body["tracking_number"], first.body["tracking_number"]);

    // Batches replay their 201 too.
    let batch_keyed = app.with_header("idempotency-key", "batch-77");
    let body = json!({"count": 3});
    let first = answer(batch_keyed.batch(&body)).await.expect(201);
    let again = answer(batch_keyed.batch(&body)).await.expect(201);
    assert_eq!(again.text, first.text);
    answer(batch_keyed.batch(&json!({"count": 4})))
        .await
        .expect(422);

    // Bad keys are named; a request that fails validation leaves its key unused.
    let long = "k".repeat(256);
    let reply = answer(
        app.with_header("idempotency-key", &long)
            .get("/next-tracking-number"),
    )
    .await
    .expect(400);
    assert_eq!(error_fields(&reply.body), ["Idempotency-Key"]);
    let k9 = app.with_header("idempotency-key", "k-9");
    answer(k9.issue_with("weight=0")).await.expect(400);
    answer(k9.issue_with("weight=1")).await.expect(200);
}

async fn concurrent_retries_get_one_number(app: &TestApp) {
    let keyed = app.with_header("idempotency-key", "same-parcel");
    let replies = futures_join_all((0..16).map(|_| answer(keyed.issue_with("weight=2")))).await;
    let bodies: HashSet<String> = replies.into_iter().map(|r| r.expect(200).text).collect();
    assert_eq!(
        bodies.len(),
        1,
        "every retry got the first reply: {bodies:?}"
    );
}

async fn check_decodes_without_a_record(app: &TestApp) {
    let number = issue(app, "origin_country_id=MY&customer_slug=redbox").await;
    let check = answer(app.check_record(&number)).await.expect(200);
    assert_eq!(check.body["format_valid"], true);
    assert_eq!(check.body["check_character_valid"], true);
    assert_eq!(check.body["origin_country_id"], "MY");
    assert_eq!(check.body["customer_tag"], &number[2..4]);
    assert_eq!(check.body["record_exists"], true);

    let mut typo = number.clone().into_bytes();
    typo[7] = if typo[7] == b'7' { b'8' } else { b'7' };
    let typo = String::from_utf8(typo).unwrap();
    let check = answer(app.check_record(&typo)).await.expect(200);
    assert_eq!(check.body["check_character_valid"], false);
    assert_eq!(check.body["record_exists"], false);

    let short = answer(app.check_record("abc123")).await.expect(200);
    assert_eq!(short.body["tracking_number"], "ABC123");
    assert_eq!(short.body["format_valid"], false);
    answer(app.check_record("ab-c")).await.expect(400);
}

async fn issuing_accepts_an_expiry(app: &TestApp) {
    let at = "2031-05-01T00:00:00Z";
    let body = app.issue(&format!("expires_at={at}")).await;
    assert_eq!(body["expires_at"], "2031-05-01T00:00:00.000000Z");
    let reply = answer(app.issue_with("expires_at=2001-01-01T00:00:00Z"))
        .await
        .expect(400);
    assert_eq!(error_fields(&reply.body), ["expires_at"]);
    let batch = answer(app.batch(&json!({"count": 2, "expires_at": at})))
        .await
        .expect(201);
    assert_eq!(
        batch.body["records"][1]["expires_at"],
        "2031-05-01T00:00:00.000000Z"
    );
}

/// `9999-12-31T23:59:59-23:59` is valid RFC 3339, but in UTC it is in year 10000, which RFC
/// 3339 cannot write: it was once stored as `+10000-…` and made the record unchangeable.
async fn times_past_year_9999_in_utc_are_refused_everywhere(app: &TestApp) {
    let far = "9999-12-31T23:59:59-23:59";
    let encoded = "9999-12-31T23:59:59-23%3A59";
    for query in [
        format!("expires_at={encoded}"),
        format!("created_at={encoded}"),
    ] {
        let reply = answer(app.issue_with(&query)).await.expect(400);
        let field = query.split('=').next().unwrap();
        assert_eq!(error_fields(&reply.body), [field]);
    }
    let batch = answer(app.batch(&json!({"orders": [{"expires_at": far}, {"created_at": far}]})))
        .await
        .expect(400);
    assert_eq!(
        error_fields(&batch.body),
        ["orders[0].expires_at", "orders[1].created_at"]
    );
    let put = answer(app.put_record("LEGACY9999", Some(&json!({"expires_at": far}))))
        .await
        .expect(400);
    assert_eq!(error_fields(&put.body), ["expires_at"]);
    let number = issue(app, "").await;
    let patched = patch(app, &number, json!({"expires_at": far}), None)
        .await
        .expect(400);
    assert_eq!(error_fields(&patched.body), ["expires_at"]);
    // The latest time that fits is taken, and the record can still change.
    let latest = patch(
        app,
        &number,
        json!({"expires_at": "9999-12-31T23:59:59Z"}),
        None,
    )
    .await
    .expect(200);
    assert_eq!(latest.body["expires_at"], "9999-12-31T23:59:59.000000Z");
    patch(app, &number, json!({"status": "in_transit"}), None)
        .await
        .expect(200);
}

/// A record that an older version stored with a far-future expiry in a five-digit year
/// (`+10000-…`) reads, changes and deletes after the upgrade; its first change writes the
/// expiry back as RFC 3339.
#[tokio::test]
async fn a_record_stored_with_a_five_digit_year_can_still_change() {
    let redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &[]).await;
    // A registered number keeps a key of its own, where that version stored the record's JSON.
    let number = "OLDVERSION1";
    let registered = answer(app.put_record(number, Some(&json!({"origin_country_id": "MY"}))))
        .await
        .expect(201);
    let key = format!("tracknum:record:{number}");
    let old = regex::Regex::new(r#""expires_at":"[^"]*""#)
        .unwrap()
        .replace(
            &registered.text,
            r#""expires_at":"+10000-01-01T23:58:59.000000Z""#,
        )
        .into_owned();
    let _: () = redis.cmd(&["SET", &key, &old]);
    let read = answer(app.get_record(number)).await.expect(200);
    assert_eq!(read.body["expires_at"], "+10000-01-01T23:58:59.000000Z");
    let patched = patch(&app, number, json!({"status": "in_transit"}), None)
        .await
        .expect(200);
    assert_eq!(patched.body["expires_at"], "9999-12-31T23:59:59.999999Z");
    assert_eq!(patched.body["status"], "in_transit");
    answer(app.delete_record(number, None)).await.expect(204);
}

/// Two instances on one Redis get the same key at the same moment: one number, one reply; and
/// they change the same records.
#[tokio::test]
async fn two_instances_share_keys_and_records() {
    let redis = RedisServer::start();
    let a = spawn_on_redis(&redis, &[]).await;
    let b = spawn_on_redis(&redis, &[]).await;
    for round in 0..10 {
        let key = format!("shared-{round}");
        let keyed = [&a, &b].map(|app| app.with_header("idempotency-key", &key));
        // Two calls to each instance, alternating.
        let replies =
            futures_join_all([0, 1, 0, 1].map(|i| answer(keyed[i].issue_with("weight=1")))).await;
        let bodies: HashSet<String> = replies.into_iter().map(|r| r.expect(200).text).collect();
        assert_eq!(bodies.len(), 1, "round {round}: {bodies:?}");
    }
    // A record changed on one instance reads back changed on the other.
    let number = issue(&a, "").await;
    patch(&b, &number, json!({"status": "in_transit"}), None)
        .await
        .expect(200);
    let back = answer(a.get_record(&number)).await.expect(200);
    assert_eq!(back.body["status"], "in_transit");
}
