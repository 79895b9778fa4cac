//! The `loadtest` binary, run as a user would: against the real server, and against fake
//! servers that misbehave in the ways it must catch (a repeated number, a bad check character,
//! errors).

mod helpers;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracknum::domain::codec::{DIGITS, check_char};

use crate::helpers::{free_port, keys_file, spawn_embedded};

/// Runs `loadtest --json --quiet <args>` off the runtime (the server under test shares it).
async fn loadtest(args: &[&str]) -> (Output, Value) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["--json", "--quiet"])
            .args(&args)
            .env_remove("TRACKNUM_API_KEY")
            .output()
            .expect("loadtest runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, summary)
}

/// A number in tracknum's layout: the serial in base 36, then the check character.
fn number(serial: u64) -> String {
    let mut chars = format!("{:0>15}", radix36(serial)).into_bytes();
    chars.push(check_char(&chars).unwrap());
    String::from_utf8(chars).unwrap()
}

fn radix36(mut n: u64) -> String {
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// A keep-alive HTTP/1.1 server answering the i-th request (from 0) with `reply(i)`.
async fn fake_server(reply: impl Fn(u64) -> (u16, String) + Send + Sync + 'static) -> String {
    slow_fake_server(Duration::ZERO, reply).await
}

/// `fake_server`, waiting `delay` before each reply.
async fn slow_fake_server(
    delay: Duration,
    reply: impl Fn(u64) -> (u16, String) + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let reply = Arc::new(reply);
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (reply, count) = (reply.clone(), count.clone());
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        let (status, body) = reply(count.fetch_add(1, Ordering::Relaxed));
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if socket.write_all((head + &body).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    url
}

fn record(number: &str) -> String {
    format!(r#"{{"tracking_number":"{number}","status":"issued"}}"#)
}

#[tokio::test]
async fn a_run_against_the_real_server_passes_with_every_number_unique() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let (output, s) = loadtest(&[&app.url(""), "-n", "2000", "-c", "8"]).await;
    assert!(output.status.success(), "{s}");
    assert_eq!(s["passed"], true);
    assert_eq!(s["requests"], 2000);
    assert_eq!(s["numbers"], 2000);
    assert_eq!(s["statuses"], serde_json::json!({"200": 2000}));
    assert_eq!(
        (s["duplicates"].as_u64(), s["invalid"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn batches_with_order_inputs_count_every_number() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let (output, s) = loadtest(&[
        &app.url(""),
        "--path",
        "/v1/tracking-numbers",
        "--batch-size",
        "25",
        "-p",
        "origin_country_id=MY",
        "-n",
        "40",
        "-c",
        "4",
    ])
    .await;
    assert!(output.status.success(), "{s}");
    assert_eq!(
        s["target"],
        format!("POST {}", app.url("/v1/tracking-numbers"))
    );
    assert_eq!(s["statuses"], serde_json::json!({"201": 40}));
    assert_eq!(s["numbers"], 1000);
}

#[tokio::test]
async fn open_loop_sends_exactly_the_scheduled_requests() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let (output, s) = loadtest(&[&app.url(""), "--rate", "200", "-d", "1s", "-c", "4"]).await;
    assert!(output.status.success(), "{s}");
    assert_eq!(s["mode"], "open");
    assert_eq!(s["requests"], 200);
    assert_eq!(s["numbers"], 200);
}

#[tokio::test]
async fn an_open_loop_run_shows_a_stall_in_latency_and_counts_what_it_could_not_send() {
    // One connection, 50 requests due in one second, each reply taking 200 ms.
    let url = slow_fake_server(Duration::from_millis(200), |i| (200, record(&number(i)))).await;
    let (output, s) = loadtest(&[
        &url,
        "--rate",
        "50",
        "-d",
        "1s",
        "-c",
        "1",
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "{s}");
    let replies = s["replies"].as_u64().unwrap();
    // About 2 s (the run plus --timeout) of 200 ms replies.
    assert!((5..=12).contains(&replies), "{s}");
    assert_eq!(s["unsent"].as_u64().unwrap() + replies, 50, "{s}");
    // The second request was due at 20 ms and sent at 200 ms: timed from when it was due.
    assert!(s["latency_ms"]["p90"].as_f64().unwrap() > 1000.0, "{s}");
    assert_eq!(s["duplicates"], 0);
}

#[tokio::test]
async fn the_api_key_is_sent_and_a_missing_one_fails_the_run() {
    let keys_dir = tempfile::TempDir::new().unwrap();
    let keys = keys_file(&keys_dir, &[("bench", "bench-key-0123456789")]);
    let (app, _dir) = spawn_embedded(&["--api-keys-file", keys.to_str().unwrap()]).await;

    let (output, s) = loadtest(&[
        &app.url(""),
        "-n",
        "50",
        "--api-key",
        "bench-key-0123456789",
    ])
    .await;
    assert!(output.status.success(), "{s}");
    assert_eq!(s["statuses"]["200"], 50);

    let (output, s) = loadtest(&[&app.url(""), "-n", "50"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(s["statuses"]["401"], 50);
    assert_eq!(s["numbers"], 0);
}

#[tokio::test]
async fn a_number_issued_twice_fails_the_run_and_is_shown_with_both_replies() {
    // Every fifth reply repeats the number of the reply before it.
    let url = fake_server(|i| {
        let serial = if i % 5 == 4 { i - 1 } else { i };
        (
            200,
            format!(r#"{{"tracking_number":"{}","reply":{i}}}"#, number(serial)),
        )
    })
    .await;
    let (output, s) = loadtest(&[&url, "-n", "50", "-c", "1"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(s["passed"], false);
    assert_eq!(s["duplicates"], 10);
    assert_eq!(s["numbers"], 40);
    let first = &s["duplicate_examples"][0];
    assert_eq!(first["tracking_number"], number(3));
    assert!(
        first["first"]["body"]
            .as_str()
            .unwrap()
            .contains(r#""reply":3"#),
        "{first}"
    );
    assert!(
        first["second"]["body"]
            .as_str()
            .unwrap()
            .contains(r#""reply":4"#),
        "{first}"
    );
    assert!(
        s["failed_because"][0]
            .as_str()
            .unwrap()
            .contains("10 duplicate")
    );
}

#[tokio::test]
async fn a_wrong_check_character_or_a_bad_body_is_invalid() {
    let url = fake_server(|i| {
        let good = number(i);
        let body = match i % 10 {
            3 => record(&format!(
                "{}{}",
                &good[..15],
                if good.ends_with('0') { '1' } else { '0' }
            )),
            7 => "{\"status\":\"issued\"}".to_owned(),
            _ => record(&good),
        };
        (200, body)
    })
    .await;
    let (output, s) = loadtest(&[&url, "-n", "100", "-c", "2"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(s["invalid"], 20);
    assert_eq!(s["duplicates"], 0);
    let examples = s["invalid_examples"].to_string();
    assert!(examples.contains("wrong check character"), "{examples}");
    assert!(examples.contains("no tracking_number"), "{examples}");
}

#[tokio::test]
async fn errors_fail_the_run_only_past_the_allowed_rate() {
    // One reply in four is a 503.
    let url = fake_server(|i| match i % 4 {
        0 => (503, r#"{"status":503}"#.to_owned()),
        _ => (200, record(&number(i))),
    })
    .await;
    let (output, s) = loadtest(&[&url, "-n", "400", "-c", "1", "--max-error-rate", "0.3"]).await;
    assert!(output.status.success(), "{s}");
    assert_eq!(
        (s["errors"].as_u64(), s["statuses"]["503"].as_u64()),
        (Some(100), Some(100))
    );
    assert_eq!(s["error_rate"], 0.25);

    let (output, s) = loadtest(&[&url, "-n", "400", "-c", "1", "--max-error-rate", "0.1"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        s["failed_because"][0]
            .as_str()
            .unwrap()
            .starts_with("error rate")
    );
}

#[tokio::test]
async fn a_server_that_is_not_there_is_all_errors() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (output, s) = loadtest(&[&url, "-n", "5", "-c", "1"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(s["failures"]["connect"], 5);
    assert_eq!(s["error_rate"], 1.0);
}

#[tokio::test]
async fn a_bad_command_line_exits_2_naming_the_setting() {
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["http://127.0.0.1:1", "--rate=0"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate"));
}
