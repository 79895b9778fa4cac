//! The embedded store under hostile faults, with the real binary: a wiped, truncated or
//! restored data file, a full disk (a small tmpfs), flipped bytes in the data file, a frozen
//! disk (fsfreeze on a loop device), and memory through a long batch run. Mounting needs root,
//! which the test machines and CI have.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{BinaryApp, SECRET, assert_unique, issue_many, wait_until};
use crate::ops::metric;

/// Runs a command that must succeed (mount, mkfs, …), naming it when it does not.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (the fault tests need root and util-linux)"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new().unwrap();
        let path = dir.path().to_str().unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path],
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem with a file of zeros, leaving about `leave` bytes free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let free = free_bytes(self.path());
        let size = free.saturating_sub(leave);
        let file = std::fs::File::create(&filler).unwrap();
        // tmpfs allocates on write: write it out, ignoring the error of a full disk.
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        let mut writer = std::io::BufWriter::new(file);
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            if std::io::Write::write_all(&mut writer, &chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = std::io::Write::flush(&mut writer);
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// An ext4 filesystem in a file, on a loop device, mounted on a fresh directory; it can be
/// frozen. Unfrozen, unmounted and detached on drop.
pub(crate) struct LoopDisk {
    image: TempDir,
    mount: TempDir,
    device: String,
}

impl LoopDisk {
    pub(crate) fn mount(megabytes: u32) -> LoopDisk {
        let image = TempDir::new().unwrap();
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(u64::from(megabytes) << 20)
            .unwrap();
        let file = file.to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", file]);
        let output = Command::new("losetup")
            .args(["--find", "--show", file])
            .output()
            .unwrap();
        assert!(output.status.success(), "losetup: {output:?}");
        let device = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let mount = TempDir::new().unwrap();
        run("mount", &[&device, mount.path().to_str().unwrap()]);
        LoopDisk {
            image,
            mount,
            device,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.mount.path()
    }

    pub(crate) fn freeze(&self) -> Frozen<'_> {
        run("fsfreeze", &["--freeze", self.path().to_str().unwrap()]);
        Frozen(self)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = &self.image;
    }
}

/// A frozen filesystem; thawed on drop, so a failing test never leaves it frozen.
pub(crate) struct Frozen<'a>(&'a LoopDisk);

impl Frozen<'_> {
    pub(crate) fn thaw(self) {}
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .args(["--unfreeze", self.0.path().to_str().unwrap()])
            .status();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

/// The status of a GET of `path`.
async fn get_status(client: &reqwest::Client, app: &BinaryApp, path: &str) -> u16 {
    get(client, app, path).await.0
}

/// The status and body of a GET of `path`.
async fn get(client: &reqwest::Client, app: &BinaryApp, path: &str) -> (u16, String) {
    status_and_body(client.get(app.url(path)).send().await.unwrap()).await
}

async fn status_and_body(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn wait_ready(app: &BinaryApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ready = client().get(app.url("/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join("tracknum.redb")
}

/// Issues numbers one at a time until a reply is not a 200 or `limit` replies; returns the
/// numbers answered (with when) and the first other reply.
async fn issue_until_refused(
    app: &BinaryApp,
    limit: usize,
) -> (Vec<(String, Instant)>, Option<(u16, String, Instant)>) {
    let client = client();
    let mut answered = Vec::new();
    for _ in 0..limit {
        let response =
            client
                .get(app.url(
                    "/next-tracking-number?origin_country_id=MY&customer_name=Full%20Disk%20Co",
                ))
                .send()
                .await
                .unwrap();
        let (status, body) = status_and_body(response).await;
        if status != 200 {
            return (answered, Some((status, body, Instant::now())));
        }
        let body: Value = serde_json::from_str(&body).unwrap();
        answered.push((
            body["tracking_number"].as_str().unwrap().to_owned(),
            Instant::now(),
        ));
    }
    (answered, None)
}

#[tokio::test]
async fn a_wiped_truncated_or_restored_data_file_never_repeats_a_number() {
    let dir = TempDir::new().unwrap();
    let backup = TempDir::new().unwrap();
    let args = ["--secret", SECRET, "--block-size", "100"];
    let mut all = Vec::new();
    let mut app = BinaryApp::start(dir.path(), &args).await;
    let (numbers, failed) = issue_many(&[app.url("/next-tracking-number")], 2000, 16).await;
    assert_eq!(failed, 0);
    all.extend(numbers);
    // A backup, taken while it runs.
    std::fs::copy(data_file(dir.path()), backup.path().join("tracknum.redb")).unwrap();
    let (numbers, _) = issue_many(&[app.url("/next-tracking-number")], 2000, 16).await;
    all.extend(numbers);

    for damage in ["deleted", "truncated", "restored"] {
        app.kill();
        let file = data_file(dir.path());
        match damage {
            "deleted" => std::fs::remove_file(&file).unwrap(),
            "truncated" => std::fs::File::create(&file).unwrap().set_len(0).unwrap(),
            _ => {
                std::fs::copy(backup.path().join("tracknum.redb"), &file).unwrap();
            }
        }
        app = BinaryApp::start(dir.path(), &args).await;
        let (numbers, failed) = issue_many(&[app.url("/next-tracking-number")], 2000, 16).await;
        assert_eq!(failed, 0, "after the file was {damage}");
        all.extend(numbers);
        assert_unique(&all);
    }
    assert_eq!(all.len(), 10_000);
}

#[tokio::test]
async fn a_data_file_swapped_under_a_running_store_stops_writes_until_it_is_reopened() {
    let dir = TempDir::new().unwrap();
    // No --secret: the generated one must outlive the file it was kept in.
    let mut app = BinaryApp::start(dir.path(), &[]).await;
    let (before, _) = issue_many(&[app.url("/next-tracking-number")], 500, 8).await;
    std::fs::remove_file(data_file(dir.path())).unwrap();
    // Within a moment the store notices, re-opens a fresh file at the path, and goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data_file(dir.path()).exists() {
        assert!(
            Instant::now() < deadline,
            "the data file was never made again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_ready(&app, Duration::from_secs(10)).await;
    let (after, failed) = issue_many(&[app.url("/next-tracking-number")], 500, 8).await;
    assert_eq!(failed, 0);
    let mut all = before;
    all.extend(after);
    // The new file holds the generated secret: a restart takes it, and numbers go on unrepeated.
    app.signal("TERM");
    app.wait_exit(Duration::from_secs(10)).expect("stops");
    let app = BinaryApp::start(dir.path(), &[]).await;
    let (again, failed) = issue_many(&[app.url("/next-tracking-number")], 500, 8).await;
    assert_eq!(failed, 0);
    all.extend(again);
    assert_unique(&all);
}

async fn full_disk(fsync: &str) {
    let disk = Tmpfs::mount("6m");
    let data = disk.path().join("data");
    let args = ["--secret", SECRET, "--fsync", fsync, "--min-free-disk", "0"];
    let mut app = BinaryApp::start(&data, &args).await;
    let filler = disk.fill(256 << 10);
    // Fill what is left with records until a write fails.
    let (answered, refused) = issue_until_refused(&app, 200_000).await;
    let (status, body, refused_at) = refused.expect("the disk filled up");
    assert_eq!(status, 503, "{body}");
    assert!(!answered.is_empty());
    // Nothing more is answered as stored, and the probe says why.
    let client = client();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    let (code, text) = status_and_body(ready).await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("disk"), "{text}");
    assert_eq!(get_status(&client, &app, "/healthz").await, 200);
    let put = client
        .put(app.url("/v1/tracking-numbers/FULLDISK1"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 503);
    // Through the next flushes (every 200 ms) and disk checks (every 250 ms) of the full disk,
    // 600 ms of them, no new number is answered: this window is the point, not a wait.
    let watch_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < watch_until {
        let (more, _) = issue_until_refused(&app, 20).await;
        assert!(more.is_empty(), "answered {} after the failure", more.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if fsync == "always" {
        // Killed while the disk is full: every answered record is there after a restart.
        app.kill();
        std::fs::remove_file(&filler).unwrap();
    } else {
        // The disk gets room again: the store recovers by itself, no restart...
        std::fs::remove_file(&filler).unwrap();
        wait_ready(&app, Duration::from_secs(10)).await;
        let (after, refused) = issue_until_refused(&app, 50).await;
        assert_eq!((after.len(), refused.map(|r| r.0)), (50, None));
        // ...and the records it buffered while the disk was full reached it.
        app.kill();
    }
    let app = BinaryApp::start(&data, &args).await;
    let mut missing = Vec::new();
    for (number, answered_at) in &answered {
        let response = client
            .get(app.url(&format!("/v1/tracking-numbers/{number}")))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {}
            404 => missing.push(refused_at.duration_since(*answered_at)),
            other => panic!("{number}: {other}"),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} answered records lost",
        missing.len(),
        answered.len()
    );
}

#[tokio::test]
async fn a_full_disk_loses_no_answered_record_under_fsync_always() {
    full_disk("always").await;
}

#[tokio::test]
async fn a_full_disk_recovers_by_itself_under_fsync_everysec() {
    full_disk("everysec").await;
}

#[tokio::test]
async fn a_crash_on_a_full_disk_loses_at_most_the_last_second_under_everysec() {
    let disk = Tmpfs::mount("6m");
    let data = disk.path().join("data");
    let args = ["--secret", SECRET, "--min-free-disk", "0"];
    let mut app = BinaryApp::start(&data, &args).await;
    let filler = disk.fill(256 << 10);
    let (answered, refused) = issue_until_refused(&app, 200_000).await;
    let (_, _, refused_at) = refused.expect("the disk filled up");
    app.kill();
    std::fs::remove_file(&filler).unwrap();
    let app = BinaryApp::start(&data, &args).await;
    let client = client();
    for (number, answered_at) in &answered {
        let status = client
            .get(app.url(&format!("/v1/tracking-numbers/{number}")))
            .send()
            .await
            .unwrap()
            .status();
        let before_failure = refused_at.duration_since(*answered_at);
        assert!(
            status == 200 || before_failure <= Duration::from_millis(1500),
            "{number}, answered {before_failure:?} before the disk failed, is {status}"
        );
    }
}

#[tokio::test]
async fn new_numbers_stop_before_the_disk_is_full_and_resume_when_it_has_room() {
    let disk = Tmpfs::mount("16m");
    let data = disk.path().join("data");
    let app = BinaryApp::start(&data, &["--min-free-disk", "4MiB"]).await;
    let filler = disk.fill(3 << 20);
    // Measured every quarter second: refused within a moment (600 ms).
    let client = client();
    wait_until(
        "new numbers refused",
        Duration::from_millis(600),
        async || get_status(&client, &app, "/next-tracking-number").await == 503,
    )
    .await;
    let (status, text) = get(&client, &app, "/next-tracking-number").await;
    assert_eq!(status, 503, "{text}");
    let (status, text) = get(&client, &app, "/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("--min-free-disk"), "{text}");
    let (_, metrics) = get(&client, &app, "/metrics").await;
    assert_eq!(metric(&metrics, "tracknum_storage_ready"), 0.0, "{metrics}");
    let free = metric(&metrics, "tracknum_disk_free_bytes");
    assert!(free > 0.0 && free < f64::from(4u32 << 20), "{free}");
    std::fs::remove_file(filler).unwrap();
    wait_ready(&app, Duration::from_secs(5)).await;
    assert_eq!(
        get_status(&client, &app, "/next-tracking-number").await,
        200
    );
}

/// redb grows its data file in big steps, as holes it fills later: one step once took a 67 MB
/// file on a 60 MB disk, and writes went on until the disk was full, far under the floor. The
/// holes count as used now, so new records stop while the floor still holds.
#[tokio::test]
async fn the_free_space_floor_holds_against_the_data_files_own_growth() {
    // Records in buckets take about 90 bytes each: 400,000 of them outgrow the room above the
    // floor.
    let disk = Tmpfs::mount("32m");
    let data = disk.path().join("data");
    let mut app = BinaryApp::start(&data, &["--min-free-disk", "8MiB"]).await;
    let watched = disk.path().to_owned();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lowest = tokio::task::spawn_blocking({
        let watching = watching.clone();
        move || {
            let mut lowest = u64::MAX;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let stats = rustix::fs::statvfs(&watched).unwrap();
                lowest = lowest.min(stats.f_bavail * stats.f_frsize);
                std::thread::sleep(Duration::from_millis(5));
            }
            lowest
        }
    });
    let client = client();
    let body = json!({"count": 1000, "origin_country_id": "MY", "weight": 1.5,
                      "customer_name": "A Customer With A Longish Name Ltd"});
    let (mut issued, mut refused_in_a_row) = (0, 0);
    for _ in 0..400 {
        let reply = client
            .post(app.url("/v1/tracking-numbers"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let _ = reply.bytes().await;
        match status {
            201 => {
                issued += 1000;
                refused_in_a_row = 0;
            }
            503 => refused_in_a_row += 1,
            other => panic!("{other}"),
        }
        if refused_in_a_row == 20 {
            break;
        }
    }
    assert_eq!(refused_in_a_row, 20, "the floor never refused a batch");
    assert!(issued >= 10_000, "{issued}");
    let (status, text) = get(&client, &app, "/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("--min-free-disk"), "{text}");
    // Every answered record reaches the disk (the flush is allowed under the floor): a graceful
    // stop writes what is buffered, and fails if it cannot...
    app.signal("TERM");
    let stopped = app.wait_exit(Duration::from_secs(15)).expect("stops");
    assert!(stopped.success(), "{stopped:?}");
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let lowest = lowest.await.unwrap();
    // ...and the disk never went under the floor.
    assert!(lowest >= 8 << 20, "{} MiB free at the lowest", lowest >> 20);
}

/// Where `pattern` occurs in `bytes`.
fn find_all(bytes: &[u8], pattern: &[u8]) -> Vec<usize> {
    bytes
        .windows(pattern.len())
        .enumerate()
        .filter(|(_, window)| *window == pattern)
        .map(|(at, _)| at)
        .collect()
}

#[tokio::test]
async fn flipped_bytes_in_the_data_file_are_never_served() {
    let dir = TempDir::new().unwrap();
    let args = ["--secret", SECRET, "--fsync", "always"];
    let mut app = BinaryApp::start(dir.path(), &args).await;
    let (numbers, failed) =
        issue_many(&[app.url("/next-tracking-number?weight=1.5")], 300, 8).await;
    assert_eq!(failed, 0);
    let client = client();
    let mut originals = Vec::new();
    for number in &numbers {
        let path = format!("/v1/tracking-numbers/{number}");
        let body = client
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        originals.push((path, body));
    }
    app.signal("TERM");
    app.wait_exit(Duration::from_secs(10)).expect("stops");

    // Flip a byte inside the stored value of every tenth record, wherever its bytes are in the
    // file: the record packed (as the service stores it, in its bucket's entry), found by its
    // bytes, which its creation time to the µs makes unique.
    let codec = {
        let options = tracknum::store::EmbeddedOptions::default();
        let (store, _) =
            tracknum::store::EmbeddedStore::open(dir.path(), Some(SECRET), options).unwrap();
        store.codec().clone()
    };
    let file = data_file(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let values: Vec<Vec<u8>> = numbers
        .iter()
        .zip(&originals)
        .map(|(number, (_, body))| {
            let record: tracknum::domain::Record = serde_json::from_str(body).unwrap();
            let mut value = Vec::new();
            tracknum::domain::packed::pack(&record, codec.decode_serial(number), &mut value);
            value
        })
        .collect();
    let mut damaged = HashSet::new();
    for (index, number) in numbers.iter().enumerate().step_by(10) {
        let value = &values[index];
        let found = find_all(&bytes, value);
        assert!(
            !found.is_empty(),
            "{number}: its stored bytes are in the file"
        );
        for at in found {
            bytes[at + value.len() / 2] ^= 0x20;
        }
        // A packed record leaves out what its number says, so two records made a serial and
        // a microsecond apart can pack into the same bytes: those were flipped too.
        damaged.extend((0..numbers.len()).filter(|&i| values[i] == *value));
    }
    std::fs::write(&file, &bytes).unwrap();

    let app = BinaryApp::start(dir.path(), &args).await;
    for (index, (path, original)) in originals.iter().enumerate() {
        let response = client.get(app.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        match status {
            200 => assert_eq!(&body, original, "{path} served changed bytes"),
            500 => {
                assert_eq!(kind, "application/problem+json");
                let problem: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(problem["type"], "urn:tracknum:problem:internal", "{body}");
                assert!(
                    !body.contains("checksum") && !body.contains("redb"),
                    "{body}"
                );
                assert!(damaged.contains(&index), "{path}: an intact record refused");
            }
            other => panic!("{path}: {other} {body}"),
        }
        if damaged.contains(&index) {
            assert_eq!(status, 500, "{path}: a damaged record served");
        }
    }
    let (_, metrics) = get(&client, &app, "/metrics").await;
    assert_eq!(
        metric(&metrics, "tracknum_corrupt_records_total"),
        damaged.len() as f64
    );
    assert_eq!(get_status(&client, &app, "/healthz").await, 200);
}

#[tokio::test]
async fn a_frozen_disk_gives_503s_in_time_and_keyed_retries_get_the_real_outcome() {
    let disk = LoopDisk::mount(64);
    let data = disk.path().join("data");
    let args = [
        "--secret",
        SECRET,
        "--fsync",
        "always",
        "--storage-timeout",
        "300ms",
        "--min-free-disk",
        "1MiB",
    ];
    let app = BinaryApp::start(&data, &args).await;
    let client = client();
    let issued: Value = client
        .get(app.url("/next-tracking-number"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = format!(
        "/v1/tracking-numbers/{}",
        issued["tracking_number"].as_str().unwrap()
    );

    let frozen = disk.freeze();
    let timed = |started: Instant, what: &str| {
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    };
    // The same keyed PATCH and the same PUT, sent while frozen and again after.
    let keyed_patch = || {
        client
            .patch(app.url(&record))
            .header("Idempotency-Key", "move-1")
            .json(&json!({"status": "in_transit"}))
            .send()
    };
    let inputs = json!({"origin_country_id": "SG"});
    let put = || {
        client
            .put(app.url("/v1/tracking-numbers/FROZEN1"))
            .json(&inputs)
            .send()
    };
    let started = Instant::now();
    let patch = keyed_patch().await.unwrap();
    timed(started, "PATCH");
    assert_eq!(patch.status(), 503);
    assert!(patch.headers().contains_key("retry-after"));
    for _ in 0..3 {
        let started = Instant::now();
        let refused = put().await.unwrap();
        timed(started, "PUT");
        assert_eq!(refused.status(), 503);
        let started = Instant::now();
        let next = client
            .get(app.url("/next-tracking-number"))
            .send()
            .await
            .unwrap();
        timed(started, "issuing");
        assert_eq!(next.status(), 503);
    }
    // Reads do not wait for the stalled write: the record as last committed, in time.
    for _ in 0..3 {
        let started = Instant::now();
        let (status, text) = get(&client, &app, &record).await;
        timed(started, "GET");
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(r#""status":"issued""#), "{text}");
        assert_eq!(
            get_status(&client, &app, "/v1/tracking-numbers/NEVERISSUED1").await,
            404
        );
    }
    let (status, text) = get(&client, &app, "/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("not answering"), "{text}");
    frozen.thaw();

    wait_ready(&app, Duration::from_secs(10)).await;
    // The PATCH that got a 503 went on: its key now holds what happened, and a retry gets it.
    let retry = keyed_patch().await.unwrap();
    assert_eq!(retry.status(), 200);
    let retried: Value = retry.json().await.unwrap();
    assert_eq!(retried["status"], "in_transit");
    // The PUT is safe to retry whether or not an earlier try landed.
    let first = put().await.unwrap().status();
    assert!(matches!(first.as_u16(), 200 | 201), "{first}");
    assert_eq!(put().await.unwrap().status(), 200);
    assert_eq!(
        get_status(&client, &app, "/next-tracking-number").await,
        200
    );
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// What docs/guarantees.md (Memory) promises the process needs at the defaults.
const MEMORY_BOUND: u64 = 400 << 20;

#[tokio::test]
async fn memory_stays_under_the_stated_bound_through_a_long_batch_run() {
    let dir = TempDir::new().unwrap();
    let app = BinaryApp::start(dir.path(), &["--secret", SECRET]).await;
    let pid = app.pid();
    let client = client();
    let until = Instant::now() + Duration::from_secs(20);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), app.url("/v1/tracking-numbers"));
            tokio::spawn(async move {
                let mut issued = 0u64;
                while Instant::now() < until {
                    let body = json!({"count": 1000, "origin_country_id": "MY", "weight": 1.25,
                                      "customer_name": "Batch Memory Ltd"});
                    let response = client.post(&url).json(&body).send().await.unwrap();
                    if response.status() == 201 {
                        issued += 1000;
                    }
                    let _ = response.bytes().await;
                }
                issued
            })
        })
        .collect();
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut issued = 0;
    for worker in workers {
        issued += worker.await.unwrap();
    }
    eprintln!(
        "issued {issued} numbers in batches; peak RSS {} MiB",
        peak >> 20
    );
    assert!(issued > 100_000, "{issued}");
    assert!(peak < MEMORY_BOUND, "peak RSS {} MiB", peak >> 20);
}
