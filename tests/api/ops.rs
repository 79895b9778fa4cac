//! Operating the service: request ids, metrics, probes, API keys, rate limits, CORS, request
//! limits, connection cap, graceful shutdown and logs.

use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    BinaryApp, RedisServer, SECRET, TestApp, config, keys_file, spawn_app, spawn_embedded,
    spawn_on_redis, wait_until, write_keys,
};

const QUERY: &str = "/next-tracking-number?origin_country_id=MY";

/// The value of one series in a metrics text, 0 when absent.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) async fn metrics_text(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.contains("openmetrics-text"), "{kind}");
    response.text().await.unwrap()
}

/// Asserts a problem reply with `status`, whose body names the request's id; returns the body.
pub(crate) async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    let code = response.status().as_u16();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    crate::contract::assert_problem(code, &kind, &body, status);
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    body
}

/// Sends raw bytes on a fresh connection and returns everything the server sent back (until it
/// closes or goes quiet for a moment).
pub(crate) async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_reply(&mut stream).await
}

pub(crate) async fn read_reply(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                reply.extend_from_slice(&buf[..n]);
                if complete_reply(&reply) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// A whole response with a Content-Length body has arrived.
fn complete_reply(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

pub(crate) fn status_of(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

pub(crate) fn body_of(reply: &str) -> Value {
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_appear_in_problems() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let response = app
        .with_header("X-Request-Id", "support-ticket-42")
        .get("/no-such-thing")
        .await;
    assert_eq!(response.headers()["x-request-id"], "support-ticket-42");
    let body = assert_problem(response, 404).await;
    assert_eq!(body["request_id"], "support-ticket-42");

    // An unsafe id is replaced, never echoed.
    let response = app
        .with_header("X-Request-Id", "bad id; <script>")
        .get(QUERY)
        .await;
    assert_eq!(response.status(), 200);
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 24, "{made}");
    assert!(made.chars().all(|c| c.is_ascii_hexdigit()), "{made}");

    // Made-up ids differ per request, and validation problems carry them too.
    let response = app.get("/next-tracking-number?weight=heavy").await;
    let other = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(other, made);
    let body = assert_problem(response, 400).await;
    assert_eq!(body["request_id"], other.as_str());
}

#[tokio::test]
async fn metrics_count_requests_numbers_leases_and_replays() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let before = metrics_text(&app).await;
    assert!(
        metric(&before, "tracknum_block_leases_total") >= 1.0,
        "{before}"
    );
    for _ in 0..3 {
        app.issue("origin_country_id=MY").await;
    }
    let batch = app.batch(&serde_json::json!({ "count": 5 })).await;
    assert_eq!(batch.status(), 201);
    let keyed = app.with_header("Idempotency-Key", "metrics-test-key");
    for _ in 0..2 {
        let replay = keyed.get(QUERY).await;
        assert_eq!(replay.status(), 200);
    }
    assert_eq!(
        app.get("/next-tracking-number?weight=x").await.status(),
        400
    );

    let after = metrics_text(&app).await;
    let count = |text: &str, series: &str| metric(text, series);
    assert_eq!(
        count(&after, "tracknum_numbers_issued_total")
            - count(&before, "tracknum_numbers_issued_total"),
        3.0 + 5.0 + 1.0,
        "{after}"
    );
    let ok =
        r#"tracknum_http_requests_total{route="/next-tracking-number",method="GET",status="200"}"#;
    assert_eq!(count(&after, ok) - count(&before, ok), 5.0, "{after}");
    let bad =
        r#"tracknum_http_requests_total{route="/next-tracking-number",method="GET",status="400"}"#;
    assert_eq!(count(&after, bad), 1.0);
    assert_eq!(count(&after, "tracknum_idempotent_replays_total"), 1.0);
    let latency = r#"tracknum_http_request_duration_seconds_count{route="/next-tracking-number"}"#;
    assert_eq!(count(&after, latency) - count(&before, latency), 6.0);
    assert!(count(&after, "tracknum_pool_serials") > 0.0);
    assert_eq!(count(&after, "tracknum_skipped_collisions_total"), 0.0);
    assert!(after.contains("tracknum_block_lease_duration_seconds_bucket"));
    assert!(after.contains("tracknum_rate_limited_total 0"));
}

#[tokio::test]
async fn readiness_flips_while_redis_is_down_and_liveness_does_not() {
    let mut redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &["--storage-timeout", "200ms"]).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");

    redis.kill();
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    assert!(not_ready.headers().contains_key("retry-after"));
    let body: Value = not_ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().unwrap().contains("storage"),
        "{body}"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
    let text = metrics_text(&app).await;
    assert!(
        metric(&text, r#"tracknum_storage_errors_total{operation="ping"}"#) >= 1.0,
        "{text}"
    );

    redis.restart_empty();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/readyz").await.status() != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn api_keys_guard_everything_but_probes_metrics_and_the_description() {
    let keys_dir = TempDir::new().unwrap();
    let path = keys_file(
        &keys_dir,
        &[
            ("shop-a", "key-a-0123456789"),
            ("shop-b", "key-b-9876543210"),
        ],
    );
    let (app, _dir) = spawn_embedded(&["--api-keys-file", path.to_str().unwrap()]).await;

    let missing = app.get(QUERY).await;
    assert_eq!(
        missing.headers()["www-authenticate"],
        r#"Bearer realm="tracknum""#
    );
    let body = assert_problem(missing, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));

    let wrong = app.with_key("key-a-0123456788").get(QUERY).await;
    assert!(
        wrong.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_problem(wrong, 401).await;
    // Basic credentials are not a key, whatever they hold: no typed request sends them.
    let basic = app
        .request(reqwest::Method::GET, QUERY)
        .basic_auth("shop-a", Some("key-a-0123456789"))
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401).await;

    assert_eq!(
        app.with_key("key-a-0123456789").get(QUERY).await.status(),
        200
    );
    assert_eq!(
        app.with_key("key-b-9876543210").get(QUERY).await.status(),
        200
    );
    // Unknown paths need a key too: no probing for what exists.
    assert_eq!(app.get("/v1/tracking-numbers/X").await.status(), 401);
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        assert_eq!(app.get(open).await.status(), 200, "{open}");
    }
    let text = metrics_text(&app).await;
    assert!(metric(&text, r#"tracknum_unauthorized_total{reason="missing"}"#) >= 2.0);
    assert_eq!(
        metric(
            &text,
            r#"tracknum_unauthorized_total{reason="unknown_key"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn api_keys_rotate_without_a_restart() {
    let dir = TempDir::new().unwrap();
    let path = keys_file(&dir, &[("old", "old-key-0123456789")]);
    let log = dir.path().join("log.txt");
    // The binary, for its log: the one sign that a broken file was read, and refused.
    let app = BinaryApp::start_logging(
        &dir.path().join("data"),
        &["--api-keys-file", path.to_str().unwrap()],
        "info",
        Some(&log),
    )
    .await;
    assert_eq!(
        app.with_key("old-key-0123456789").get(QUERY).await.status(),
        200
    );

    write_keys(&path, &[("new", "new-key-0123456789")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.with_key("new-key-0123456789").get(QUERY).await.status() != 200 {
        assert!(Instant::now() < deadline, "the new key was never picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.with_key("old-key-0123456789").get(QUERY).await.status(),
        401
    );

    // A broken file keeps the keys that work.
    std::fs::write(&path, "this is not a keys file\n").unwrap();
    wait_until(
        "the broken keys file refused",
        Duration::from_secs(10),
        async || {
            let text = std::fs::read_to_string(&log).unwrap();
            text.contains("API keys not reloaded; keeping the old ones")
        },
    )
    .await;
    assert_eq!(
        app.with_key("new-key-0123456789").get(QUERY).await.status(),
        200
    );
}

#[tokio::test]
async fn sighup_reloads_keys_in_the_binary_and_keys_never_reach_the_log() {
    let dir = TempDir::new().unwrap();
    let keys = keys_file(&dir, &[("first", "first-secret-key-0001")]);
    let log = dir.path().join("log.txt");
    let data = dir.path().join("data");
    let mut app = BinaryApp::start_logging(
        &data,
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        "info",
        Some(&log),
    )
    .await;
    let get = async |key: &str| {
        let client = app.with_key(key).with_header("X-Request-Id", "log-check-1");
        client.get(QUERY).await
    };
    assert_eq!(get("first-secret-key-0001").await.status(), 200);
    write_keys(&keys, &[("second", "second-secret-key-0002")]);
    app.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get("second-secret-key-0002").await.status() != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.signal("TERM");
    let status = app
        .wait_exit(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("secret-key"),
        "a key reached the log:\n{text}"
    );
    let access: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "tracknum::access" && l["request_id"] == "log-check-1")
        .collect();
    assert!(access.len() >= 2, "{text}");
    let line = &access[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/next-tracking-number");
    assert_eq!(line["status"], 200);
    assert_eq!(line["key"], "first");
    assert!(line["latency_us"].as_u64().is_some(), "{line}");
}

#[tokio::test]
async fn rate_limits_refuse_with_headers_then_recover() {
    let (app, _dir) = spawn_embedded(&["--rate-limit", "2", "--rate-burst", "3"]).await;
    for i in 0..3 {
        let response = app.get(QUERY).await;
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    let asked = Instant::now();
    let refused = app.get(QUERY).await;
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert!(refused.headers().contains_key("ratelimit-reset"));
    let body = assert_problem(refused, 429).await;
    assert_eq!(body["type"], "urn:tracknum:problem:rate-limited");
    // Probes are never limited.
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert!(metric(&metrics_text(&app).await, "tracknum_rate_limited_total") >= 1.0);

    // Served again once a token has come back: no later than Retry-After said, counted from
    // before the refused request was sent.
    wait_until(
        "a request served again",
        Duration::from_secs(retry + 5),
        async || app.get(QUERY).await.status() == 200,
    )
    .await;
    let waited = asked.elapsed();
    assert!(
        waited <= Duration::from_secs(retry),
        "served after {waited:?}"
    );
}

#[tokio::test]
async fn rate_limits_are_per_api_key() {
    let keys_dir = TempDir::new().unwrap();
    let path = keys_file(
        &keys_dir,
        &[("a", "key-a-0123456789"), ("b", "key-b-0123456789")],
    );
    let (app, _dir) = spawn_embedded(&[
        "--api-keys-file",
        path.to_str().unwrap(),
        "--rate-limit",
        "0.5",
        "--rate-burst",
        "2",
    ])
    .await;
    for _ in 0..2 {
        assert_eq!(
            app.with_key("key-a-0123456789").get(QUERY).await.status(),
            200
        );
    }
    assert_eq!(
        app.with_key("key-a-0123456789").get(QUERY).await.status(),
        429
    );
    assert_eq!(
        app.with_key("key-b-0123456789").get(QUERY).await.status(),
        200
    );
}

#[tokio::test]
async fn one_rate_limit_holds_across_instances_on_redis() {
    let redis = RedisServer::start();
    let flags = [
        "--rate-limit",
        "0.2",
        "--rate-burst",
        "8",
        "--rate-limit-global",
    ];
    let a = spawn_on_redis(&redis, &flags).await;
    let b = spawn_on_redis(&redis, &flags).await;
    let mut allowed = 0;
    for i in 0..40 {
        let app = if i % 2 == 0 { &a } else { &b };
        if app.get(QUERY).await.status() == 200 {
            allowed += 1;
        }
    }
    // One bucket of 8 for both, give or take the tokens each instance holds locally.
    assert!((6..=12).contains(&allowed), "{allowed} allowed");
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let response = app
        .with_header("Origin", "https://app.example")
        .get(QUERY)
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let preflight = app
        .preflight(QUERY, "https://app.example", "GET", None)
        .await;
    assert!(
        !preflight
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert_problem(preflight, 405).await;
}

#[tokio::test]
async fn cors_answers_preflights_for_allowed_origins() {
    let keys_dir = TempDir::new().unwrap();
    let path = keys_file(&keys_dir, &[("web", "web-key-0123456789")]);
    let (app, _dir) = spawn_embedded(&[
        "--cors-origins",
        "https://app.example,https://admin.example",
        "--api-keys-file",
        path.to_str().unwrap(),
    ])
    .await;
    // A preflight carries no key, and needs none.
    let preflight = app
        .preflight(
            "/v1/tracking-numbers/X",
            "https://admin.example",
            "PATCH",
            Some("authorization, content-type, if-match"),
        )
        .await;
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://admin.example"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("if-match")
    );

    let refused = app
        .preflight(QUERY, "https://evil.example", "GET", None)
        .await;
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let body = assert_problem(refused, 403).await;
    assert_eq!(body["errors"][0]["field"], "Origin");

    let from_app = app.with_header("Origin", "https://app.example");
    let response = from_app.with_key("web-key-0123456789").get(QUERY).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // Header names are the same whatever their case (RFC 9110 §5.1).
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-request-id")
    );
    // A browser can read a 401 too, to tell its user why.
    let unauthorized = from_app.get(QUERY).await;
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(
        unauthorized.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn oversized_requests_get_problems_and_the_server_keeps_serving() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let long_query = format!("{QUERY}&customer_name={}", "a".repeat(9000));
    assert_problem(app.get(&long_query).await, 414).await;

    let huge_header = app
        .with_header("X-Padding", &"p".repeat(20_000))
        .get(QUERY)
        .await;
    assert_problem(huge_header, 431).await;

    let mut many = app.with_header("x-h0", "v");
    for i in 1..120 {
        many = many.with_header(&format!("x-h{i}"), "v");
    }
    assert_problem(many.get(QUERY).await, 431).await;

    // A declared body over the largest limit is refused before it is read.
    let reply = raw_exchange(
        app.addr,
        b"POST /v1/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 3000000\r\n\r\n{",
    )
    .await;
    assert_eq!(status_of(&reply), 413, "{reply}");
    assert_eq!(body_of(&reply)["status"], 413);

    assert_eq!(app.get(QUERY).await.status(), 200);
}

#[tokio::test]
async fn a_request_over_the_time_limit_gets_a_503_problem() {
    let (app, _dir) = spawn_embedded(&["--request-timeout", "300ms"]).await;
    // The body never finishes arriving.
    let started = Instant::now();
    let reply = raw_exchange(
        app.addr,
        b"POST /v1/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"count\":",
    )
    .await;
    assert_eq!(status_of(&reply), 503, "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after"),
        "{reply}"
    );
    assert_eq!(body_of(&reply)["type"], "urn:tracknum:problem:timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(app.get(QUERY).await.status(), 200);
}

#[tokio::test]
async fn connections_over_the_cap_get_a_503_problem_until_one_closes() {
    let (app, _dir) = spawn_embedded(&["--max-connections", "2"]).await;
    // The client's pooled connection from start-up may hold a slot: count on raw ones only.
    let request = format!("GET {QUERY} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(status_of(&read_reply(&mut first).await), 200);

    // Fill the cap with kept-alive connections, then one more is refused.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_reply(&mut stream).await;
        if status_of(&reply) == 503 {
            refused = Some(reply);
            break;
        }
        held.push(stream);
    }
    let reply = refused.expect("a connection over the cap was refused");
    assert_eq!(body_of(&reply)["type"], "urn:tracknum:problem:overloaded");
    assert!(reply.to_ascii_lowercase().contains("retry-after"));

    drop(held);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = raw_exchange(app.addr, request.as_bytes()).await;
        if status_of(&reply) == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_keeps_their_records() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let app = spawn_app(config(&["--data-dir", &data])).await;

    // A batch whose body is half sent when the shutdown starts.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let body = br#"{"count":3,"origin_country_id":"SG"}"#;
    let head = format!(
        "POST /v1/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once the shutdown has begun.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting during shutdown"
    );
    stream.write_all(&body[10..]).await.unwrap();
    let reply = read_reply(&mut stream).await;
    assert_eq!(status_of(&reply), 201, "{reply}");
    let records = body_of(&reply)["records"].as_array().unwrap().clone();
    assert_eq!(records.len(), 3);
    stopping.await.unwrap();

    // Every number answered was kept.
    let again = spawn_app(config(&["--data-dir", &data])).await;
    for record in records {
        let number = record["tracking_number"].as_str().unwrap();
        let found = again.get_record(number).await;
        assert_eq!(found.status(), 200, "{number} was lost");
    }
    again.stop().await;
}

#[tokio::test]
async fn help_lists_every_setting_and_bad_settings_stop_the_start() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tracknum"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for env in [
        "TRACKNUM_LISTEN",
        "REDIS_URL",
        "TRACKNUM_API_KEYS_FILE",
        "TRACKNUM_RATE_LIMIT",
        "TRACKNUM_RATE_BURST",
        "TRACKNUM_RATE_LIMIT_GLOBAL",
        "TRACKNUM_CORS_ORIGINS",
        "TRACKNUM_LOG_FORMAT",
        "TRACKNUM_MAX_CONNECTIONS",
        "TRACKNUM_REQUEST_TIMEOUT",
        "TRACKNUM_IDLE_TIMEOUT",
        "TRACKNUM_MAX_HEADER_BYTES",
        "TRACKNUM_MAX_URI_BYTES",
        "TRACKNUM_CLIENT_IP_HEADER",
        "TRACKNUM_DRAIN_TIMEOUT",
    ] {
        assert!(text.contains(env), "--help does not mention {env}");
        assert!(
            readme.contains(env),
            "docs/configuration.md does not mention {env}"
        );
    }

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_tracknum"))
        .args(["--rate-limit", "lots"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--rate-limit"), "{err}");

    let dir = TempDir::new().unwrap();
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_tracknum"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-keys-file",
            "/no/such/keys",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/no/such/keys"), "{err}");
}

#[tokio::test]
async fn an_open_server_says_so_at_start() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("log.txt");
    let mut app = BinaryApp::start_logging(&dir.path().join("data"), &[], "info", Some(&log)).await;
    app.signal("TERM");
    assert!(app.wait_exit(Duration::from_secs(15)).unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the API is open"), "{text}");
}

#[tokio::test]
async fn keys_guard_a_redis_backed_server_too() {
    // The combination most deployments run: Redis, a secret and keys, all from flags.
    let redis = RedisServer::start();
    let keys_dir = TempDir::new().unwrap();
    let path = keys_file(&keys_dir, &[("svc", "svc-key-0123456789")]);
    let url = redis.url();
    let app = spawn_app(config(&[
        "--redis-url",
        &url,
        "--secret",
        SECRET,
        "--api-keys-file",
        path.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(
        app.with_key("svc-key-0123456789").get(QUERY).await.status(),
        200
    );
    assert_eq!(app.get(QUERY).await.status(), 401);
}
