//! The connection edge under careless and hostile clients: a download or an upload that stops
//! moving, HTTP/2 connections that answer pings but ask for nothing, HEAD wherever GET works,
//! and request framing that must be refused rather than guessed at.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{TestApp, spawn_embedded, wait_until};
use crate::ops::{body_of, metric, raw_exchange, status_of};

/// The idle timeout these tests run with: short, so that the cut-offs come quickly.
const IDLE: &str = "1s";
/// How long a cut-off may take: the idle timeout and a generous margin for a loaded machine.
const CUT_WITHIN: Duration = Duration::from_secs(6);

/// A CSV file whose results are large but quick to make: each row's name is over the 200
/// characters allowed, so the row is refused (nothing to issue) and comes back whole.
fn wide_file(rows: usize) -> String {
    let name = "n".repeat(4000);
    let mut file = String::from("order_id,origin_country_id,weight,customer_name\n");
    for row in 0..rows {
        file.push_str(&format!("ord-{row},MY,1.5,{name}\n"));
    }
    file
}

/// Imports `wide_file(rows)` and waits for it to end; returns the results' path and length.
/// The client keeps no connection open afterwards, so that no slot is held by it.
async fn large_results(app: &TestApp, rows: usize) -> (String, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let reply = client
        .post(app.url("/v1/imports"))
        .header("content-type", "text/csv")
        .body(wide_file(rows))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let job: Value = reply.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job: Value = client
            .get(app.url(&format!("/v1/imports/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        if job["status"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "the import never ended: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("/v1/imports/{id}/results");
    let reply = client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let len = reply.bytes().await.unwrap().len();
    (path, len)
}

/// Waits until no connection but the one asking is open (a client's keep-alive connection
/// would hold a slot until the idle timeout closes it), so that every slot is free.
async fn slots_free(app: &TestApp) {
    let ask = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    wait_until("every slot free", CUT_WITHIN, async || {
        let reply = raw_exchange(app.addr, ask).await;
        status_of(&reply) == 200 && metric(&reply, "tracknum_open_connections") == 1.0
    })
    .await;
}

/// A connection with a small receive buffer that sends `request` and then reads nothing.
async fn stalled(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream
}

/// Reads what the server sent until it closes the connection: the bytes, or None if it is
/// still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asks for `path` on fresh connections until one is served (not refused for want of a slot);
/// returns how long that took.
async fn served_after(addr: SocketAddr, path: &str) -> Duration {
    let started = Instant::now();
    loop {
        let reply = raw_exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let status = status_of(&reply);
        if status != 503 {
            assert_eq!(status, 200, "{reply}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "every slot is still held: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_download_that_stops_moving_is_cut_off_and_frees_its_slot() {
    let (app, _dir) = spawn_embedded(&["--max-connections", "3", "--idle-timeout", IDLE]).await;
    // Some 12 MB: more than the socket buffers of both ends can hold.
    let (path, len) = large_results(&app, 3000).await;
    assert!(len > 10_000_000, "{len} bytes of results");
    slots_free(&app).await;

    // Three readers ask for the results and never read: every slot.
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(stalled(app.addr, request.as_bytes()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = raw_exchange(
        app.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status_of(&refused),
        503,
        "the slots are held for now: {refused}"
    );

    // After the idle timeout without progress, the server cuts them off and serves others.
    let waited = served_after(app.addr, "/v1/imports").await;
    assert!(waited < CUT_WITHIN, "served only after {waited:?}");
    for reader in &mut readers {
        let got = read_until_closed(reader, CUT_WITHIN)
            .await
            .expect("the server closed the stalled download");
        assert!(got.len() < len, "the download was cut, not finished");
    }

    // A reader that is slow but keeps reading gets everything, though it takes longer than the
    // idle timeout: only a reply that makes no progress is cut.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut round = 0;
        while round < 2_000_000 {
            let n = slow.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            round += n;
        }
        got += round;
        if round < 2_000_000 {
            break;
        }
        // The reader's pause: most of the idle timeout, which it never reaches. The point.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert!(
        got > len,
        "the whole reply arrived: {got} of {len} bytes and a head"
    );
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Over HTTP/2 a client stops a reply by granting no more flow-control window, its socket
    // free (and its pings answered): cut off the same way.
    let (mut sender, driver) = h2_connect(app.addr).await;
    let reply = sender
        .send_request(h2_request("GET", app.addr, &path, empty()))
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    tokio::time::timeout(CUT_WITHIN, driver)
        .await
        .expect("the server closed the connection of the stalled HTTP/2 download")
        .unwrap();
    drop((reply, sender));
}

#[tokio::test]
async fn an_upload_that_stops_moving_is_cut_off_and_frees_its_slot() {
    let (app, _dir) = spawn_embedded(&[
        "--max-connections",
        "3",
        "--idle-timeout",
        IDLE,
        "--request-timeout",
        "60s",
    ])
    .await;
    slots_free(&app).await;
    // Three uploads promise a megabyte, send a tenth of it and stop.
    let mut head = b"POST /v1/imports HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
                     Content-Length: 1000000\r\n\r\norder_id,origin_country_id,weight\n"
        .to_vec();
    while head.len() < 100_000 {
        head.extend_from_slice(b"ord-1,MY,1.5\n");
    }
    let mut uploads = Vec::new();
    for _ in 0..3 {
        uploads.push(stalled(app.addr, &head).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = raw_exchange(app.addr, b"GET /v1/imports HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        status_of(&refused),
        503,
        "the slots are held for now: {refused}"
    );

    let waited = served_after(app.addr, "/v1/imports").await;
    assert!(waited < CUT_WITHIN, "served only after {waited:?}");
    for upload in &mut uploads {
        let reply = read_until_closed(upload, CUT_WITHIN)
            .await
            .expect("the server closed the stalled upload");
        let reply = String::from_utf8_lossy(&reply);
        assert_eq!(status_of(&reply), 400, "{reply}");
        assert_eq!(body_of(&reply)["errors"][0]["field"], "body", "{reply}");
    }

    // An upload that is slow but keeps sending is taken, though it lasts past the idle timeout.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let rows: Vec<String> = (0..12).map(|i| format!("slow-{i},MY,1.5\n")).collect();
    let body = format!("order_id,origin_country_id,weight\n{}", rows.concat());
    slow.write_all(
        format!(
            "POST /v1/imports HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\norder_id,origin_country_id,weight\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    for row in &rows {
        tokio::time::sleep(Duration::from_millis(250)).await;
        slow.write_all(row.as_bytes()).await.unwrap();
    }
    let reply = read_until_closed(&mut slow, CUT_WITHIN).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(status_of(&reply), 202, "{reply}");
}

/// An HTTP/2 connection with prior knowledge. The returned task drives it (and answers the
/// server's pings) until it closes.
async fn h2_connect(addr: SocketAddr) -> (http2::SendRequest<H2Body>, JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, driver)
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn h2_request(method: &str, addr: SocketAddr, path: &str, body: H2Body) -> hyper::Request<H2Body> {
    hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(body)
        .unwrap()
}

fn empty() -> H2Body {
    Empty::new().boxed()
}

#[tokio::test]
async fn idle_http2_connections_are_closed_and_free_their_slots() {
    let (app, _dir) = spawn_embedded(&["--max-connections", "3", "--idle-timeout", IDLE]).await;
    slots_free(&app).await;
    // Three HTTP/2 connections that answer the server's pings and ask for nothing. (Their
    // senders are kept: a client drops the connection itself when they are gone.)
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(h2_connect(app.addr).await);
    }
    let started = Instant::now();
    let refused = raw_exchange(app.addr, b"GET /v1/imports HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        status_of(&refused),
        503,
        "the slots are held for now: {refused}"
    );
    for (_, driver) in &mut idle {
        tokio::time::timeout(CUT_WITHIN, driver)
            .await
            .expect("the server closed the idle HTTP/2 connection")
            .unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let waited = served_after(app.addr, "/v1/imports").await;
    assert!(
        waited < Duration::from_secs(2),
        "served only after {waited:?}"
    );

    // A connection used once and then left idle is closed as well.
    let (mut sender, driver) = h2_connect(app.addr).await;
    let reply = sender
        .send_request(h2_request("GET", app.addr, "/healthz", empty()))
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    reply.into_body().collect().await.unwrap();
    tokio::time::timeout(CUT_WITHIN, driver)
        .await
        .expect("the server closed the HTTP/2 connection once idle")
        .unwrap();
}

#[tokio::test]
async fn an_http2_stream_that_moves_slowly_is_not_cut_for_idleness() {
    let (app, _dir) = spawn_embedded(&["--idle-timeout", IDLE]).await;
    let (mut sender, _driver) = h2_connect(app.addr).await;
    // An upload that sends a row every 250 ms, for three seconds: its stream is open all along.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream_of(rx)).boxed();
    let mut request = h2_request("POST", app.addr, "/v1/imports", body);
    request
        .headers_mut()
        .insert("content-type", "text/csv".parse().unwrap());
    let started = Instant::now();
    let reply = tokio::spawn(sender.send_request(request));
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"order_id,origin_country_id,weight\n",
    ))))
    .await
    .unwrap();
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let row = format!("slow-{i},MY,1.5\n");
        tx.send(Ok(Frame::data(Bytes::from(row)))).await.unwrap();
    }
    drop(tx);
    let reply = reply.await.unwrap().unwrap();
    assert!(started.elapsed() > Duration::from_secs(2));
    let status = reply.status();
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
}

/// The receiving end of `rx`, as a stream.
fn tokio_stream_of<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Sends `request` (which should say `Connection: close`) and returns all that comes back.
async fn exchange_to_end(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let reply = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&reply).into_owned()
}

/// A reply's head as (status, lower-case header lines, sorted) and what follows it.
fn split_reply(reply: &str) -> (u16, Vec<String>, &str) {
    let (head, body) = reply.split_once("\r\n\r\n").expect("a whole head");
    let mut headers: Vec<String> = head
        .lines()
        .skip(1)
        .map(str::to_ascii_lowercase)
        .filter(|line| !line.starts_with("date:") && !line.starts_with("x-request-id:"))
        .collect();
    headers.sort();
    (status_of(reply), headers, body)
}

#[tokio::test]
async fn head_is_answered_wherever_get_is_with_the_same_head_and_no_body() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let number = app.issue("").await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = format!("/v1/tracking-numbers/{number}");
    for path in [
        "/openapi.json",
        record.as_str(),
        &format!("{record}/check"),
        "/",
    ] {
        let get = exchange_to_end(
            app.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let head = exchange_to_end(
            app.addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let (get_status, get_headers, get_body) = split_reply(&get);
        let (head_status, head_headers, head_body) = split_reply(&head);
        assert_eq!(get_status, 200, "GET {path}: {get}");
        assert_eq!(head_status, 200, "HEAD {path}: {head}");
        assert_eq!(head_headers, get_headers, "HEAD {path} has GET's headers");
        assert!(!get_body.is_empty());
        assert_eq!(head_body, "", "HEAD {path} has no body");
    }
    // The metrics change between two calls; their head is the same kind.
    let head = exchange_to_end(
        app.addr,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (status, headers, body) = split_reply(&head);
    assert_eq!((status, body), (200, ""), "{head}");
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("content-type: application/openmetrics-text"))
    );

    // HEAD of the issuing route checks the inputs as GET would, and issues nothing.
    let issued = |text: &str| metric(text, "tracknum_numbers_issued_total");
    let before = issued(&app.get("/metrics").await.text().await.unwrap());
    for path in [
        "/next-tracking-number?origin_country_id=MY",
        "/v1/next-tracking-number",
    ] {
        let head = exchange_to_end(
            app.addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        let (status, headers, body) = split_reply(&head);
        assert_eq!((status, body), (200, ""), "{head}");
        assert!(
            headers.contains(&"content-type: application/json".to_owned()),
            "{head}"
        );
        assert!(
            headers.contains(&"cache-control: no-store".to_owned()),
            "{head}"
        );
        assert!(
            !headers.iter().any(|h| h.starts_with("etag:")),
            "no record, no tag: {head}"
        );
    }
    let bad = exchange_to_end(
        app.addr,
        "HEAD /next-tracking-number?origin_country_id=XX HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (status, headers, body) = split_reply(&bad);
    assert_eq!((status, body), (400, ""), "{bad}");
    assert!(headers.contains(&"content-type: application/problem+json".to_owned()));
    let after = issued(&app.get("/metrics").await.text().await.unwrap());
    assert_eq!(before, after, "HEAD issued no number");

    // A 405 names HEAD beside GET, and a CORS preflight agrees.
    let post = raw_exchange(
        app.addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&post), 405, "{post}");
    assert!(
        post.to_ascii_lowercase()
            .contains("\r\nallow: get, head\r\n"),
        "{post}"
    );
}

#[tokio::test]
async fn head_over_http2_sends_no_body() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let (mut sender, _driver) = h2_connect(app.addr).await;
    let get = sender
        .send_request(h2_request("GET", app.addr, "/openapi.json", empty()))
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let length = get.headers()["content-length"].clone();
    let get_body = get.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(length, get_body.len().to_string().as_str());
    let head = sender
        .send_request(h2_request("HEAD", app.addr, "/openapi.json", empty()))
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], length);
    let mut body = head.into_body();
    let frame = body.frame().await;
    assert!(frame.is_none(), "no DATA frame after a HEAD: {frame:?}");
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_not_implemented() {
    let (app, _dir) = spawn_embedded(&[]).await;
    for coding in ["gzip, chunked", "x-custom,chunked", "identity, chunked"] {
        let reply = raw_exchange(
            app.addr,
            format!(
                "POST /v1/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: {coding}\r\n\r\nb\r\n{{\"count\":1}}\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&reply), 501, "{coding}: {reply}");
        assert!(reply.contains("application/problem+json"), "{reply}");
        assert!(
            body_of(&reply)["detail"]
                .as_str()
                .unwrap()
                .contains("Transfer-Encoding")
        );
    }
    // Two fields that add up to the same list are refused the same way.
    let reply = raw_exchange(
        app.addr,
        b"POST /v1/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"count\":1}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 501, "{reply}");
    // Chunked alone is taken.
    let reply = raw_exchange(
        app.addr,
        b"POST /v1/tracking-numbers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\nb\r\n{\"count\":1}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 201, "{reply}");
}

#[tokio::test]
async fn two_authorization_headers_are_refused_and_named() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = crate::helpers::keys_file(&dir, &[("shop", "shop-key-0123456789")]);
    let (app, _data) = spawn_embedded(&["--api-keys-file", keys.to_str().unwrap()]).await;
    for (first, second) in [
        ("Bearer shop-key-0123456789", "Bearer wrong-key-0123456789"),
        ("Bearer wrong-key-0123456789", "Bearer shop-key-0123456789"),
        ("Bearer shop-key-0123456789", "Bearer shop-key-0123456789"),
    ] {
        let reply = raw_exchange(
            app.addr,
            format!(
                "GET /next-tracking-number HTTP/1.1\r\nHost: x\r\nAuthorization: {first}\r\n\
                 Authorization: {second}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&reply), 400, "{reply}");
        assert_eq!(
            body_of(&reply)["errors"][0]["field"],
            "Authorization",
            "{reply}"
        );
    }
    let one = raw_exchange(
        app.addr,
        b"GET /next-tracking-number HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer shop-key-0123456789\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&one), 200, "{one}");
}

/// Every value of every `Vary` field of a reply, lower-cased.
fn vary_values(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn cors_replies_name_origin_in_vary_once() {
    let (app, _dir) = spawn_embedded(&["--cors-origins", "https://app.example"]).await;
    let preflight = |origin: &'static str, method: &'static str| {
        app.preflight("/v1/tracking-numbers/X", origin, method, None)
    };
    let allowed = preflight("https://app.example", "PATCH").await;
    assert_eq!(allowed.status(), 204);
    let refused = preflight("https://evil.example", "PATCH").await;
    assert_eq!(refused.status(), 403);
    let from_app = app.with_header("Origin", "https://app.example");
    let get = from_app.get("/healthz").await;
    let head = from_app.head("/").await;
    // A large reply (the page) also varies by Accept-Encoding: it may be compressed.
    for reply in [allowed, refused, get, head] {
        let mut vary = vary_values(reply.headers());
        vary.retain(|name| name != "accept-encoding");
        assert_eq!(vary, ["origin"], "{} {:?}", reply.status(), reply.headers());
    }
    // The preflight allows HEAD, and only the methods the path takes.
    let methods = preflight("https://app.example", "GET").await;
    let methods = methods.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(methods, "GET, HEAD, PATCH, DELETE, PUT");
}

/// A GET of `path` asking for gzip: its status, `Content-Encoding` and body as sent.
async fn gzipped(app: &TestApp, path: &str) -> (u16, Option<String>, Bytes) {
    let reply = app.with_header("accept-encoding", "gzip").get(path).await;
    let status = reply.status().as_u16();
    let encoding = reply
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, encoding, reply.bytes().await.unwrap())
}

#[tokio::test]
async fn large_replies_are_compressed_for_clients_that_ask_and_records_never() {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    let (app, _dir) = spawn_embedded(&[]).await;
    let plain = app.get("/openapi.json").await;
    assert!(!plain.headers().contains_key("content-encoding"));
    let plain = plain.bytes().await.unwrap();
    let (status, encoding, packed) = gzipped(&app, "/openapi.json").await;
    assert_eq!((status, encoding.as_deref()), (200, Some("gzip")));
    assert_eq!(packed[..2], GZIP_MAGIC);
    assert!(
        packed.len() * 3 < plain.len(),
        "{} of {}",
        packed.len(),
        plain.len()
    );

    let (path, len) = large_results(&app, 2_000).await;
    let (status, encoding, packed) = gzipped(&app, &path).await;
    assert_eq!((status, encoding.as_deref()), (200, Some("gzip")));
    assert_eq!(packed[..2], GZIP_MAGIC);
    assert!(packed.len() < len, "{} of {len}", packed.len());

    // A record is a few hundred bytes: compressing it would cost more than it saves.
    let (status, encoding, _) = gzipped(&app, "/next-tracking-number?origin_country_id=MY").await;
    assert_eq!((status, encoding), (200, None));
}
