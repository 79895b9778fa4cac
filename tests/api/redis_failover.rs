//! tracknum on a Redis Cluster through its faults: the counter's master killed under load, a
//! failover to a replica that missed acknowledged increments, the whole cluster down, slots
//! resharded under load; and what `--redis-wait-replicas` keeps through a failover.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    RedisServer, TestApp, assert_unique, bucket_of, issue_many, spawn_on_redis, wait_until,
};
use crate::redis_cluster::{COUNTER_KEY, RedisCluster};

/// Small blocks, so that instances lease often while the cluster is failing over.
const SMALL_BLOCKS: [&str; 4] = ["--block-size", "100", "--block-size-max", "200"];

/// One reply seen by the issuing loop.
struct Seen {
    at: Instant,
    status: u16,
    retry_after: bool,
    number: Option<String>,
}

/// How far the issuing loop has got, for a test to wait on.
#[derive(Default)]
struct Progress {
    served: AtomicUsize,
    /// When the latest reply other than a 200 came.
    last_failure: Mutex<Option<Instant>>,
}

impl Progress {
    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    fn last_failure(&self) -> Option<Instant> {
        *self.last_failure.lock().unwrap()
    }
}

/// Issues numbers from every app on `workers` connections each until `stop`; returns every
/// reply seen once stopped, and the progress meanwhile.
fn issue_until(
    apps: &[&TestApp],
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<Vec<Seen>>, Arc<Progress>) {
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let urls: Vec<String> = apps
        .iter()
        .map(|app| app.url("/next-tracking-number"))
        .collect();
    let load = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..workers * urls.len())
            .map(|i| {
                let (client, url, stop) =
                    (client.clone(), urls[i % urls.len()].clone(), stop.clone());
                let progress = shared.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let response = client
                            .get(&url)
                            .send()
                            .await
                            .expect("a reply, never a hang");
                        let status = response.status().as_u16();
                        let retry_after = response.headers().contains_key("retry-after");
                        let body: serde_json::Value = response.json().await.unwrap();
                        let number = body["tracking_number"].as_str().map(str::to_owned);
                        let at = Instant::now();
                        seen.push(Seen {
                            at,
                            status,
                            retry_after,
                            number,
                        });
                        if status == 200 {
                            progress.served.fetch_add(1, Ordering::Relaxed);
                        } else {
                            *progress.last_failure.lock().unwrap() = Some(at);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    (load, progress)
}

fn numbers_of(seen: &[Seen]) -> Vec<String> {
    seen.iter().filter_map(|s| s.number.clone()).collect()
}

#[tokio::test]
async fn killing_the_counters_master_under_load_repeats_nothing_and_heals_itself() {
    let mut cluster = RedisCluster::start();
    let a = spawn_on_redis(&cluster, &SMALL_BLOCKS).await;
    let b = spawn_on_redis(&cluster, &SMALL_BLOCKS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, progress) = issue_until(&[&a, &b], 8, stop.clone());
    // Under way: both instances have leased block after block (100 to 200 numbers each).
    wait_until("issuing under way", Duration::from_secs(20), async || {
        progress.served() >= 1000
    })
    .await;

    let master = cluster.master_of_key(COUNTER_KEY);
    let replica = cluster.replica_of(master);
    cluster.kill(master);
    let killed = Instant::now();
    cluster.wait_until_master(replica, Duration::from_secs(20));
    let failed_over = Instant::now();
    // Issue on until replies have been good for two seconds (or give up after 20).
    let deadline = killed + Duration::from_secs(20);
    let left = deadline.saturating_duration_since(Instant::now());
    wait_until("replies good for two seconds", left, async || {
        let since = progress
            .last_failure()
            .map_or(failed_over, |at| at.max(failed_over));
        since.elapsed() >= Duration::from_secs(2)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(Instant::now() < deadline);

    for s in &seen {
        assert!(
            s.status == 200 || (s.status == 503 && s.retry_after),
            "a {} (Retry-After: {}) during the failover",
            s.status,
            s.retry_after
        );
    }
    let last_error = seen.iter().filter(|s| s.status != 200).map(|s| s.at).max();
    if let Some(last_error) = last_error {
        let stalled = last_error.saturating_duration_since(killed);
        assert!(
            stalled < Duration::from_secs(10),
            "errors for {stalled:?} after the kill"
        );
        eprintln!("failover: errors until {stalled:?} after the kill");
    }
    // The last second of the run: issuing has resumed, and nothing fails any more.
    let end = seen.iter().map(|s| s.at).max().unwrap();
    let last_second: Vec<_> = seen
        .iter()
        .filter(|s| s.at + Duration::from_secs(1) > end)
        .collect();
    assert!(
        !last_second.is_empty() && last_second.iter().all(|s| s.status == 200),
        "issuing did not resume"
    );
    let numbers = numbers_of(&seen);
    assert!(numbers.len() > 1000, "only {} numbers", numbers.len());
    assert_unique(&numbers);
}

#[tokio::test]
async fn a_replica_that_missed_increments_takes_over_and_repeats_nothing() {
    let mut cluster = RedisCluster::start();
    let a = spawn_on_redis(&cluster, &SMALL_BLOCKS).await;
    let b = spawn_on_redis(&cluster, &SMALL_BLOCKS).await;
    let urls = [
        a.url("/next-tracking-number"),
        b.url("/next-tracking-number"),
    ];
    let (mut all, failed) = issue_many(&urls, 2000, 8).await;
    assert_eq!(failed, 0);

    let master = cluster.master_of_key(COUNTER_KEY);
    let replica = cluster.replica_of(master);
    cluster.wait_replicated(master, Duration::from_secs(10));
    // The replica stops and loses its link: what the master acknowledges now, it alone holds.
    cluster.signal(replica, "STOP");
    cluster.cut_replication(master);
    let (during, failed) = issue_many(&urls, 4000, 8).await;
    assert_eq!(failed, 0);
    all.extend(during);
    let acknowledged = cluster.counter_value().expect("a counter");

    cluster.kill(master);
    cluster.signal(replica, "CONT");
    cluster.takeover(replica);
    cluster.wait_until_master(replica, Duration::from_secs(20));
    let behind: u64 = cluster.cmd_on(replica, &["GET", COUNTER_KEY]);
    assert!(
        behind < acknowledged,
        "the replica should have missed increments"
    );

    // The old instances, whose pools and floors outlived the failover, and a new one.
    let c = spawn_on_redis(&cluster, &SMALL_BLOCKS).await;
    let urls = [
        urls[0].clone(),
        urls[1].clone(),
        c.url("/next-tracking-number"),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fresh = 0;
    while fresh < 6000 {
        assert!(
            Instant::now() < deadline,
            "issuing did not resume: {fresh} numbers"
        );
        let (more, _failed) = issue_many(&urls, 3000, 12).await;
        fresh += more.len();
        all.extend(more);
    }
    assert_unique(&all);
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
}

/// The whole cluster down for 10 s: ten times the longest wait that the server's Redis path
/// measures (lease retries back off to 1 s; reconnects come every 250 ms, a block is sized to
/// last 2 s), probed all along. (It was 30 s, probed every 2 s.)
#[tokio::test]
async fn the_whole_cluster_down_for_10s_gives_quick_503s_and_heals_without_a_restart() {
    let mut cluster = RedisCluster::start();
    let app = spawn_on_redis(&cluster, &["--storage-timeout", "300ms"]).await;
    app.issue("").await;
    cluster.stop_all();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(10) {
        for path in [
            "/next-tracking-number",
            "/v1/tracking-numbers/ZZ00000000000000",
            "/readyz",
        ] {
            let started = Instant::now();
            let response = app.get(path).await;
            let waited = started.elapsed();
            assert_eq!(response.status(), 503, "{path} while the cluster is down");
            assert!(
                waited < Duration::from_millis(1500),
                "{path} took {waited:?}"
            );
            if path != "/readyz" {
                assert!(response.headers().contains_key("retry-after"), "{path}");
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.start_all();
    cluster.wait_healthy(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.get("/next-tracking-number").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "no recovery after the cluster came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while app.get("/readyz").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready after the cluster came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acknowledged records on a master whose replica fell behind, after that replica took over:
/// lost without `--redis-wait-replicas`, kept with it (the master refuses what its replica does
/// not acknowledge, so only records a replica holds are answered).
#[tokio::test]
async fn waiting_for_a_replica_keeps_every_acknowledged_record_through_a_failover() {
    let (acknowledged, lost) = lost_in_failover(&[]).await;
    eprintln!("without WAIT: {lost} of {acknowledged} acknowledged records lost");
    let (acknowledged, lost) = lost_in_failover(&["--redis-wait-replicas", "1"]).await;
    eprintln!("with WAIT 1: {lost} of {acknowledged} acknowledged records lost");
    assert!(acknowledged >= 1000, "{acknowledged}");
    assert_eq!(lost, 0);
}

/// Issues while the counter master's replica is cut off, fails over to that replica, and counts
/// the acknowledged numbers, and those whose records are gone.
async fn lost_in_failover(flags: &[&str]) -> (usize, usize) {
    let mut cluster = RedisCluster::start();
    let app = spawn_on_redis(&cluster, flags).await;
    let urls = [app.url("/next-tracking-number")];
    let master = cluster.master_of_key(COUNTER_KEY);
    let replica = cluster.replica_of(master);
    cluster.wait_replicated(master, Duration::from_secs(10));
    let (mut acknowledged, _failed) = issue_many(&urls, 1000, 8).await;
    cluster.signal(replica, "STOP");
    cluster.cut_replication(master);
    let (during, _failed) = issue_many(&urls, 1000, 8).await;
    acknowledged.extend(during);
    cluster.kill(master);
    cluster.signal(replica, "CONT");
    cluster.takeover(replica);
    cluster.wait_until_master(replica, Duration::from_secs(20));
    cluster.wait_healthy(Duration::from_secs(20));
    let mut lost = 0;
    for number in &acknowledged {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match app.get_record(number).await.status().as_u16() {
                200 => break,
                404 => {
                    lost += 1;
                    break;
                }
                status => {
                    assert!(Instant::now() < deadline, "{status} reading {number}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    (acknowledged.len(), lost)
}

/// `--redis-wait-replicas` on one server with a replica: records are answered while the
/// replica acknowledges them, and refused (503, `Retry-After`) once it is gone.
#[tokio::test]
async fn one_server_waits_for_its_replica_and_refuses_records_without_it() {
    let master = RedisServer::start();
    let mut replica = RedisServer::start();
    let port = master.port.to_string();
    let _: String = replica.cmd(&["REPLICAOF", "127.0.0.1", &port]);
    // WAIT gets half the storage timeout: a whole second, so that a loaded machine (the whole
    // suite on two cores) does not time a healthy replica out.
    let app = spawn_on_redis(
        &master,
        &["--redis-wait-replicas", "1", "--storage-timeout", "2s"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until the replica has synced, WAIT finds nobody.
    while app.get("/next-tracking-number").await.status() != 200 {
        assert!(Instant::now() < deadline, "never answered with a replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let number = app.issue("").await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let place = bucket_of(&number);
    let held: Option<Vec<u8>> = replica.cmd(&["HGET", &place.bucket, &place.field]);
    assert!(held.is_some(), "the replica holds an answered record");

    replica.kill();
    let response = app.get("/next-tracking-number").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

/// Slots moving between masters under load (`redis-cli --cluster reshard`): writes follow the
/// redirects, nothing fails, and every record answered is where a lookup finds it.
#[tokio::test]
async fn resharding_under_load_fails_nothing_and_every_record_is_found() {
    let cluster = RedisCluster::start();
    let app = spawn_on_redis(&cluster, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, progress) = issue_until(&[&app], 8, stop.clone());
    wait_until("issuing under way", Duration::from_secs(20), async || {
        progress.served() >= 1000
    })
    .await;

    let target = cluster.master_of_key(COUNTER_KEY);
    let id: String = cluster.cmd_on(target, &["CLUSTER", "MYID"]);
    let seed = cluster
        .url(target)
        .trim_start_matches("redis://")
        .to_owned();
    let resharded = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed, "--cluster-from", "all"])
            .args([
                "--cluster-to",
                &id,
                "--cluster-slots",
                "2000",
                "--cluster-yes",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(resharded.success(), "redis-cli --cluster reshard failed");
    // And on, with the slots where they are now.
    let resharded_at = progress.served();
    wait_until(
        "issuing after the reshard",
        Duration::from_secs(20),
        async || progress.served() >= resharded_at + 1000,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();

    let failed: Vec<_> = seen
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| s.status)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let numbers = numbers_of(&seen);
    assert_unique(&numbers);
    for number in &numbers {
        let status = app.get_record(number).await.status();
        assert_eq!(status, 200, "{number} after the reshard");
    }
}
