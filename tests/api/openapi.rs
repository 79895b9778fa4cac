//! `GET /openapi.json`: served as JSON, OpenAPI 3.1, and documenting every route the router
//! serves.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_embedded};

/// Every route the router serves. `{tn}` stands for a number with a record.
const SERVED: [(&str, &str); 30] = [
    ("GET", "/next-tracking-number"),
    ("HEAD", "/next-tracking-number"),
    ("GET", "/v1/next-tracking-number"),
    ("HEAD", "/v1/next-tracking-number"),
    ("POST", "/v1/tracking-numbers"),
    ("GET", "/v1/tracking-numbers/{tn}"),
    ("HEAD", "/v1/tracking-numbers/{tn}"),
    ("PATCH", "/v1/tracking-numbers/{tn}"),
    ("PUT", "/v1/tracking-numbers/{tn}"),
    ("DELETE", "/v1/tracking-numbers/{tn}"),
    ("GET", "/v1/tracking-numbers/{tn}/check"),
    ("HEAD", "/v1/tracking-numbers/{tn}/check"),
    ("POST", "/v1/imports"),
    ("GET", "/v1/imports"),
    ("HEAD", "/v1/imports"),
    ("GET", "/v1/imports/{id}"),
    ("HEAD", "/v1/imports/{id}"),
    ("DELETE", "/v1/imports/{id}"),
    ("GET", "/v1/imports/{id}/results"),
    ("HEAD", "/v1/imports/{id}/results"),
    ("GET", "/healthz"),
    ("HEAD", "/healthz"),
    ("GET", "/readyz"),
    ("HEAD", "/readyz"),
    ("GET", "/metrics"),
    ("HEAD", "/metrics"),
    ("GET", "/openapi.json"),
    ("HEAD", "/openapi.json"),
    ("GET", "/"),
    ("HEAD", "/"),
];

#[tokio::test]
async fn openapi_document_is_served_and_lists_every_route() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.expect("the document is JSON");
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi is {version:?}");

    let number = app.issue("").await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path) in SERVED {
        let operation = &doc["paths"][path][method.to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is served but missing from /openapi.json"
        );
        // The list above is the router's: each route reaches a handler.
        let (status, detail) = send(
            &app,
            method,
            &path
                .replace("{tn}", &number)
                .replace("{id}", "no-such-import"),
        )
        .await;
        assert!(
            !(status == 405 || (status == 404 && detail == "no such resource")),
            "{method} {path} is not routed: {status} {detail}"
        );
    }
}

async fn send(app: &TestApp, method: &str, path: &str) -> (u16, String) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let response = app
        .request(method, path)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn openapi_document_is_the_same_bytes_every_time() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let first = app.get("/openapi.json").await.bytes().await.unwrap();
    let second = app.get("/openapi.json").await.bytes().await.unwrap();
    assert_eq!(first, second);
}
