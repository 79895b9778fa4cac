//! Tenants: every API key belongs to one; records and idempotency keys belong to the tenant
//! that made them. Another tenant gets exactly what a number that does not exist gets; an
//! admin key sees all. Run on both backends.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{RedisServer, TestApp, keys_file, spawn_embedded, spawn_on_redis};

const A: &str = "key-of-shop-a-0123456789";
const A2: &str = "key-of-shop-a-second-key";
const B: &str = "key-of-shop-b-0123456789";
const ADMIN: &str = "key-of-ops-admin-0123456";

/// Shop A has two keys (one names its tenant, one is named after it), shop B one, ops is admin.
fn keys(dir: &TempDir) -> String {
    keys_file(
        dir,
        &[
            ("shop-a", A),
            ("shop-a-batch tenant=shop-a", A2),
            ("shop-b", B),
            ("ops role=admin", ADMIN),
        ],
    )
    .to_str()
    .unwrap()
    .to_owned()
}

async fn send(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.with_key(key).request(method, path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // JSON bodies go as they are, unlabelled: the API reads them whatever their type.
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(app: &TestApp, key: &str, path: &str) -> (StatusCode, Value) {
    send(app, key, Method::GET, path, &[], None).await
}

async fn on_both_backends(test: impl AsyncFn(&TestApp)) {
    let dir = TempDir::new().unwrap();
    let path = keys(&dir);
    let (app, _data) = spawn_embedded(&["--api-keys-file", &path]).await;
    test(&app).await;
    let redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &["--api-keys-file", &path]).await;
    test(&app).await;
}

#[tokio::test]
async fn idempotency_keys_belong_to_the_tenant_that_sent_them() {
    on_both_backends(async |app: &TestApp| {
        let path = "/next-tracking-number?origin_country_id=MY";
        let key = [("Idempotency-Key", "order-1")];
        let (status, first_a) = send(app, A, Method::GET, path, &key, None).await;
        assert_eq!(status, 200, "{first_a}");
        let (status, first_b) = send(app, B, Method::GET, path, &key, None).await;
        assert_eq!(status, 200, "{first_b}");
        assert_ne!(
            first_a["tracking_number"], first_b["tracking_number"],
            "another tenant's key of the same name is another key"
        );
        assert_eq!(first_b["tenant"], "shop-b");
        // Each tenant's retry replays its own reply; a tenant's second key shares its keys.
        for (key_of, first) in [(A, &first_a), (A2, &first_a), (B, &first_b)] {
            let (status, again) = send(app, key_of, Method::GET, path, &key, None).await;
            assert_eq!((status.as_u16(), &again), (200, first));
        }
        // The same key with other inputs clashes only within the tenant.
        let other = "/next-tracking-number?origin_country_id=SG";
        let (status, _) = send(app, A, Method::GET, other, &key, None).await;
        assert_eq!(status, 422);
        let (status, _) = send(app, ADMIN, Method::GET, other, &key, None).await;
        assert_eq!(status, 200, "the admin's keys are its own too");
    })
    .await;
}

#[tokio::test]
async fn another_tenants_record_is_not_found_and_an_admin_sees_all() {
    on_both_backends(async |app: &TestApp| {
        let (status, issued) = get(app, A, "/next-tracking-number?weight=1.5").await;
        assert_eq!(status, 200);
        assert_eq!(issued["tenant"], "shop-a");
        let number = issued["tracking_number"].as_str().unwrap().to_owned();
        let record = format!("/v1/tracking-numbers/{number}");
        // A number that was never issued, for comparison: B must not tell the two apart.
        let (_, unknown) = get(app, B, "/v1/tracking-numbers/ZZ00000000000000").await;

        let (status, seen) = get(app, A2, &record).await;
        assert_eq!(
            (status.as_u16(), &seen),
            (200, &issued),
            "same tenant, other key"
        );
        let (status, body) = get(app, B, &record).await;
        assert_eq!(status, 404);
        assert_eq!(
            (&body["type"], &body["title"]),
            (&unknown["type"], &unknown["title"])
        );
        let patch = json!({"status": "cancelled"});
        let (status, _) = send(app, B, Method::PATCH, &record, &[], Some(patch.clone())).await;
        assert_eq!(status, 404);
        let (status, _) = send(app, B, Method::DELETE, &record, &[], None).await;
        assert_eq!(status, 404);
        let (_, check_b) = get(app, B, &format!("{record}/check")).await;
        assert_eq!(check_b["record_exists"], false);
        let (_, check_a) = get(app, A, &format!("{record}/check")).await;
        assert_eq!(check_a["record_exists"], true);
        // Nothing B tried changed the record.
        let (_, after) = get(app, A, &record).await;
        assert_eq!(after, issued);

        // The admin sees and changes every tenant's records; the owner stays.
        let (status, seen) = get(app, ADMIN, &record).await;
        assert_eq!((status.as_u16(), &seen), (200, &issued));
        let (status, changed) = send(app, ADMIN, Method::PATCH, &record, &[], Some(patch)).await;
        assert_eq!(status, 200);
        assert_eq!(
            (&changed["status"], &changed["tenant"]),
            (&json!("cancelled"), &json!("shop-a"))
        );
        let tenant = json!({"tenant": "shop-b"});
        let (status, body) = send(app, A, Method::PATCH, &record, &[], Some(tenant)).await;
        assert_eq!(status, 400, "the owner is fixed: {body}");
        let (status, _) = send(app, A, Method::DELETE, &record, &[], None).await;
        assert_eq!(status, 204);
    })
    .await;
}

#[tokio::test]
async fn batches_and_registered_numbers_belong_to_their_tenant() {
    on_both_backends(async |app: &TestApp| {
        let batch = json!({"count": 3, "origin_country_id": "MY"});
        let (status, body) = send(
            app,
            B,
            Method::POST,
            "/v1/tracking-numbers",
            &[],
            Some(batch),
        )
        .await;
        assert_eq!(status, 201);
        for record in body["records"].as_array().unwrap() {
            assert_eq!(record["tenant"], "shop-b");
            let path = format!(
                "/v1/tracking-numbers/{}",
                record["tracking_number"].as_str().unwrap()
            );
            assert_eq!(get(app, A, &path).await.0, 404);
            assert_eq!(get(app, B, &path).await.0, 200);
        }

        let path = "/v1/tracking-numbers/LEGACYA77";
        let inputs = json!({"origin_country_id": "SG", "weight": 2});
        let (status, made) = send(app, A, Method::PUT, path, &[], Some(inputs.clone())).await;
        assert_eq!(status, 201, "{made}");
        assert_eq!(get(app, B, path).await.0, 404);
        // The same PUT again is answered with the record it made (RFC 9110: PUT is idempotent).
        let (status, again) = send(app, A, Method::PUT, path, &[], Some(inputs.clone())).await;
        assert_eq!((status.as_u16(), &again), (200, &made));
        // Another tenant cannot take the number, nor read it through the conflict.
        let (status, refused) = send(app, B, Method::PUT, path, &[], Some(inputs)).await;
        assert_eq!(status, 409);
        assert!(refused.get("origin_country_id").is_none(), "{refused}");
        // Other inputs are another registration: the number is taken.
        let (status, _) = send(app, A, Method::PUT, path, &[], Some(json!({"weight": 3}))).await;
        assert_eq!(status, 409);
    })
    .await;
}
