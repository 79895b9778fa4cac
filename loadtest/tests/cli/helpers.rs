//! The real tracknum server for the load tester to run against: in-process, on the embedded
//! store in a fresh directory and a random loopback port, stopped when dropped. A cut of
//! tracknum's own harness (tests/api/helpers.rs), with only what these tests use.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tracknum::{Application, Config};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct TestApp {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An embedded-store app in a fresh data dir (kept alive by the returned TempDir), ready.
pub async fn spawn_embedded(extra: &[&str]) -> (TestApp, TempDir) {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let base = [
        "tracknum",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
    ];
    let config =
        Config::load_from(base.iter().chain(extra.iter()).copied()).expect("valid test config");
    let app = Application::build(config).await.expect("the app starts");
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let app = TestApp {
        addr,
        stop: Some(stop),
    };
    wait_ready(&app.url("/readyz")).await;
    (app, dir)
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An API keys file in `dir` holding the SHA-256 of each `(name, key)`.
pub fn keys_file(dir: &TempDir, keys: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from("# name:sha256:<hex>\n");
    for (name, key) in keys {
        let hash = <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{name}:sha256:{hex}\n"));
    }
    let path = dir.path().join("api-keys");
    std::fs::write(&path, text).unwrap();
    path
}
