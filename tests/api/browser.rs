//! The web page (`GET /`): its headers over plain HTTP, then the page itself in a real browser,
//! headless Chromium (Debian's `chromium` and `chromium-driver`) driven over WebDriver. Each
//! browser test starts its own chromedriver on a free port with a fresh profile and download
//! directory, and stops it (and the browser it started) when done, passed or failed.
//! `scripts/test.sh` installs both packages; without them these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{SECRET, free_port, keys_file, spawn_embedded};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// A phone's viewport (an iPhone 12 to 15), in CSS pixels.
const PHONE: (u32, u32) = (390, 844);
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_page_is_open_html_with_a_strict_policy_and_an_etag() {
    let keys_dir = TempDir::new().unwrap();
    let keys = keys_file(&keys_dir, &[("shop-a", "key-a-0123456789")]);
    let (app, _dir) = spawn_embedded(&["--api-keys-file", keys.to_str().unwrap()]).await;

    // Open even with keys on: the page is how a person gets to enter one.
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let html = page.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(r#"<meta name="viewport""#));

    let held = app.with_header("If-None-Match", &etag).get("/").await;
    assert_eq!(held.status(), 304);
    assert_eq!(held.headers()["etag"], etag.as_str());
    assert!(held.bytes().await.unwrap().is_empty());
    let stale = app.with_header("If-None-Match", "\"0123\"").get("/").await;
    assert_eq!(stale.status(), 200);

    let head = app.head("/").await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    // The calls the page makes are still guarded.
    assert_eq!(app.get("/v1/next-tracking-number").await.status(), 401);
    let post = app.request(Method::POST, "/").send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn the_page_issues_looks_up_and_shows_field_errors_in_a_real_browser() {
    let (app, _dir) = spawn_embedded(&["--secret", SECRET]).await;
    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&app.url("/")).await.unwrap();
    assert_eq!(page.title().await.unwrap(), "tracknum");
    // Keys are off: the page never shows the key field.
    assert!(!displayed(page, "#key-section").await);

    // Issue with some inputs; Enter in a field submits the form.
    type_into(page, "#issue-origin_country_id", "my").await;
    type_into(page, "#issue-destination_country_id", "ID").await;
    type_into(page, "#issue-weight", "1.5").await;
    type_into(page, "#issue-customer_name", "Blue Box Logistics").await;
    page.find(Locator::Css("#issue-customer_name"))
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    let number = text_when(page, "#issue-result .number", |t| !t.is_empty()).await;
    assert!(is_tracking_number(&number), "{number:?}");
    // The record the server keeps holds what was typed, so the page sent every input.
    let record: Value = app.get_record(&number).await.json().await.unwrap();
    assert_eq!(record["origin_country_id"], "MY");
    assert_eq!(record["destination_country_id"], "ID");
    assert_eq!(record["weight"], 1.5);
    assert_eq!(record["customer_slug"], "blue-box-logistics");
    let shown = text(page, "#issue-result").await;
    assert!(shown.contains("blue-box-logistics"), "{shown}");

    // A bad weight: the server's message next to the weight, and only there.
    set_value(page, "#issue-weight", "0").await;
    click(page, "#issue-form button[type=submit]").await;
    let error = text_when(page, "#issue-weight-error", |t| !t.is_empty()).await;
    assert!(error.starts_with("Must be a positive weight"), "{error}");
    assert_eq!(
        attribute(page, "#issue-weight", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        attribute(page, "#issue-origin_country_id", "aria-invalid").await,
        None
    );
    assert_eq!(text(page, "#issue-origin_country_id-error").await, "");
    let message = text(page, "#issue-message").await;
    assert!(message.contains("weight"), "{message}");
    assert_eq!(
        text(page, "#issue-result").await,
        "",
        "no number for a refused request"
    );
    let focused = page
        .active_element()
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap();
    assert_eq!(
        focused.as_deref(),
        Some("issue-weight"),
        "focus goes to the bad field"
    );
    // Fixed, the error goes away.
    set_value(page, "#issue-weight", "2").await;
    click(page, "#issue-form button[type=submit]").await;
    let second = text_when(page, "#issue-result .number", |t| !t.is_empty()).await;
    assert!(is_tracking_number(&second) && second != number, "{second}");
    assert_eq!(text(page, "#issue-weight-error").await, "");

    // Look the first number up, in lower case, then check it.
    type_into(page, "#lookup-tracking_number", &number.to_lowercase()).await;
    click(page, "#lookup-form button[value=lookup]").await;
    let record = text_when(page, "#lookup-result", |t| t.contains("Blue Box")).await;
    assert!(record.contains(&number), "{record}");
    click(page, "#lookup-form button[value=check]").await;
    let check = text_when(page, "#lookup-result", |t| t.contains("Record exists")).await;
    for line in [
        "Layout valid\nyes",
        "Check character valid\nyes",
        "Record exists\nyes",
    ] {
        assert!(check.contains(line), "{check}");
    }
    // A number that cannot be one: the server names the field, shown next to it.
    set_value(page, "#lookup-tracking_number", "NOT-A-NUMBER").await;
    click(page, "#lookup-form button[value=lookup]").await;
    let error = text_when(page, "#lookup-tracking_number-error", |t| !t.is_empty()).await;
    assert!(error.contains("1 to 16 characters"), "{error}");

    // At a phone's width: one column, nothing wider than the screen.
    phone_viewport(page).await;
    let widest: f64 = serde_json::from_value(
        page.execute("return document.documentElement.scrollWidth", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        widest <= f64::from(PHONE.0),
        "the page scrolls sideways: {widest}px"
    );
    let columns = page
        .execute(
            "return getComputedStyle(document.querySelector('#issue-form .grid'))\
             .gridTemplateColumns.split(' ').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(columns, json!(1));
    let font = page
        .find(Locator::Css("#issue-weight"))
        .await
        .unwrap()
        .css_value("font-size")
        .await
        .unwrap();
    assert_eq!(font, "16px", "an input under 16px makes a phone zoom in");

    // What a phone shows first, kept in target/ for a person to look at (docs/page.png is a
    // copy of it).
    page.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    let png = page.screenshot().await.unwrap();
    assert_eq!(png_size(&png), PHONE);
    std::fs::write(target_dir().join("page-phone.png"), &png).unwrap();

    browser.stop().await;
}

#[tokio::test]
async fn the_page_uploads_a_csv_follows_its_progress_and_downloads_the_results() {
    let (app, _dir) = spawn_embedded(&["--secret", SECRET, "--import-max-bytes", "4KiB"]).await;
    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&app.url("/")).await.unwrap();
    text_when(page, "#recent-empty", |t| t.contains("No imports")).await;

    // A header the server refuses: its message is shown next to the file input.
    let files = TempDir::new().unwrap();
    let bad = files.path().join("bad.csv");
    std::fs::write(&bad, "order_id,colour\nA-1,red\n").unwrap();
    type_into(page, "#import-file", bad.to_str().unwrap()).await;
    click(page, "#import-form button[type=submit]").await;
    let error = text_when(page, "#import-file-error", |t| !t.is_empty()).await;
    assert!(error.starts_with("colour: unknown column"), "{error}");
    assert_eq!(
        attribute(page, "#job", "hidden").await.as_deref(),
        Some("true")
    );
    // Over --import-max-bytes: said next to the file input too.
    let big = files.path().join("big.csv");
    std::fs::write(&big, format!("order_id\n{}", "A-1\n".repeat(2000))).unwrap();
    set_value(page, "#import-file", big.to_str().unwrap()).await;
    click(page, "#import-form button[type=submit]").await;
    let error = text_when(page, "#import-file-error", |t| t.starts_with("Too large")).await;
    assert!(error.contains("4096 bytes"), "{error}");

    let csv = files.path().join("orders.csv");
    std::fs::write(
        &csv,
        "order_id,origin_country_id,weight,customer_name\n\
         A-1,MY,1.5,Blue Box\n\
         A-2,SG,2,Blue Box\n\
         A-3,ZZ,1,Blue Box\n",
    )
    .unwrap();
    // A file input takes the path of the file to choose as its keys.
    set_value(page, "#import-file", csv.to_str().unwrap()).await;
    click(page, "#import-form button[type=submit]").await;

    wait_for(
        page,
        "the import to finish",
        "var job = document.getElementById('job'); \
         return !job.hidden && ['done', 'failed', 'cancelled'].includes(job.dataset.status)",
    )
    .await;
    let id = text(page, "#job-id").await;
    assert_eq!(
        attribute(page, "#job", "data-status").await.as_deref(),
        Some("done")
    );
    let bar = page
        .execute(
            "var bar = document.getElementById('job-progress'); return [bar.value, bar.max]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bar, json!([3, 3]), "the bar is full");
    let summary = text(page, "#job-summary").await;
    assert_eq!(summary, "3 of 3 rows processed: 2 issued, 1 rejected.");
    let errors = text(page, "#job-error-list").await;
    assert!(errors.starts_with("Row 3, origin_country_id: "), "{errors}");
    // The new job is listed with the recent imports.
    text_when(page, "#recent-list", |t| t.contains(&id)).await;

    click(page, "#job-download").await;
    let name = format!("tracknum-import-{id}.csv");
    let results = downloaded(browser.downloads.path(), &name).await;
    let rows: Vec<csv::StringRecord> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(results.as_bytes())
        .records()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 4, "{results}");
    assert_eq!(
        rows[0].iter().collect::<Vec<_>>(),
        [
            "order_id",
            "origin_country_id",
            "weight",
            "customer_name",
            "tracking_number",
            "error"
        ]
    );
    for (row, order) in rows[1..3].iter().zip(["A-1", "A-2"]) {
        assert_eq!(&row[0], order, "{results}");
        assert!(
            is_tracking_number(&row[4]) && row[5].is_empty(),
            "{results}"
        );
        let record = app.get_record(&row[4]).await;
        assert_eq!(
            record.status(),
            200,
            "the results name a number that was issued"
        );
    }
    assert_eq!((&rows[3][0], &rows[3][4]), ("A-3", ""));
    assert!(rows[3][5].starts_with("origin_country_id: "), "{results}");

    // Recent imports come a page of 20 at a time, newest first; older ones on request.
    for n in 0..20 {
        let made = app
            .upload("?dry_run=true", format!("order_id\nB-{n}\n"))
            .await;
        assert_eq!(made.status(), 202);
    }
    click(page, "#recent-refresh").await;
    let listed = "return document.querySelectorAll('#recent-list li').length";
    wait_for(page, "a page of 20", &format!("{listed} === 20")).await;
    assert!(
        !text(page, "#recent-list").await.contains(&id),
        "the oldest is not on page one"
    );
    assert!(displayed(page, "#recent-older").await);
    click(page, "#recent-older").await;
    wait_for(page, "the oldest import too", &format!("{listed} === 21")).await;
    let last = text(page, "#recent-list li:last-child").await;
    assert!(last.contains(&id) && last.contains("done"), "{last}");
    assert!(
        !displayed(page, "#recent-older").await,
        "there is nothing older"
    );
    // A listed import shows its progress and results when chosen.
    click(page, "#recent-list li:first-child button").await;
    text_when(page, "#job-status", |t| t.contains("dry run")).await;
    click(page, "#recent-list li:last-child button").await;
    text_when(page, "#job-id", |t| t == id).await;
    assert_eq!(text(page, "#job-summary").await, summary);

    browser.stop().await;
}

#[tokio::test]
async fn the_page_asks_for_a_key_when_keys_are_on_and_sends_it() {
    let keys_dir = TempDir::new().unwrap();
    let keys = keys_file(&keys_dir, &[("shop-a", "key-a-0123456789")]);
    let (app, _dir) = spawn_embedded(&["--api-keys-file", keys.to_str().unwrap()]).await;
    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&app.url("/")).await.unwrap();

    // The page's first call is refused: the key field shows, and says why.
    wait_for(
        page,
        "the key field",
        "return !document.getElementById('key-section').hidden",
    )
    .await;
    let why = text_when(page, "#key-input-error", |t| !t.is_empty()).await;
    assert!(why.contains("API key"), "{why}");

    // Issuing without a key: the 401 is shown next to the key field, focus goes there.
    click(page, "#issue-form button[type=submit]").await;
    let message = text_when(page, "#issue-message", |t| !t.is_empty()).await;
    assert!(message.contains("API key"), "{message}");
    let focused = page
        .active_element()
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap();
    assert_eq!(focused.as_deref(), Some("key-input"));

    // A wrong key, then the right one.
    type_into(page, "#key-input", "not-the-key\u{E007}").await;
    click(page, "#issue-form button[type=submit]").await;
    let wrong = text_when(page, "#key-input-error", |t| t.contains("not valid")).await;
    assert!(wrong.contains("not valid"), "{wrong}");
    set_value(page, "#key-input", "key-a-0123456789\u{E007}").await;
    text_when(page, "#key-message", |t| t.contains("in use")).await;
    assert_eq!(text(page, "#key-input-error").await, "");
    click(page, "#issue-form button[type=submit]").await;
    let number = text_when(page, "#issue-result .number", |t| !t.is_empty()).await;
    assert!(is_tracking_number(&number), "{number:?}");
    let record: Value = app
        .with_key("key-a-0123456789")
        .get_record(&number)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["tenant"], "shop-a", "issued with the key typed in");

    // The key lives in this tab's session storage only.
    let stored = page
        .execute(
            "return [sessionStorage.getItem('tracknum.api-key'), localStorage.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!(["key-a-0123456789", 0]));

    browser.stop().await;
}

// ---- The browser

/// Headless Chromium driven by a chromedriver of its own; the driver's whole process group is
/// killed when this is dropped, so no browser outlives its test.
struct Browser {
    client: Client,
    driver: Driver,
    downloads: TempDir,
    _profile: TempDir,
}

struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver leads its own process group (see `Browser::start`), which holds the
        // browser it started: kill them all, then reap the driver.
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's `chromium` and \
                 `chromium-driver` (`apt-get install chromium chromium-driver`, or run \
                 scripts/test.sh, which installs them); package `{package}`"
            );
        }
        let port = free_port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts")
        };
        let driver = Driver { child };
        let profile = TempDir::new().unwrap();
        let downloads = TempDir::new().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-breakpad",
                    "--disable-crash-reporter",
                    "--force-device-scale-factor=1",
                    // As on a phone: scrollbars take no width.
                    "--hide-scrollbars",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                },
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            match builder
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(err) if Instant::now() < deadline => {
                    // The driver is still starting.
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("no WebDriver session from chromedriver: {err}"),
            }
        };
        Browser {
            client,
            driver,
            downloads,
            _profile: profile,
        }
    }

    /// Ends the session cleanly (the driver is killed on drop all the same).
    async fn stop(self) {
        let Browser { client, driver, .. } = self;
        let _ = client.close().await;
        drop(driver);
    }
}

// ---- Small steps

fn is_tracking_number(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

async fn click(page: &Client, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(page: &Client, css: &str, keys: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(keys)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

async fn set_value(page: &Client, css: &str, keys: &str) {
    let input = page.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(keys).await.unwrap();
}

async fn text(page: &Client, css: &str) -> String {
    page.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn attribute(page: &Client, css: &str, name: &str) -> Option<String> {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .attr(name)
        .await
        .unwrap()
}

async fn displayed(page: &Client, css: &str) -> bool {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap()
}

/// The text of `css` once it exists and `ready` holds for it; fails after [`WAIT`] with what
/// the page showed.
async fn text_when(page: &Client, css: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(element) = page.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if ready(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never got ready; it shows {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `script` returns true in the page.
async fn wait_for(page: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if page.execute(script, vec![]).await.ok() == Some(json!(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the repository's build output goes, for files a person may want to look at.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Makes the page's viewport a phone's ([`PHONE`]): the window less what the browser itself
/// takes.
async fn phone_viewport(page: &Client) {
    let (width, height) = PHONE;
    page.set_window_size(width, height).await.unwrap();
    let inner = page
        .execute("return [window.innerWidth, window.innerHeight]", vec![])
        .await
        .unwrap();
    let inner: (u32, u32) = serde_json::from_value(inner).unwrap();
    page.set_window_size(2 * width - inner.0, 2 * height - inner.1)
        .await
        .unwrap();
    let script = format!("return window.innerWidth === {width} && window.innerHeight === {height}");
    wait_for(page, "a phone's viewport", &script).await;
}

/// The file the browser downloaded as `name`, once it is complete.
async fn downloaded(dir: &Path, name: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let path = dir.join(name);
    loop {
        // Chromium writes `<name>.crdownload` and renames it when the download is complete.
        if path.exists() {
            return std::fs::read_to_string(&path).unwrap();
        }
        let present: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(
            Instant::now() < deadline,
            "{name} was never downloaded; the directory holds {present:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The width and height of a PNG, from its `IHDR` chunk (RFC 2083: bytes 16 to 24).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&png[12..16], b"IHDR", "a PNG starts with its header chunk");
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}
