//! The HTTP contract of issuing and reading numbers, run against both backends.

use regex::Regex;
use reqwest::Method;
use serde_json::Value;
use tracknum::domain::Codec;
use tracknum::domain::codec::has_valid_check;

use crate::helpers::{
    RedisServer, SECRET, TestApp, sleep_past_time, spawn_embedded, spawn_on_redis,
};

on_both_backends!(
    issues_a_valid_number_with_no_inputs,
    echoes_every_input_normalized,
    identical_requests_get_different_numbers,
    reports_every_bad_parameter,
    refuses_each_bad_value_in_the_table,
    refuses_unknown_repeated_and_empty_parameters,
    accepts_the_unencoded_plus_of_an_offset,
    serves_the_versioned_path_too,
    unknown_paths_and_methods_are_problems,
    health_answers_get_and_head,
    stored_record_reads_back,
    record_lookup_validates_and_404s,
);

fn number_pattern() -> Regex {
    Regex::new(r"^[A-Z0-9]{1,16}$").unwrap()
}

pub fn assert_problem(response_status: u16, content_type: &str, body: &Value, status: u16) {
    assert_eq!(response_status, status, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem without {field}: {body}");
    }
}

async fn problem(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_problem(
        status,
        &content_type,
        &body,
        body["status"].as_u64().unwrap_or(0) as u16,
    );
    assert!(status >= 400, "{body}");
    body
}

pub fn error_fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array: {body}"))
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            e["field"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn issues_a_valid_number_with_no_inputs(app: &TestApp) {
    let response = app.get("/next-tracking-number").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let number = body["tracking_number"].as_str().unwrap();
    assert_eq!(number.len(), 16);
    assert!(number_pattern().is_match(number));
    assert!(number.starts_with("ZZ00"), "{number}");
    assert!(has_valid_check(number));
    let created =
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!((expires - created).num_days(), 30);
    assert!((chrono::Utc::now() - created.to_utc()).num_seconds().abs() < 60);
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "created_at",
            "expires_at",
            "status",
            "tracking_number",
            "updated_at"
        ],
        "inputs not given are left out: {body}"
    );
    assert_eq!(body["status"], "issued");
    assert_eq!(body["updated_at"], body["created_at"]);
}

async fn echoes_every_input_normalized(app: &TestApp) {
    let body = app
        .issue(
            "origin_country_id=my&destination_country_id=Id&weight=1.234\
             &created_at=2018-11-20T19:29:32.5%2B08:00\
             &customer_id=DE619854-B59B-425E-9DB4-943979E1BD49\
             &customer_name=%20RedBox%20Logistics%20",
        )
        .await;
    assert_eq!(body["origin_country_id"], "MY");
    assert_eq!(body["destination_country_id"], "ID");
    assert_eq!(body["weight"], serde_json::json!(1.234));
    assert!(body["weight"].is_number());
    assert_eq!(body["order_created_at"], "2018-11-20T19:29:32.500+08:00");
    assert_eq!(body["customer_id"], "de619854-b59b-425e-9db4-943979e1bd49");
    assert_eq!(body["customer_name"], "RedBox Logistics");
    assert_eq!(body["customer_slug"], "redbox-logistics");
    let number = body["tracking_number"].as_str().unwrap();
    let codec = Codec::new(SECRET.as_bytes());
    let tag = codec.customer_tag(Some("de619854-b59b-425e-9db4-943979e1bd49"));
    assert_eq!(&number[..2], "MY");
    assert_eq!(&number[2..4], base36_pair(tag));
    assert!(has_valid_check(number));

    // Without a customer id, the tag comes from the slug.
    let body = app.issue("customer_slug=acme-co").await;
    let number = body["tracking_number"].as_str().unwrap();
    assert_eq!(
        &number[..4],
        format!("ZZ{}", base36_pair(codec.customer_tag(Some("acme-co"))))
    );
}

fn base36_pair(tag: u16) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let tag = tag as usize;
    format!("{}{}", DIGITS[tag / 36] as char, DIGITS[tag % 36] as char)
}

async fn identical_requests_get_different_numbers(app: &TestApp) {
    let query = "origin_country_id=MY&customer_slug=same";
    let a = app.issue(query).await;
    let b = app.issue(query).await;
    assert_ne!(a["tracking_number"], b["tracking_number"]);
    assert_eq!(
        a["tracking_number"].as_str().unwrap()[..4],
        b["tracking_number"].as_str().unwrap()[..4]
    );
}

async fn reports_every_bad_parameter(app: &TestApp) {
    let body = problem(
        app,
        "/next-tracking-number?origin_country_id=ZZ&destination_country_id=MYS&weight=0\
         &created_at=yesterday&customer_id=nope&customer_name=%01&customer_slug=Bad_Slug",
    )
    .await;
    assert_eq!(body["status"], 400);
    let mut fields = error_fields(&body);
    fields.sort();
    assert_eq!(
        fields,
        [
            "created_at",
            "customer_id",
            "customer_name",
            "customer_slug",
            "destination_country_id",
            "origin_country_id",
            "weight"
        ]
    );
}

async fn refuses_each_bad_value_in_the_table(app: &TestApp) {
    let bad = [
        ("origin_country_id", "ZZ"),
        ("origin_country_id", "AA"),
        ("origin_country_id", "MYS"),
        ("destination_country_id", "M1"),
        ("weight", "0"),
        ("weight", "-1"),
        ("weight", "1.2345"),
        ("weight", "1e3"),
        ("weight", "nan"),
        ("weight", "abc"),
        ("weight", "1234567"),
        ("created_at", "2018-11-20T19:29:32"),
        ("created_at", "2018-11-20"),
        ("customer_id", "de619854b59b425e9db4943979e1bd49"),
        ("customer_id", "{de619854-b59b-425e-9db4-943979e1bd49}"),
        ("customer_slug", "-leading"),
        ("customer_slug", "double--dash"),
        ("customer_slug", "UPPER"),
    ];
    for (field, value) in bad {
        let query = format!("{field}={}", urlencode(value));
        let body = problem(app, &format!("/next-tracking-number?{query}")).await;
        assert_eq!(body["status"], 400, "{query}");
        assert_eq!(error_fields(&body), [field], "{query}");
    }
    let long_name = "x".repeat(201);
    let body = problem(
        app,
        &format!("/next-tracking-number?customer_name={long_name}"),
    )
    .await;
    assert_eq!(error_fields(&body), ["customer_name"]);
    let long_slug = "a".repeat(101);
    let body = problem(
        app,
        &format!("/next-tracking-number?customer_slug={long_slug}"),
    )
    .await;
    assert_eq!(error_fields(&body), ["customer_slug"]);

    for good in ["weight=1", "weight=1.2", "weight=1.234", "customer_name="] {
        let response = app.get(&format!("/next-tracking-number?{good}")).await;
        let expected = if good.ends_with('=') { 400 } else { 200 };
        assert_eq!(response.status(), expected, "{good}");
    }
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn refuses_unknown_repeated_and_empty_parameters(app: &TestApp) {
    let body = problem(app, "/next-tracking-number?weigth=1").await;
    assert_eq!(error_fields(&body), ["weigth"]);
    let body = problem(app, "/next-tracking-number?weight=1&weight=2").await;
    assert_eq!(error_fields(&body), ["weight"]);
    let body = problem(app, "/next-tracking-number?origin_country_id=").await;
    assert_eq!(error_fields(&body), ["origin_country_id"]);
}

async fn accepts_the_unencoded_plus_of_an_offset(app: &TestApp) {
    // A client that forgot to encode `+` sends it raw; it arrives decoded as a space.
    let body = app.issue("created_at=2018-11-20T19:29:32+08:00").await;
    assert_eq!(body["order_created_at"], "2018-11-20T19:29:32+08:00");
    let body = app.issue("created_at=2018-11-20T11:29:32Z").await;
    assert_eq!(body["order_created_at"], "2018-11-20T11:29:32Z");
}

async fn serves_the_versioned_path_too(app: &TestApp) {
    let response = app
        .get("/v1/next-tracking-number?origin_country_id=SG")
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["tracking_number"].as_str().unwrap().starts_with("SG"));
}

async fn health_answers_get_and_head(app: &TestApp) {
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let head = app.head("/healthz").await;
    assert_eq!(head.status(), 200);
}

async fn unknown_paths_and_methods_are_problems(app: &TestApp) {
    let body = problem(app, "/no-such-thing").await;
    assert_eq!(body["status"], 404);
    let response = app
        .request(Method::POST, "/next-tracking-number")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        response.headers()["allow"],
        "GET, HEAD",
        "RFC 9110 wants Allow on a 405"
    );
    let response = app
        .request(Method::DELETE, "/nothing-here")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

async fn stored_record_reads_back(app: &TestApp) {
    let issued = app
        .issue("origin_country_id=MY&weight=2.5&customer_name=Acme%20Co")
        .await;
    let number = issued["tracking_number"].as_str().unwrap();
    let response = app.get_record(number).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let record: Value = response.json().await.unwrap();
    assert_eq!(record, issued);
    // A number typed in lower case finds the same record.
    let record: Value = app
        .get(&format!("/v1/tracking-numbers/{}", number.to_lowercase()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record, issued);
}

async fn record_lookup_validates_and_404s(app: &TestApp) {
    let body = problem(app, "/v1/tracking-numbers/MY0000000000000X").await;
    assert_eq!(body["status"], 404);
    let body = problem(app, "/v1/tracking-numbers/TOO-LONG-AND-DASHED").await;
    assert_eq!(body["status"], 400);
    assert_eq!(error_fields(&body), ["tracking_number"]);
}

/// The shortest TTL there is (1 s), waited out on both backends at once: until each record's
/// `expires_at` has passed, no longer.
#[tokio::test]
async fn records_expire_after_the_ttl_on_both_backends() {
    let redis = RedisServer::start();
    let on_redis = spawn_on_redis(&redis, &["--record-ttl", "1s"]).await;
    let (embedded, _dir) = spawn_embedded(&["--record-ttl", "1s"]).await;
    let mut issued = Vec::new();
    for app in [&on_redis, &embedded] {
        let record = app.issue("").await;
        let number = record["tracking_number"].as_str().unwrap().to_owned();
        assert_eq!(app.get_record(&number).await.status(), 200);
        let expires_at = record["expires_at"].as_str().unwrap();
        let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at).unwrap();
        issued.push((app, number, expires_at.to_utc()));
    }
    for (app, number, expires_at) in issued {
        sleep_past_time(expires_at).await;
        assert_eq!(app.get_record(&number).await.status(), 404);
    }
}
