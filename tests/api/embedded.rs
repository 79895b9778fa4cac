//! The embedded store: no repeat across restarts and crashes, one process per data dir.

use tempfile::TempDir;

use crate::helpers::{BinaryApp, assert_unique, config, issue_many, spawn_app, try_spawn_app};

fn args(dir: &TempDir) -> Vec<String> {
    vec!["--data-dir".into(), dir.path().to_str().unwrap().into()]
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn restarts_never_repeat_a_number_and_keep_records() {
    let dir = TempDir::new().unwrap();
    let args = args(&dir);
    let mut all = Vec::new();
    let mut last: Option<String> = None;
    for _ in 0..3 {
        let app = spawn_app(config(&as_strs(&args))).await;
        let url = app.url("/next-tracking-number");
        let (numbers, failed) = issue_many(&[url], 1500, 16).await;
        assert_eq!(failed, 0);
        if let Some(previous) = &last {
            let response = app.get_record(previous).await;
            assert_eq!(response.status(), 200, "a record survives a restart");
        }
        last = numbers.last().cloned();
        all.extend(numbers);
        app.stop().await;
    }
    assert_eq!(all.len(), 4500);
    assert_unique(&all);
}

#[tokio::test]
async fn a_killed_process_never_repeats_a_number_after_restart() {
    let dir = TempDir::new().unwrap();
    let mut all = Vec::new();
    for round in 0..3 {
        let mut app = BinaryApp::start(dir.path(), &["--block-size", "100"]).await;
        let url = app.url("/next-tracking-number");
        // Kill the process while requests are in flight.
        let load = tokio::spawn(async move { issue_many(&[url], 3000, 32).await });
        tokio::time::sleep(std::time::Duration::from_millis(150 + 100 * round)).await;
        app.kill();
        let (numbers, _failed) = load.await.unwrap();
        all.extend(numbers);
    }
    let app = BinaryApp::start(dir.path(), &[]).await;
    let (numbers, failed) = issue_many(&[app.url("/next-tracking-number")], 1000, 8).await;
    assert_eq!(failed, 0);
    all.extend(numbers);
    assert!(all.len() >= 1000);
    assert_unique(&all);
}

#[tokio::test]
async fn a_data_dir_serves_one_process_at_a_time() {
    let dir = TempDir::new().unwrap();
    let args = args(&dir);
    let _first = spawn_app(config(&as_strs(&args))).await;
    let second = try_spawn_app(config(&as_strs(&args))).await;
    let err = second
        .err()
        .expect("a second process on the same data dir is refused");
    assert!(err.to_string().contains("in use"), "{err:#}");
}

#[tokio::test]
async fn a_different_secret_on_an_existing_data_dir_is_refused() {
    let dir = TempDir::new().unwrap();
    let mut args = args(&dir);
    args.extend(["--secret".into(), "first-secret-of-this-dir".into()]);
    spawn_app(config(&as_strs(&args))).await.stop().await;
    let mut other = self::args(&dir);
    other.extend(["--secret".into(), "second-secret-of-this-dir".into()]);
    let err = try_spawn_app(config(&as_strs(&other)))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("different secret"), "{err:#}");
    // Without a secret, the data dir still needs the one it was started with.
    let err = try_spawn_app(config(&as_strs(&self::args(&dir))))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("--secret"), "{err:#}");
}
