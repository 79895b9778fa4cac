//! Hostile callers and broken dependencies at the edge: silent sockets, malformed and
//! oversized input, key guessing, and storage failures that must never leak their own words.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::contract::error_fields;
use crate::helpers::{
    RedisServer, SECRET, config, keys_file, spawn_embedded, spawn_live, spawn_on_redis, wait_until,
};
use crate::ops::{body_of, raw_exchange, status_of};

/// Words that would tell a client about our insides.
const INTERNAL_WORDS: [&str; 12] = [
    "redis",
    "Redis",
    "NOSCRIPT",
    "WRONGPASS",
    "NOAUTH",
    "password",
    "Password",
    "127.0.0.1",
    "panicked",
    "redb",
    "/tmp",
    "os error",
];

fn assert_no_internal_text(text: &str) {
    for word in INTERNAL_WORDS {
        assert!(!text.contains(word), "{word:?} reached a client: {text}");
    }
    // Nor a Lua script's SHA-1 (40 hex digits in a row).
    let hex_run = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(hex_run < 40, "a SHA reached a client: {text}");
}

#[tokio::test]
async fn silent_sockets_are_closed_after_the_idle_timeout_and_probes_always_get_through() {
    let (app, _dir) = spawn_embedded(&["--max-connections", "50", "--idle-timeout", "1s"]).await;
    // Sixty connections that never send a byte: more than every slot.
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The probes still answer while every slot is held...
    for path in ["/healthz", "/readyz"] {
        let reply = raw_exchange(
            app.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&reply), 200, "{path}: {reply}");
    }
    // ...other requests are refused with a problem...
    let busy = raw_exchange(
        app.addr,
        b"GET /next-tracking-number HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&busy), 503, "{busy}");
    // ...until the silent sockets are closed by the server, after the idle timeout.
    let started = Instant::now();
    for stream in &mut silent[..50] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the server closed a silent socket"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let served = raw_exchange(
        app.addr,
        b"GET /next-tracking-number HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&served), 200, "{served}");
    // A socket that sends part of a request head and stops is closed too.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /next-track").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a half-sent head is not held open forever");
}

#[tokio::test]
async fn a_member_given_twice_is_refused_and_named() {
    let (app, _dir) = spawn_embedded(&[]).await;
    for (body, field) in [
        (r#"{"count":1,"count":3}"#, "count"),
        (
            r#"{"orders":[{"weight":1},{"weight":1,"weight":2}]}"#,
            "orders[1].weight",
        ),
    ] {
        // Raw bodies: a typed request would never send a member twice.
        let response = app
            .request(Method::POST, "/v1/tracking-numbers")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(error_fields(&problem), [field], "{problem}");
    }
    let issued = app.issue("").await;
    let record = format!(
        "/v1/tracking-numbers/{}",
        issued["tracking_number"].as_str().unwrap()
    );
    let response = app
        .request(Method::PATCH, &record)
        .body(r#"{"status":"in_transit","status":"cancelled"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        app.get(&record).await.json::<Value>().await.unwrap()["status"],
        "issued"
    );
}

#[tokio::test]
async fn an_http11_request_needs_exactly_one_host() {
    let (app, _dir) = spawn_embedded(&[]).await;
    for request in [
        "GET /next-tracking-number HTTP/1.1\r\n\r\n",
        "GET /next-tracking-number HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /next-tracking-number HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        let reply = raw_exchange(app.addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), 400, "{request:?}: {reply}");
        assert_eq!(error_fields(&body_of(&reply)), ["Host"]);
    }
    for request in [
        "GET /next-tracking-number HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /next-tracking-number HTTP/1.0\r\n\r\n",
    ] {
        let reply = raw_exchange(app.addr, request.as_bytes()).await;
        assert_eq!(status_of(&reply), 200, "{request:?}: {reply}");
    }
}

#[tokio::test]
async fn a_huge_bad_query_gets_a_small_reply() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let query: String = (0..800).map(|i| format!("x{i}=&")).collect();
    assert!(query.len() < 8192);
    let response = app.get(&format!("/next-tracking-number?{query}")).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 100);
    assert_eq!(problem["error_count"], 800);
    assert!(text.len() < 16 * 1024, "{} bytes", text.len());
}

#[tokio::test]
async fn an_invented_leap_second_is_refused() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let response = app
        .get("/next-tracking-number?created_at=2018-11-20T23:59:60Z")
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        error_fields(&response.json().await.unwrap()),
        ["created_at"]
    );
    app.issue("created_at=2016-12-31T23:59:60Z").await;
}

#[tokio::test]
async fn guessing_keys_is_throttled_per_address() {
    let keys_dir = TempDir::new().unwrap();
    let path = keys_file(&keys_dir, &[("shop", "the-real-key-0123456789")]);
    let (app, _dir) = spawn_embedded(&["--api-keys-file", path.to_str().unwrap()]).await;
    let try_key = async |key: String| app.with_key(&key).get("/next-tracking-number").await;
    let mut statuses = Vec::new();
    for guess in 0..30 {
        statuses.push(try_key(format!("guess-{guess}")).await.status().as_u16());
    }
    assert!(statuses[..20].iter().all(|&s| s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|&s| s == 429), "{statuses:?}");
    // While throttled, even the right key is not checked: a guess cannot be confirmed.
    let asked = Instant::now();
    let refused = try_key("the-real-key-0123456789".into()).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The right key works again by Retry-After, counted from before the refused request was
    // sent, give or take 100 ms (a guess spends a token a second, so Retry-After is about the
    // whole wait). Asking while throttled spends nothing.
    wait_until(
        "the right key served again",
        Duration::from_secs(retry + 5),
        async || try_key("the-real-key-0123456789".into()).await.status() == 200,
    )
    .await;
    let waited = asked.elapsed();
    let limit = Duration::from_secs(retry) + Duration::from_millis(100);
    assert!(waited <= limit, "served after {waited:?}");
}

#[tokio::test]
async fn storage_failures_reach_clients_as_plain_503s() {
    // A Redis that wants a password we do not have.
    let redis = RedisServer::start();
    redis.cmd::<String>(&["CONFIG", "SET", "requirepass", "the-password-0123"]);
    let url = format!("redis://:wrong-password@127.0.0.1:{}", redis.port);
    // It never gets ready: wait for it to be alive only.
    let app = spawn_live(config(&[
        "--redis-url",
        &url,
        "--secret",
        SECRET,
        "--storage-timeout",
        "300ms",
    ]))
    .await;
    for path in [
        "/next-tracking-number",
        "/v1/tracking-numbers/MY0000000000000X",
        "/readyz",
    ] {
        let started = Instant::now();
        let response = app.get(path).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{path} hung");
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        assert_no_internal_text(&response.text().await.unwrap());
    }
}

#[tokio::test]
async fn a_hung_redis_gives_plain_503s_in_time_and_recovery_needs_no_restart() {
    let redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &["--storage-timeout", "300ms"]).await;
    let issued = app.issue("").await;
    let number = issued["tracking_number"].as_str().unwrap();
    redis.signal("STOP");
    let started = Instant::now();
    let patch = app
        .patch_record(number, &json!({"status": "in_transit"}), None)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(patch.status(), 503);
    assert_no_internal_text(&patch.text().await.unwrap());
    let put = app.put_record("LEGACY1", Some(&json!({}))).await;
    assert_eq!(put.status(), 503);
    assert_no_internal_text(&put.text().await.unwrap());
    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get_record(number).await.status() != 200 {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_short_secret_or_a_bad_redis_url_stops_the_start_without_echoing_it() {
    for (args, must_say) in [
        (&["--secret", "short-secret"][..], "at least 16 bytes"),
        (
            &[
                "--redis-url",
                "redis://user:hunter2-pw@db.internal:port",
                "--secret",
                SECRET,
            ][..],
            "--redis-url",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tracknum"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains(must_say), "{text}");
        assert_eq!(text.trim().lines().count(), 1, "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("short-secret"),
            "{text}"
        );
    }
}

/// Header values that are not visible ASCII reach the handler's own validation, not a stray 405
/// (schemathesis found a DELETE with such an `If-Match` answered 405).
#[tokio::test]
async fn headers_that_are_not_ascii_get_the_handlers_answer_not_a_405() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let odd = reqwest::header::HeaderValue::from_bytes("$.w§}".as_bytes()).unwrap();
    let number = app.issue("").await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned();
    // Raw headers: a typed request sends text only.
    let record = format!("/v1/tracking-numbers/{number}");
    let delete = app
        .request(Method::DELETE, &record)
        .header("if-match", odd.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 412);
    let patch = app
        .request(Method::PATCH, &record)
        .header("if-match", odd.clone())
        .json(&json!({"status": "in_transit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 412);
    for path in [
        "/next-tracking-number",
        &format!("/v1/tracking-numbers/{number}"),
    ] {
        let method = if path.starts_with("/next") {
            Method::GET
        } else {
            Method::DELETE
        };
        let request = app.request(method, path);
        let reply = request
            .header("idempotency-key", odd.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 400, "{path}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(error_fields(&body), ["Idempotency-Key"], "{path}");
    }
    // The record is still there: nothing above changed it.
    assert_eq!(app.get_record(&number).await.status(), 200);
}
