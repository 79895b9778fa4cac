//! Bulk import over HTTP: uploads (CSV bodies and multipart forms, every delimiter, a BOM),
//! bad rows and bad files, duplicate order ids, dry runs, cancelling, idempotent uploads,
//! listings, tenants, a large file, and jobs finished by another process after a kill.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;

use crate::client::ApiClient;
use crate::helpers::{
    BinaryApp, RedisServer, SECRET, keys_file, recorded_numbers, spawn_embedded, spawn_on_redis,
    wait_until,
};

const HEADER: &str = "order_id,origin_country_id,destination_country_id,weight,customer_name";

/// A reply's status and body: JSON, or else the text as a JSON string.
async fn read(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Uploads and asserts a 202; returns the job.
async fn accepted(app: &ApiClient, query: &str, body: &str) -> Value {
    let (status, job) = read(app.upload(query, body.to_owned()).await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job
}

fn id_of(job: &Value) -> &str {
    job["id"].as_str().unwrap()
}

/// Sends again while storage is busy (a 503, say for a slow fsync on a loaded machine), as a
/// client that polls does; any other reply is returned.
async fn unless_busy<F: Future<Output = Response>>(send: impl Fn() -> F) -> Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = send().await;
        if response.status() != 503 || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the job `id` until it has ended.
async fn ended(app: &ApiClient, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, job) = read(unless_busy(|| app.import(id)).await).await;
        assert_eq!(status, 200, "{job}");
        if ["done", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "the import never ended: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn finished(app: &ApiClient, job: &Value) -> Value {
    ended(app, id_of(job)).await
}

/// Waits until the job has issued its first chunk, and asserts it has not ended: the moment to
/// kill the process running it.
async fn under_way(app: &ApiClient, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = read(unless_busy(|| app.import(id)).await).await;
        assert_eq!(status, 200);
        assert_ne!(
            job["status"], "done",
            "the job ended before the kill: use a larger file"
        );
        if job["rows"]["processed"].as_u64().unwrap() > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the job never started: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The results of the job `id`, read as CSV with the given delimiter: the header row, then the
/// rows.
async fn results_of(app: &ApiClient, id: &str, delimiter: u8) -> Vec<Vec<String>> {
    let response = unless_busy(|| app.import_results(id)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let bytes = response.bytes().await.unwrap();
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(&bytes[..])
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

async fn results(app: &ApiClient, job: &Value) -> Vec<Vec<String>> {
    results_of(app, id_of(job), b',').await
}

fn is_number(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A file of `rows` good rows, each with its own order id (`ord-<row>`).
fn big_file(rows: usize) -> String {
    orders_file("ord-", rows)
}

/// A file of `rows` good rows, each with its own order id: `prefix` and the row's index.
fn orders_file(prefix: &str, rows: usize) -> String {
    let mut file = String::with_capacity(rows * 40 + 64);
    file.push_str("order_id,origin_country_id,weight\n");
    for row in 0..rows {
        file.push_str(&format!("{prefix}{row},MY,{}.5\n", row % 90 + 1));
    }
    file
}

/// Every row of the results got a number, each row its own: none missing, none twice.
fn assert_each_row_numbered_once(rows: &[Vec<String>], expected: usize) {
    assert_eq!(rows.len(), expected + 1, "the header and every row");
    let numbers: Vec<&str> = rows[1..].iter().map(|r| r[r.len() - 2].as_str()).collect();
    assert!(numbers.iter().all(|n| is_number(n)), "every row numbered");
    let unique: HashSet<&&str> = numbers.iter().collect();
    assert_eq!(unique.len(), numbers.len(), "no number given to two rows");
    for (at, row) in rows[1..].iter().enumerate() {
        assert_eq!(row[0], format!("ord-{at}"), "rows keep their input order");
    }
}

// The bodies below run on the embedded store, one Redis and a Redis Cluster.
on_both_backends!(
    good_rows_are_issued_and_bad_ones_reported,
    rows_sharing_an_order_id_share_a_number_across_imports,
    a_dry_run_checks_every_row_and_issues_nothing,
    every_delimiter_and_a_bom_are_read,
    a_multipart_upload_is_read_from_its_file_part,
    a_file_of_no_rows_is_done_at_once,
    bad_files_and_parameters_are_refused_naming_each_fault,
    an_idempotency_key_returns_the_same_job,
    a_callers_key_never_meets_an_import_order_id,
    cancelling_stops_a_job_and_rows_keep_their_numbers,
    recent_jobs_are_listed_newest_first_a_page_at_a_time,
);

async fn good_rows_are_issued_and_bad_ones_reported(app: &ApiClient) {
    let file = format!(
        "{HEADER}\n\
         a-1,MY,SG,1.5,Acme\n\
         a-2,XX,SG,0,Acme\n\
         a-3,TH,,2,\"Quoted, Name\"\n\
         a-4,MY,SG\n\
         ,ID,,3,\n"
    );
    let job = accepted(app, "", &file).await;
    assert_eq!(job["rows"]["total"], 5);
    assert_eq!(job["delimiter"], "comma");
    let job = finished(app, &job).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["rows"]["processed"], 5);
    assert_eq!(job["rows"]["issued"], 3);
    assert_eq!(job["rows"]["rejected"], 2);
    let errors: Vec<(u64, &str)> = job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [(2, "origin_country_id"), (2, "weight"), (4, "row")],
        "every bad field of every bad row, by row"
    );
    for time in ["created_at", "started_at", "finished_at"] {
        assert!(job[time].is_string(), "{time}: {job}");
    }

    let rows = results(app, &job).await;
    assert_eq!(rows[0].last().unwrap(), "error");
    assert_eq!(rows[0][rows[0].len() - 2], "tracking_number");
    assert_eq!(rows[3][4], "Quoted, Name", "fields come back as they were");
    for (at, good) in [(1, true), (2, false), (3, true), (4, false), (5, true)] {
        let row = &rows[at];
        let (number, error) = (&row[row.len() - 2], &row[row.len() - 1]);
        assert_eq!(is_number(number), good, "row {at}: {row:?}");
        assert_eq!(error.is_empty(), good, "row {at}: {row:?}");
    }
    assert!(rows[2].last().unwrap().contains("weight: "));
    // Each number has its record, with the row's inputs.
    let record: Value = app.get_record(&rows[3][5]).await.json().await.unwrap();
    assert_eq!(record["origin_country_id"], "TH");
    assert_eq!(record["customer_name"], "Quoted, Name");
    assert!(rows[3][5].starts_with("TH"));
}

async fn rows_sharing_an_order_id_share_a_number_across_imports(app: &ApiClient) {
    let first = accepted(
        app,
        "",
        "order_id,origin_country_id,weight\nsame,MY,1\nother,MY,1\nsame,MY,1\nsame,SG,1\n",
    )
    .await;
    let first = finished(app, &first).await;
    let rows = results(app, &first).await;
    assert!(is_number(&rows[1][3]));
    assert_eq!(rows[1][3], rows[3][3], "the same order id, the same number");
    assert_ne!(rows[1][3], rows[2][3]);
    assert_eq!(rows[4][3], "", "other inputs under the same order id");
    assert!(rows[4][4].starts_with("order_id: "), "{:?}", rows[4]);

    // Another import, later: the same order gets its number again; other inputs are refused.
    let again = accepted(
        app,
        "",
        "weight;origin_country_id;order_id\n1;MY;same\n2;MY;other\n",
    )
    .await;
    let again = finished(app, &again).await;
    let again_rows = results_of(app, id_of(&again), b';').await;
    assert_eq!(again_rows[1][3], rows[1][3]);
    assert_eq!(again_rows[2][3], "");
    assert!(again_rows[2][4].contains("order_id"), "{:?}", again_rows[2]);
    assert_eq!(again["rows"]["issued"], 1);
}

async fn a_dry_run_checks_every_row_and_issues_nothing(app: &ApiClient) {
    let metrics_before = app.get("/metrics").await.text().await.unwrap();
    let job = accepted(
        app,
        "?dry_run=true",
        "origin_country_id,weight\nMY,1\nZZ,1\nSG,2\n",
    )
    .await;
    assert_eq!(job["dry_run"], true);
    let job = finished(app, &job).await;
    assert_eq!(job["rows"]["valid"], 2);
    assert_eq!(job["rows"]["issued"], 0);
    assert_eq!(job["rows"]["rejected"], 1);
    let rows = results(app, &job).await;
    assert!(
        rows[1..].iter().all(|r| r[2].is_empty()),
        "no numbers: {rows:?}"
    );
    assert!(rows[2][3].starts_with("origin_country_id"));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        issued_total(&metrics_before),
        issued_total(&metrics),
        "a dry run issues no number"
    );
    assert!(metrics.contains("tracknum_import_rows_total{outcome=\"valid\"} 2"));
}

fn issued_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("tracknum_numbers_issued_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn every_delimiter_and_a_bom_are_read(app: &ApiClient) {
    for (delimiter, byte, name, param) in [
        (",", b',', "comma", "comma"),
        (";", b';', "semicolon", "%3B"),
        ("\t", b'\t', "tab", "tab"),
        ("|", b'|', "pipe", "%7C"),
    ] {
        // A quoted field holding the delimiter (a tab is a control character, not a name's).
        let inside = if delimiter == "\t" { " " } else { delimiter };
        let file = format!(
            "\u{FEFF}Customer_Name{delimiter}ORIGIN_COUNTRY_ID\r\n\"a{inside}b\"{delimiter}my\r\n"
        );
        for query in [String::new(), format!("?delimiter={param}")] {
            let job = accepted(app, &query, &file).await;
            assert_eq!(job["delimiter"], name, "{query}");
            let job = finished(app, &job).await;
            assert_eq!(job["rows"]["issued"], 1, "{name} {query}: {job}");
            let rows = results_of(app, id_of(&job), byte).await;
            assert_eq!(
                rows[0],
                [
                    "Customer_Name",
                    "ORIGIN_COUNTRY_ID",
                    "tracking_number",
                    "error"
                ]
            );
            assert_eq!(rows[1][0], format!("a{inside}b"));
            assert!(rows[1][2].starts_with("MY"), "{rows:?}");
        }
    }
}

async fn a_multipart_upload_is_read_from_its_file_part(app: &ApiClient) {
    let form = reqwest::multipart::Form::new()
        .text("note", "ignored")
        .part(
            "file",
            reqwest::multipart::Part::bytes(big_file(3).into_bytes())
                .file_name("orders.csv")
                .mime_str("text/csv")
                .unwrap(),
        );
    let response = app.upload_form(form).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let job = finished(app, &job).await;
    assert_each_row_numbered_once(&results(app, &job).await, 3);

    let no_file = reqwest::multipart::Form::new().text("other", "x");
    let response = app.upload_form(no_file).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "file");
}

async fn a_file_of_no_rows_is_done_at_once(app: &ApiClient) {
    let job = accepted(app, "", "weight,origin_country_id\n").await;
    assert_eq!(job["status"], "done");
    assert_eq!(job["rows"]["total"], 0);
    let rows = results(app, &job).await;
    assert_eq!(
        rows,
        [["weight", "origin_country_id", "tracking_number", "error"]]
    );
}

async fn bad_files_and_parameters_are_refused_naming_each_fault(app: &ApiClient) {
    for (query, body, fields) in [
        (
            "",
            "weight,colour,Weight,\n1,red,2,\n",
            &["colour", "weight", "column 4"][..],
        ),
        ("", "", &["header"]),
        (
            "?delimiter=x&dry_run=yes",
            "weight\n1\n",
            &["delimiter", "dry_run"],
        ),
        ("?color=red", "weight\n1\n", &["color"]),
        ("", "{\"orders\": [1, 2]}", &["{\"orders\": [1", "2]}"]),
    ] {
        let (status, problem) = read(app.upload(query, body).await).await;
        assert_eq!(status, 400, "{query} {body:?}: {problem}");
        assert_eq!(
            problem["type"], "urn:tracknum:problem:invalid-input",
            "{problem}"
        );
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields, "{query} {body:?}");
    }
    // Bytes that are not text at all, sent without a content type: refused, naming the header.
    let response = app
        .request(reqwest::Method::POST, "/v1/imports")
        .body(vec![0xFF, 0xFE, 0x00, 0x81, b'\n', 0x01])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        !problem["errors"].as_array().unwrap().is_empty(),
        "{problem}"
    );

    for path in [
        "/v1/imports/0123456789abcdef0123456789abcdef",
        "/v1/imports/not-an-id/results",
    ] {
        assert_eq!(app.get(path).await.status(), 404, "{path}");
    }
    let response = app.cancel_import("0123456789abcdef0123456789abcdef").await;
    assert_eq!(response.status(), 404);
}

async fn an_idempotency_key_returns_the_same_job(app: &ApiClient) {
    let keyed = app.with_header("Idempotency-Key", "upload-2026-12-02");
    let first = keyed.upload("", "weight\n1\n2\n").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let retry = keyed.upload("", "weight\n1\n2\n").await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["id"], first["id"]);
    let other = keyed.upload("", "weight\n3\n").await;
    assert_eq!(other.status(), 422, "the key was used for another file");
    let job = finished(app, &first).await;
    assert_eq!(job["rows"]["issued"], 2, "the rows were issued once");
}

/// A caller's `Idempotency-Key` that spells an import's old name for an order id
/// (`import-order:<id>`) is the caller's own key, and an import's order ids are the import's:
/// neither makes the other a duplicate.
async fn a_callers_key_never_meets_an_import_order_id(app: &ApiClient) {
    let keyed = async |key: &str| {
        let keyed = app.with_header("Idempotency-Key", key);
        keyed.issue_with("weight=2").await
    };
    // The caller's key first, then an import row with that order id.
    assert_eq!(keyed("import-order:Z9").await.status(), 200);
    let z9 = accepted(app, "", "order_id,weight\nZ9,1\n").await;
    let z9 = finished(app, &z9).await;
    assert_eq!(z9["rows"]["issued"], 1, "{z9}");
    let z9_number = results(app, &z9).await[1][2].clone();
    // An import's order id first, then a caller's key of that name.
    let z8 = accepted(app, "", "order_id,weight\nZ8,1\n").await;
    let z8 = finished(app, &z8).await;
    assert_eq!(z8["rows"]["issued"], 1, "{z8}");
    let z8_number = results(app, &z8).await[1][2].clone();
    let reply = keyed("import-order:Z8").await;
    assert_eq!(reply.status(), 200, "{}", reply.text().await.unwrap());
    // Each space still keeps its own: the caller's key replays, the order ids keep their numbers.
    let again = keyed("import-order:Z9").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let both = accepted(app, "", "order_id,weight\nZ9,1\nZ8,1\n").await;
    let both = finished(app, &both).await;
    assert_eq!(both["rows"]["issued"], 2, "{both}");
    let rows = results(app, &both).await;
    assert_eq!((&rows[1][2], &rows[2][2]), (&z9_number, &z8_number));
}

async fn cancelling_stops_a_job_and_rows_keep_their_numbers(app: &ApiClient) {
    // Big enough for many chunks, so the job is still running when the cancel comes.
    let rows = 60_000;
    let job = accepted(app, "", &big_file(rows)).await;
    let id = id_of(&job);
    let early = app.import_results(id).await;
    assert_eq!(early.status(), 409, "no results before the job ends");
    let problem: Value = early.json().await.unwrap();
    assert!(["queued", "running"].contains(&problem["import_status"].as_str().unwrap()));

    let cancel = app.cancel_import(id).await;
    assert_eq!(cancel.status(), 202);
    let job = finished(app, &job).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let processed = job["rows"]["processed"].as_u64().unwrap() as usize;
    assert!(processed < rows, "{job}");

    let results = results(app, &job).await;
    assert_eq!(results.len(), rows + 1, "every row is in the results");
    let numbered: Vec<&Vec<String>> = results[1..].iter().filter(|r| is_number(&r[3])).collect();
    assert_eq!(
        numbered.len(),
        processed,
        "the rows processed keep their numbers"
    );
    assert!(
        results[rows][4].contains("not processed: the import was cancelled"),
        "{:?}",
        results[rows]
    );
    let again = app.cancel_import(id).await;
    assert_eq!(again.status(), 409, "an ended job cannot be cancelled");
}

async fn recent_jobs_are_listed_newest_first_a_page_at_a_time(app: &ApiClient) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = accepted(app, "", "weight\n1\n").await;
        ids.push(id_of(&job).to_owned());
    }
    ids.reverse();
    let mut listed: Vec<String> = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page: Value = unless_busy(|| app.imports(&query))
            .await
            .json()
            .await
            .unwrap();
        let jobs = page["imports"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        listed.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&before={next}"),
            None => break,
        }
    }
    // Other tests' jobs may be listed too (on a shared cluster): ours come first, in order.
    assert_eq!(listed[..3], ids[..], "newest first");
    let bad = app.get("/v1/imports?limit=0&before=x&page=2").await;
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_file_over_the_limit_is_refused_whether_declared_or_not() {
    let (app, _dir) = spawn_embedded(&["--import-max-bytes", "2KiB"]).await;
    let file = big_file(500);
    let (status, problem) = read(app.upload("", file.clone()).await).await;
    assert_eq!(status, 413, "declared: {problem}");
    // Streamed without a length, the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = file
        .as_bytes()
        .chunks(512)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, problem) = read(app.upload("", body).await).await;
    assert_eq!(status, 413, "streamed: {problem}");
    let (status, _) = read(app.upload("", big_file(10)).await).await;
    assert_eq!(status, 202, "a file under the limit is taken");
}

#[tokio::test]
async fn a_large_file_is_streamed_and_every_row_numbered_once() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let rows = 60_000;
    let chunks: Vec<Result<String, std::io::Error>> = big_file(rows)
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = app.upload("", body).await;
    let location = response.headers()["location"].clone();
    let (status, job) = read(response).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(location, format!("/v1/imports/{}", id_of(&job)));
    let job = finished(&app, &job).await;
    assert_eq!(job["rows"]["issued"], rows as u64, "{job}");
    assert_each_row_numbered_once(&results(&app, &job).await, rows);
}

#[tokio::test]
async fn tenants_see_only_their_own_imports() {
    let dir = TempDir::new().unwrap();
    let keys = keys_file(
        &dir,
        &[
            ("shop-a", "key-of-shop-a-0123456789"),
            ("shop-b", "key-of-shop-b-0123456789"),
            ("ops role=admin", "key-of-ops-admin-0123456"),
        ],
    );
    let (app, _data) = spawn_embedded(&["--api-keys-file", keys.to_str().unwrap()]).await;
    let a = app.with_key("key-of-shop-a-0123456789");
    let b = app.with_key("key-of-shop-b-0123456789");
    let response = a.upload("", "order_id,weight\nshared-id,1\n").await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = id_of(&job).to_owned();
    assert_eq!(job["tenant"], "shop-a");

    for response in [b.import(&id).await, b.import_results(&id).await] {
        let path = response.url().path().to_owned();
        assert_eq!(response.status(), 404, "{path}: another tenant's import");
    }
    let response = b.cancel_import(&id).await;
    assert_eq!(response.status(), 404);
    let listing = async |key: &ApiClient| {
        let page: Value = key.imports("").await.json().await.unwrap();
        page["imports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(listing(&b).await.is_empty());
    assert_eq!(listing(&a).await, std::slice::from_ref(&id));
    assert_eq!(
        listing(&app.with_key("key-of-ops-admin-0123456")).await,
        std::slice::from_ref(&id)
    );
    let anonymous = app.imports("").await;
    assert_eq!(anonymous.status(), 401);

    // Order ids belong to the tenant too: B's `shared-id` is B's own order.
    let deadline = Instant::now() + Duration::from_secs(30);
    let a_rows = loop {
        let response = a.import_results(&id).await;
        if response.status() == 200 {
            break response.text().await.unwrap();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let response = b.upload("", "order_id,weight\nshared-id,1\n").await;
    let b_job: Value = response.json().await.unwrap();
    let b_id = id_of(&b_job).to_owned();
    let b_rows = loop {
        let response = b.import_results(&b_id).await;
        if response.status() == 200 {
            break response.text().await.unwrap();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let number = |text: &str| {
        text.lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(2)
            .unwrap()
            .to_owned()
    };
    assert!(is_number(&number(&a_rows)) && is_number(&number(&b_rows)));
    assert_ne!(
        number(&a_rows),
        number(&b_rows),
        "two tenants' orders never share a number"
    );
}

/// Two instances on one Redis: the one running a job is killed mid-way; the other takes the
/// job over and finishes it, and no row gets a second number.
#[tokio::test]
async fn on_redis_a_job_whose_worker_is_killed_is_finished_by_another_instance() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let flags = [
        "--redis-url",
        &url,
        "--secret",
        SECRET,
        "--import-stale-after",
        "2s",
    ];
    let mut first = BinaryApp::start(dirs.0.path(), &flags).await;
    let rows = 80_000;
    let (status, job) = read(first.upload("", big_file(rows)).await).await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job).to_owned();

    under_way(&first, &id).await;
    first.kill();

    let second = BinaryApp::start(dirs.1.path(), &flags).await;
    let job = ended(&second, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["rows"]["issued"], rows as u64, "{job}");
    let results = results_of(&second, &id, b',').await;
    assert_each_row_numbered_once(&results, rows);

    // No number was issued twice: Redis holds one record per row, and no other.
    let records: HashMap<String, ()> = recorded_numbers(
        |pattern| redis.cmd(&["KEYS", pattern]),
        |bucket| redis.cmd(&["HKEYS", bucket]),
    )
    .into_iter()
    .map(|number| (number, ()))
    .collect();
    assert_eq!(
        records.len(),
        rows,
        "one record per row, none from a second try"
    );
}

/// On the embedded store, a job cut short by a kill resumes when the process comes back.
#[tokio::test]
async fn on_the_embedded_store_a_job_resumes_after_a_restart() {
    let dir = TempDir::new().unwrap();
    let flags = ["--secret", SECRET];
    let mut app = BinaryApp::start(dir.path(), &flags).await;
    let rows = 80_000;
    let (status, job) = read(app.upload("", big_file(rows)).await).await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job).to_owned();
    under_way(&app, &id).await;
    app.kill();
    let app = BinaryApp::start(dir.path(), &flags).await;
    let job = ended(&app, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    let results = results_of(&app, &id, b',').await;
    assert_each_row_numbered_once(&results, rows);
    // Every number in the results has its record.
    for row in results.iter().skip(1).step_by(997) {
        let number = &row[3];
        let response = app.get_record(number).await;
        assert_eq!(response.status(), 200, "{number}");
    }
}

#[tokio::test]
async fn a_redis_app_serves_imports_with_its_own_metrics() {
    let redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &[]).await;
    let job = accepted(&app, "", "weight\n1\n0\n").await;
    finished(&app, &job).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for line in [
        "tracknum_import_rows_total{outcome=\"issued\"} 1",
        "tracknum_import_rows_total{outcome=\"rejected\"} 1",
        "tracknum_import_jobs_total{state=\"queued\"} 1",
        "tracknum_import_jobs_total{state=\"done\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// An upload that never becomes a job leaves nothing behind: refused half-way, or replayed
/// under its `Idempotency-Key`.
#[tokio::test]
async fn on_redis_an_upload_that_is_not_a_job_leaves_nothing_stored() {
    let redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &["--import-max-bytes", "1MiB"]).await;
    let parts = || redis.cmd::<Vec<String>>(&["KEYS", "tracknum:import:*"]);

    // Past the limit, streamed: several chunks were stored before the 413.
    let file = big_file(100_000);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = file
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let (status, problem) = read(app.upload("", body).await).await;
    assert_eq!(status, 413, "{problem}");
    // A row that never ends, after whole chunks.
    let endless = format!("{}\"{}", big_file(20_000), "x".repeat(100_000));
    let (status, problem) = read(app.upload("", endless).await).await;
    assert_eq!(status, 400, "{problem}");
    // Removal runs as the request ends: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !parts().is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", parts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A replayed upload: only the first one's parts stay.
    let keyed = app.with_header("Idempotency-Key", "replayed-upload");
    let first: Value = keyed
        .upload("", big_file(20_000))
        .await
        .json()
        .await
        .unwrap();
    let first_id = id_of(&first).to_owned();
    finished(&app, &first).await;
    let replay = keyed.upload("", big_file(20_000)).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let others: Vec<String> = parts()
            .into_iter()
            .filter(|key| !key.contains(&first_id))
            .collect();
        if others.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {others:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a client sees of a job once it has ended, read again and again: the job, and its
/// results byte for byte.
async fn job_and_results(app: &ApiClient, id: &str) -> (Value, Vec<u8>) {
    let job: Value = unless_busy(|| app.import(id)).await.json().await.unwrap();
    let response = unless_busy(|| app.import_results(id)).await;
    assert_eq!(response.status(), 200, "{job}");
    (job, response.bytes().await.unwrap().to_vec())
}

/// Uploads 100,000 rows to the first of `apps` and cancels them there `after` the upload
/// (while queued, or in the job's first chunk), whichever instance's worker takes the job. Once
/// the job has ended it never changes again: status, counts and results stay byte for byte what
/// they were through 2 s of reads from every app, and the results name as many numbers as the
/// job says it issued, each with its record. Returns the numbers.
async fn cancel_early(apps: &[&ApiClient], after: Duration) -> Vec<String> {
    // Enough rows that the job outlasts the latest cancel (a worker plans a chunk while it
    // stores the one before: 40,000 rows once ended within 600 ms on Redis).
    let rows = 100_000;
    // Order ids of their own: a row of an earlier run's file would get that run's number back.
    let file = orders_file(&format!("after-{}-", after.as_millis()), rows);
    let (status, job) = read(apps[0].upload("", file).await).await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job).to_owned();
    // The moment of the cancel is what varies from call to call: not a wait for anything.
    tokio::time::sleep(after).await;
    // As a client does: a 503 (storage busy on a loaded machine) is sent again; the cancel it
    // asked for may have landed, so the job may have ended by the retry (409).
    let mut answered = None;
    for attempt in 0.. {
        let cancel = apps[0].cancel_import(&id).await;
        match cancel.status().as_u16() {
            202 => {
                let job: Value = cancel.json().await.unwrap();
                assert!(
                    ["cancelled", "running"].contains(&job["status"].as_str().unwrap()),
                    "{job}"
                );
                answered = Some(job);
                break;
            }
            503 if attempt < 20 => tokio::time::sleep(Duration::from_millis(200)).await,
            409 if attempt > 0 => break,
            other => panic!(
                "the cancel answered {other}: {}",
                cancel.text().await.unwrap()
            ),
        }
    }

    let last = ended(apps[0], &id).await;
    assert_eq!(last["status"], "cancelled", "{last}");
    if let Some(answered) = answered.filter(|job| job["status"] == "cancelled") {
        assert_eq!(answered, last, "the cancel answered the job as it ended");
    }
    let (job, results) = job_and_results(apps[0], &id).await;
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        for app in apps {
            let (again, again_results) = job_and_results(app, &id).await;
            assert_eq!(again, job, "an ended job never changes");
            assert!(again_results == results, "nor do its results");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let rows_read: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(&results[..])
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(rows_read.len(), rows, "every row is in the results");
    let numbers: Vec<String> = rows_read
        .iter()
        .filter(|row| is_number(&row[3]))
        .map(|row| row[3].clone())
        .collect();
    let not_processed = rows_read
        .iter()
        .filter(|row| row[4] == "row: not processed: the import was cancelled")
        .count();
    assert_eq!(job["rows"]["issued"], numbers.len() as u64, "{job}");
    assert_eq!(
        job["rows"]["processed"].as_u64().unwrap() as usize,
        rows - not_processed,
        "{job}"
    );
    assert!(numbers.len() < rows, "cancelled before the end: {job}");
    // Each number in the results has its record.
    for number in numbers.iter().step_by(211).chain(numbers.last()) {
        let reply = unless_busy(|| apps[apps.len() - 1].get_record(number)).await;
        assert_eq!(reply.status(), 200, "{number}");
    }
    numbers
}

/// A cancel in the first moments of an import (it used to find the job still `queued`, answer
/// `cancelled` with nothing processed, and be overwritten by the worker, which went on issuing).
#[tokio::test]
async fn on_the_embedded_store_a_cancelled_import_never_changes_after_it_ended() {
    let (app, _dir) = spawn_embedded(&["--secret", SECRET]).await;
    let mut issued = 0;
    for after in [0, 150, 300, 450, 600] {
        issued += cancel_early(&[&app], Duration::from_millis(after))
            .await
            .len();
        // No record was stored that the results do not name.
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert_eq!(
            issued_total(&metrics),
            issued as u64,
            "cancelled after {after} ms"
        );
    }
}

/// The same with two instances on one Redis: the upload and the cancel go to one, the worker may
/// be either.
#[tokio::test]
async fn on_redis_a_cancelled_import_never_changes_after_it_ended() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dirs = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let flags = ["--redis-url", &url, "--secret", SECRET];
    let first = BinaryApp::start(dirs.0.path(), &flags).await;
    let second = BinaryApp::start(dirs.1.path(), &flags).await;
    let apps = [&*first, &*second];
    for after in [0, 200, 400, 600] {
        let _: String = redis.cmd(&["FLUSHALL"]);
        let numbers = cancel_early(&apps, Duration::from_millis(after)).await;
        let records = recorded_numbers(
            |pattern| redis.cmd(&["KEYS", pattern]),
            |bucket| redis.cmd(&["HKEYS", bucket]),
        );
        assert_eq!(
            records.len(),
            numbers.len(),
            "every record stored is named in the results (cancelled after {after} ms)"
        );
    }
}

/// Redis loses its data in the middle of an import: the job is gone everywhere (404 for it and
/// its results, absent from the listing), and stays gone: its worker does not write it back.
#[tokio::test]
async fn on_redis_an_import_lost_with_its_data_is_gone_everywhere() {
    let redis = RedisServer::start();
    let app = spawn_on_redis(&redis, &[]).await;
    let (status, job) = read(app.upload("", big_file(80_000)).await).await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job).to_owned();
    under_way(&app, &id).await;
    let _: String = redis.cmd(&["FLUSHALL"]);

    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let job = unless_busy(|| app.import(&id)).await;
        let status = job.status();
        assert_eq!(status, 404, "{}", job.text().await.unwrap());
        let results = unless_busy(|| app.import_results(&id)).await;
        assert_eq!(results.status(), 404);
        let listing: Value = unless_busy(|| app.imports("")).await.json().await.unwrap();
        assert!(!listing.to_string().contains(&id), "{listing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the worker wrote after the flush (a chunk's plan and results) is removed too.
    let pattern = format!("tracknum:import:{{{id}}}:*");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = redis.cmd::<Vec<String>>(&["KEYS", &pattern]);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the service goes on: a new import runs to its end.
    let job = accepted(&app, "", "weight\n1\n").await;
    assert_eq!(finished(&app, &job).await["status"], "done");
}

/// Cells that a spreadsheet would run as formulas come back with a `'` before them; the records
/// hold what was imported.
#[tokio::test]
async fn results_cells_that_could_be_formulas_are_escaped() {
    let (app, _dir) = spawn_embedded(&[]).await;
    let file = "customer_name,weight,origin_country_id\n\
                \"=HYPERLINK(\"\"http://evil.example\"\",\"\"click\"\")\",1,MY\n\
                @SUM(1),2,MY\n\
                \"+cmd|' /C calc'!A0\",3,MY\n\
                \"\tlead\",4,MY\n\
                plain,-5,MY\n\
                \"\r=1\",6,@X\n";
    let job = accepted(&app, "", file).await;
    let job = finished(&app, &job).await;
    let rows = results(&app, &job).await;
    assert_eq!(
        rows[1..]
            .iter()
            .map(|row| row[0].as_str())
            .collect::<Vec<_>>(),
        [
            "'=HYPERLINK(\"http://evil.example\",\"click\")",
            "'@SUM(1)",
            "'+cmd|' /C calc'!A0",
            "'\tlead",
            "plain",
            "'\r=1",
        ]
    );
    assert_eq!(rows[5][1], "'-5", "a negative number is escaped too");
    assert_eq!(rows[6][2], "'@X");
    for row in &rows[1..] {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?} in {row:?}"
            );
        }
    }
    // The record keeps the value as it was imported.
    let record: Value = app.get_record(&rows[1][3]).await.json().await.unwrap();
    assert_eq!(
        record["customer_name"],
        "=HYPERLINK(\"http://evil.example\",\"click\")"
    );
}

/// The import part keys (`<id>/<part>`) in the data file of a stopped embedded store.
fn stored_parts(data_dir: &std::path::Path) -> Vec<String> {
    parts_in(&data_dir.join("tracknum.redb")).unwrap()
}

/// The import part keys that a running embedded store has written to its data file so far,
/// read from a copy (the process holds the file's lock): `None` while a copy taken in the
/// middle of a write does not open.
fn parts_written(data_dir: &std::path::Path) -> Option<Vec<String>> {
    let copy = TempDir::new().unwrap();
    let path = copy.path().join("copy.redb");
    std::fs::copy(data_dir.join("tracknum.redb"), &path).unwrap();
    parts_in(&path).ok()
}

fn parts_in(file: &std::path::Path) -> Result<Vec<String>, redb::Error> {
    use redb::{ReadableDatabase, ReadableTable};
    const PARTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("import_parts");
    let db = redb::Database::open(file)?;
    let tx = db.begin_read()?;
    let parts = match tx.open_table(PARTS) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        parts => parts?,
    };
    parts
        .iter()?
        .map(|item| Ok(item?.0.value().to_owned()))
        .collect()
}

/// Returns once every write the embedded store has begun is done, as far as its caller knows: a
/// chunk in the data file may still wait for its fsync, and an upload cut then never learns it
/// was stored. The store writes one transaction at a time, so an upload that stores a chunk,
/// is refused (a row that never ends) and removes the chunk answers only after the writes
/// before its own.
async fn writes_settled(app: &ApiClient) {
    let endless = format!("{}\"{}", big_file(20_000), "x".repeat(100_000));
    let (status, problem) = read(app.upload("", endless).await).await;
    assert_eq!(status, 400, "{problem}");
}

/// An upload held open after it sent `bytes` of `rows`: its request runs until the returned
/// task is aborted, which cuts the connection.
fn held_upload(app: &ApiClient, rows: usize, bytes: usize) -> tokio::task::JoinHandle<()> {
    // A client of its own: the cut connection is never one another request would reuse.
    let app = ApiClient::new(app.url(""));
    tokio::spawn(async move {
        let head = big_file(rows).into_bytes()[..bytes].to_vec();
        use futures_util::StreamExt;
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
            .chain(futures_util::stream::pending());
        app.upload("", reqwest::Body::wrap_stream(body)).await;
    })
}

/// Uploads cut off by a killed process leave their chunks in the data file; the next start
/// finds and removes them, and leaves the imports that are jobs alone.
#[tokio::test]
async fn on_the_embedded_store_uploads_cut_by_a_kill_are_removed_at_the_next_start() {
    let dir = TempDir::new().unwrap();
    let flags = ["--secret", SECRET];
    let mut app = BinaryApp::start(dir.path(), &flags).await;
    let (status, kept) = read(app.upload("", big_file(10)).await).await;
    assert_eq!(status, 202);
    let kept = id_of(&kept).to_owned();
    ended(&app, &kept).await;
    let uploads: Vec<_> = (0..3)
        .map(|_| held_upload(&app, 60_000, 700 << 10))
        .collect();
    // Two chunks of each are stored in a moment (the third never fills).
    let cut = || {
        let parts = parts_written(dir.path()).unwrap_or_default();
        parts
            .into_iter()
            .filter(|key| !key.starts_with(&kept))
            .count()
    };
    wait_until(
        "two chunks of each upload stored",
        Duration::from_secs(20),
        async || cut() >= 6,
    )
    .await;
    app.kill();
    uploads.iter().for_each(|upload| upload.abort());
    let cut: Vec<String> = stored_parts(dir.path())
        .into_iter()
        .filter(|key| !key.starts_with(&kept))
        .collect();
    assert_eq!(cut.len(), 6, "two chunks of each cut upload: {cut:?}");

    let logs = TempDir::new().unwrap();
    let log = logs.path().join("tracknum.log");
    let mut app = BinaryApp::start_logging(dir.path(), &flags, "info", Some(&log)).await;
    let job = unless_busy(|| app.import(&kept)).await;
    assert_eq!(job.status(), 200);
    // The sweep runs as the process starts, and says what it removed.
    wait_until(
        "the sweep at the start",
        Duration::from_secs(10),
        async || {
            let text = std::fs::read_to_string(&log).unwrap();
            text.contains("removed uploads that never became a job")
        },
    )
    .await;
    app.kill();
    let left = stored_parts(dir.path());
    assert!(
        left.iter().all(|key| key.starts_with(&kept)),
        "left behind: {left:?}"
    );
    assert!(left.contains(&format!("{kept}/job")));
}

/// Uploads cut while the disk does not answer cannot have their chunks removed at once: the
/// removal is tried again, and succeeds once the disk is back, without a restart.
#[tokio::test]
async fn on_the_embedded_store_a_removal_that_failed_is_tried_again() {
    let disk = crate::faults::LoopDisk::mount(64);
    let data = disk.path().join("data");
    let log = TempDir::new().unwrap();
    let log_file = log.path().join("tracknum.log");
    let flags = [
        "--secret",
        SECRET,
        "--storage-timeout",
        "300ms",
        "--min-free-disk",
        "1MiB",
    ];
    // Debug for this module: a removal that fails again says so.
    let log_level = "info,tracknum::service::imports=debug";
    let mut app = BinaryApp::start_logging(&data, &flags, log_level, Some(&log_file)).await;
    let uploads: Vec<_> = (0..20)
        .map(|_| held_upload(&app, 60_000, 600 << 10))
        .collect();
    // Two chunks of each are stored before the disk stops answering: removals have work to do.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let parts = parts_written(&data);
        if parts.as_ref().is_some_and(|parts| parts.len() >= 40) {
            break;
        }
        let log = std::fs::read_to_string(&log_file).unwrap();
        assert!(Instant::now() < deadline, "stored: {parts:?}\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writes_settled(&app).await;

    let frozen = disk.freeze();
    uploads.iter().for_each(|upload| upload.abort());
    let lines = |text: &str| {
        std::fs::read_to_string(&log_file)
            .unwrap()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines("could not remove an abandoned upload") < 20 {
        assert!(Instant::now() < deadline, "the removals did not fail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each is tried again while the disk is still frozen, and fails again.
    wait_until(
        "the removals tried again",
        Duration::from_secs(10),
        async || lines("a removal failed again") >= 20,
    )
    .await;
    frozen.thaw();

    let deadline = Instant::now() + Duration::from_secs(30);
    while lines("removed an abandoned upload") < 20 {
        assert!(
            Instant::now() < deadline,
            "{} of 20 removed",
            lines("removed an abandoned upload")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.kill();
    let left = stored_parts(&data);
    assert!(left.is_empty(), "left behind: {left:?}");
}
