//! Test harness: the real server on a random port (in-process or as the real binary), and
//! private `redis-server` processes on free ports, each stopped when dropped.

use std::net::{SocketAddr, TcpListener};
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracknum::domain::Codec;
use tracknum::store::redis::{Place, RedisTarget, bucket_place};

use crate::client::ApiClient;
use crate::redis_cluster::RedisCluster;
use tracknum::{Application, Config};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A configuration as the binary would parse it, listening on a random loopback port.
pub fn config(args: &[&str]) -> Config {
    let base = ["tracknum", "--listen", "127.0.0.1:0"];
    Config::load_from(base.iter().chain(args.iter()).copied()).expect("valid test config")
}

/// The server running in this process, and a client of it: the typed requests of
/// [`ApiClient`] are the app's own (`app.get_record(number)`, `app.with_key(key)`).
pub struct TestApp {
    pub addr: SocketAddr,
    api: ApiClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl TestApp {
    /// Graceful stop: waits until the server has drained and flushed.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_app(config: Config) -> TestApp {
    try_spawn_app(config).await.expect("the app starts")
}

pub async fn try_spawn_app(config: Config) -> anyhow::Result<TestApp> {
    let app = start(config).await?;
    wait_healthy(&unpooled(), &app.url("/readyz")).await;
    Ok(app)
}

/// An app that may never get ready (its storage is down): waits for it to be alive only.
pub async fn spawn_live(config: Config) -> TestApp {
    let app = start(config).await.expect("the app starts");
    wait_healthy(&unpooled(), &app.url("/healthz")).await;
    app
}

/// A client that keeps no connection open after its request: the wait for a start leaves the
/// server no idle connection, which would hold one of its slots (`--max-connections`).
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn start(config: Config) -> anyhow::Result<TestApp> {
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Ok(TestApp {
        addr,
        api: ApiClient::new(format!("http://{addr}")),
        stop: Some(stop),
        task: Some(task),
    })
}

pub async fn wait_healthy(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became healthy");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `done` every 20 ms until it holds; past `limit`, fails naming `what`. For waits on
/// something the test can see, instead of a sleep long enough for a loaded machine.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How far past a time the server measures itself a test waits: its clocks are this machine's,
/// and it keeps times to the millisecond.
const PAST_MARGIN: Duration = Duration::from_millis(50);

/// Sleeps until `at` (an expiry, a staleness deadline, which the server measures on this
/// machine's clock) has passed, and no longer: the wait is the point of the tests that call it.
pub async fn sleep_past(at: Instant) {
    tokio::time::sleep_until((at + PAST_MARGIN).into()).await;
}

/// [`sleep_past`] for a wall-clock time, such as a record's `expires_at`.
pub async fn sleep_past_time(at: chrono::DateTime<chrono::Utc>) {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + PAST_MARGIN).await;
}

/// An embedded-store app in a fresh data dir (kept alive by the returned TempDir).
pub async fn spawn_embedded(extra: &[&str]) -> (TestApp, TempDir) {
    let dir = TempDir::new().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let mut args = vec!["--data-dir", data_dir.as_str()];
    args.extend_from_slice(extra);
    (spawn_app(config(&args)).await, dir)
}

pub const SECRET: &str = "test-secret-shared-by-instances";

/// A Redis-backed app on the given private Redis (a server or a cluster).
pub async fn spawn_on_redis(redis: &impl RedisLike, extra: &[&str]) -> TestApp {
    let [flag, value] = redis.flag();
    let mut args = vec![flag.as_str(), value.as_str(), "--secret", SECRET];
    args.extend_from_slice(extra);
    spawn_app(config(&args)).await
}

/// A Redis tracknum can be pointed at.
pub trait RedisLike {
    fn target(&self) -> RedisTarget;

    /// The flag and value that point tracknum at it.
    fn flag(&self) -> [String; 2] {
        match self.target() {
            RedisTarget::Single(url) => ["--redis-url".into(), url],
            RedisTarget::Cluster(urls) => ["--redis-cluster-urls".into(), urls.join(",")],
        }
    }
}

impl RedisLike for RedisServer {
    fn target(&self) -> RedisTarget {
        RedisTarget::Single(self.url())
    }
}

impl RedisLike for RedisCluster {
    fn target(&self) -> RedisTarget {
        RedisTarget::Cluster(self.seed_urls().split(',').map(str::to_owned).collect())
    }
}

/// The Redis a suite runs on: one server, or a Redis Cluster of 3 masters with a replica each.
/// The same test bodies run on both (`on_each_redis!`).
pub enum TestRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl RedisLike for TestRedis {
    fn target(&self) -> RedisTarget {
        match self {
            TestRedis::Single(redis) => redis.target(),
            TestRedis::Cluster(cluster) => cluster.target(),
        }
    }
}

impl TestRedis {
    pub fn single() -> Self {
        TestRedis::Single(RedisServer::start())
    }

    pub fn cluster() -> Self {
        TestRedis::Cluster(RedisCluster::start())
    }

    /// One command about one key (`args[1]`), on the node that serves it.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        match self {
            TestRedis::Single(redis) => redis.cmd(args),
            TestRedis::Cluster(cluster) => cluster.cmd_on(cluster.master_of_key(args[1]), args),
        }
    }

    /// One command on every node, each node's answer.
    pub fn on_every_node<T: redis::FromRedisValue>(&self, args: &[&str]) -> Vec<T> {
        match self {
            TestRedis::Single(redis) => vec![redis.cmd(args)],
            TestRedis::Cluster(cluster) => cluster
                .running_nodes()
                .into_iter()
                .map(|node| cluster.cmd_on(node, args))
                .collect(),
        }
    }

    pub fn flushall(&self) {
        match self {
            TestRedis::Single(redis) => {
                let _: String = redis.cmd(&["FLUSHALL"]);
            }
            TestRedis::Cluster(cluster) => cluster.flushall(),
        }
    }

    /// Everything down (SIGKILL): nothing answers.
    pub fn kill(&mut self) {
        match self {
            TestRedis::Single(redis) => redis.kill(),
            TestRedis::Cluster(cluster) => cluster.stop_all(),
        }
    }

    /// Back after [`TestRedis::kill`] (or straight from running), empty.
    pub fn restart_empty(&mut self) {
        match self {
            TestRedis::Single(redis) => redis.restart_empty(),
            TestRedis::Cluster(cluster) => {
                cluster.stop_all();
                cluster.start_all();
                cluster.wait_healthy(Duration::from_secs(30));
            }
        }
    }

    /// A signal to every process (`STOP` hangs them, `CONT` resumes them).
    pub fn signal(&self, name: &str) {
        match self {
            TestRedis::Single(redis) => redis.signal(name),
            TestRedis::Cluster(cluster) => {
                for node in cluster.running_nodes() {
                    cluster.signal(node, name);
                }
            }
        }
    }
}

/// A private redis-server on a free port, without persistence, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let mut redis = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        redis.launch();
        redis
    }

    /// A server that starts from a snapshot (`dump.rdb`), as one restarted with that data would.
    pub fn start_from(snapshot: &Path) -> Self {
        let dir = TempDir::new().unwrap();
        std::fs::copy(snapshot, dir.path().join("dump.rdb")).unwrap();
        let mut redis = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let mut server = Command::new("redis-server");
        server
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        self.child = Some(spawn_redis(&mut server));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(200))?;
        redis::cmd("PING").query(&mut conn)
    }

    /// Runs one command against this Redis.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn).unwrap()
    }

    /// Kills the server (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. `STOP` to hang the server, `CONT` to resume it).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        // The shell's own `kill`: no procps needed on the machine.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a `redis-server` command quietly; a machine without one gets told how to install it.
pub fn spawn_redis(server: &mut Command) -> Child {
    server
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): install it (Debian/Ubuntu: apt-get install \
                 redis-server) or run the README's test command, scripts/test.sh"
            )
        })
}

/// The real binary, for tests that kill the process, and a client of it (as [`TestApp`]).
pub struct BinaryApp {
    api: ApiClient,
    child: Child,
}

impl Deref for BinaryApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl BinaryApp {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_logging(data_dir, extra, "warn", None).await
    }

    /// Starts the binary with `RUST_LOG=log_level`, its stderr (the log) going to `log_file`.
    pub async fn start_logging(
        data_dir: &Path,
        extra: &[&str],
        log_level: &str,
        log_file: Option<&Path>,
    ) -> Self {
        let port = free_port();
        let stderr = match log_file {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tracknum"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", log_level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the tracknum binary starts");
        let app = BinaryApp {
            api: ApiClient::new(format!("http://127.0.0.1:{port}")),
            child,
        };
        wait_healthy(&unpooled(), &app.url("/readyz")).await;
        app
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BinaryApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Issues `count` numbers with `concurrency` requests in flight, spread over `urls` in turn.
/// Returns the numbers of the 200 replies and how many replies were something else.
pub async fn issue_many(urls: &[String], count: usize, concurrency: usize) -> (Vec<String>, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let next = next.clone();
            let urls = urls.to_vec();
            tokio::spawn(async move {
                let mut numbers = Vec::new();
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let url = &urls[i % urls.len()];
                    match client.get(url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let body: Value = r.json().await.unwrap();
                            numbers.push(body["tracking_number"].as_str().unwrap().to_owned());
                        }
                        _ => failed += 1,
                    }
                }
                (numbers, failed)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    let mut failed = 0;
    for w in workers {
        let (numbers, f) = w.await.unwrap();
        all.extend(numbers);
        failed += f;
    }
    (all, failed)
}

/// Where Redis keeps the record of `number`, issued with [`SECRET`]: its bucket and field.
pub fn bucket_of(number: &str) -> Place {
    let number = tracknum::domain::TrackingNumber::parse(number).unwrap();
    bucket_place(&Codec::new(SECRET.as_bytes()), &number).expect("one of our numbers")
}

/// The numbers whose records Redis holds (numbers issued with [`SECRET`]): fields of buckets,
/// and keys of their own. `keys` lists the keys of a pattern (on one node), `fields` the
/// fields of a bucket.
pub fn recorded_numbers(
    keys: impl Fn(&str) -> Vec<String>,
    fields: impl Fn(&str) -> Vec<String>,
) -> Vec<String> {
    let codec = Codec::new(SECRET.as_bytes());
    let mut numbers = Vec::new();
    for bucket in keys("tracknum:bucket:*") {
        // A record's tail (`+<field>`) is part of its record.
        for field in fields(&bucket).into_iter().filter(|f| !f.starts_with('+')) {
            let place = Place {
                bucket: bucket.clone(),
                field,
            };
            let number = place
                .number(&codec)
                .expect("a record of one of our numbers");
            numbers.push(number.as_str().to_owned());
        }
    }
    numbers.extend(
        keys("tracknum:record:*")
            .into_iter()
            .map(|key| key.trim_start_matches("tracknum:record:").to_owned()),
    );
    numbers
}

/// Asserts that no number appears twice, naming the first repeat.
pub fn assert_unique(numbers: &[String]) {
    let mut seen = std::collections::HashSet::with_capacity(numbers.len());
    for n in numbers {
        assert!(seen.insert(n.as_str()), "{n} was issued twice");
    }
}

/// An API keys file in `dir` holding the SHA-256 of each `(name, key)`. A name may carry the
/// line's attributes after a blank: `("ops role=admin", key)`.
pub fn keys_file(dir: &TempDir, keys: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.path().join("api-keys");
    write_keys(&path, keys);
    path
}

/// Replaces the keys file at `path` atomically.
pub fn write_keys(path: &std::path::Path, keys: &[(&str, &str)]) {
    let mut text = String::from("# name:sha256:<hex>\n");
    for (name, key) in keys {
        let hash = <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes());
        let hex = hex::encode(hash);
        let (name, attributes) = name.split_once(' ').unwrap_or((name, ""));
        text.push_str(&format!("{name}:sha256:{hex} {attributes}\n"));
    }
    // Write then rename, as a deploy tool would: the server never reads half a file.
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}
