//! Network faults between tracknum and Redis, made by a proxy in front of each Redis node
//! (`fault_proxy.rs`): a silent partition must not queue requests past the storage timeout,
//! and a connection reset right after Redis ran a write (its reply lost) must not get that
//! write judged again, on one server and on a Redis Cluster whose nodes announce the proxies.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tracknum::store::redis::RedisTarget;

use crate::client::record_path;
use crate::fault_proxy::FaultProxy;
use crate::helpers::{
    RedisLike, RedisServer, TestApp, assert_unique, bucket_of, recorded_numbers, spawn_on_redis,
};
use crate::redis_cluster::RedisCluster;

/// Redis with a fault proxy in front of each node; tracknum reaches it only through them.
enum Proxied {
    Single(RedisServer, FaultProxy),
    Cluster(RedisCluster, Vec<FaultProxy>),
}

impl Proxied {
    fn single() -> Self {
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis.port);
        Proxied::Single(redis, proxy)
    }

    /// Needs a multi-threaded runtime: the proxies must forward while the harness blocks.
    fn cluster() -> Self {
        let mut proxies = Vec::new();
        let cluster = RedisCluster::start_announcing(|port| {
            let proxy = FaultProxy::start(port);
            let announced = proxy.port();
            proxies.push(proxy);
            announced
        });
        Proxied::Cluster(cluster, proxies)
    }

    fn proxies(&self) -> &[FaultProxy] {
        match self {
            Proxied::Single(_, proxy) => std::slice::from_ref(proxy),
            Proxied::Cluster(_, proxies) => proxies,
        }
    }

    /// Arms every proxy (see [`FaultProxy::reset_after`]).
    fn reset_after(&self, pattern: &[&str]) {
        self.proxies().iter().for_each(|p| p.reset_after(pattern));
    }

    fn disarm(&self) {
        self.proxies().iter().for_each(FaultProxy::disarm);
    }

    fn fired(&self) -> usize {
        self.proxies().iter().map(FaultProxy::fired).sum()
    }

    fn go_silent(&self) {
        self.proxies().iter().for_each(FaultProxy::go_silent);
    }

    fn heal(&self) {
        self.proxies().iter().for_each(FaultProxy::heal);
    }

    /// The numbers that have a record in Redis.
    fn recorded(&self) -> HashSet<String> {
        let numbers: Vec<Vec<String>> = match self {
            Proxied::Single(redis, _) => vec![recorded_numbers(
                |pattern| redis.cmd(&["KEYS", pattern]),
                |bucket| redis.cmd(&["HKEYS", bucket]),
            )],
            Proxied::Cluster(cluster, _) => cluster
                .running_nodes()
                .into_iter()
                .map(|node| {
                    recorded_numbers(
                        |pattern| cluster.cmd_on(node, &["KEYS", pattern]),
                        |bucket| cluster.cmd_on(cluster.master_of_key(bucket), &["HKEYS", bucket]),
                    )
                })
                .collect(),
        };
        numbers.into_iter().flatten().collect()
    }
}

impl RedisLike for Proxied {
    fn target(&self) -> RedisTarget {
        match self {
            Proxied::Single(_, proxy) => RedisTarget::Single(proxy.url()),
            Proxied::Cluster(cluster, _) => cluster.target(),
        }
    }
}

const TIMEOUT_MS: u64 = 500;
/// What an answer may take past the storage timeout on a busy 2-core test machine.
const MARGIN_MS: u64 = 400;

/// The lock stripe `Records` queues a change of `number` on (its hash modulo 64).
fn stripe(number: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<siphasher::sip::SipHasher13>::default().hash_one(number) % 64
}

async fn issue_batch(app: &TestApp, count: usize) -> Vec<String> {
    let response = app.batch(&json!({ "count": count })).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    numbers_of(&body)
}

fn numbers_of(batch: &Value) -> Vec<String> {
    batch["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tracking_number"].as_str().unwrap().to_owned())
        .collect()
}

async fn etag(app: &TestApp, number: &str) -> String {
    let response = app.get_record(number).await;
    assert_eq!(response.status(), 200);
    response.headers()["etag"].to_str().unwrap().to_owned()
}

async fn collisions(app: &TestApp) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("tracknum_skipped_collisions_total "))
        .expect("the collisions metric")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn changes_queued_on_a_silent_redis_all_end_within_the_storage_timeout() {
    let redis = Proxied::single();
    let timeout = format!("{TIMEOUT_MS}ms");
    let app = spawn_on_redis(&redis, &["--storage-timeout", &timeout]).await;
    // 1000 numbers over 64 stripes: the chance that none shares the first one's is 2 in 10^7
    // (with 300 it was 1 in 110, and it happened).
    let numbers = issue_batch(&app, 1000).await;
    let target = numbers[0].clone();
    // Unrelated numbers that queue on the same lock.
    let neighbours: Vec<String> = numbers[1..]
        .iter()
        .filter(|n| stripe(n) == stripe(&target))
        .take(4)
        .cloned()
        .collect();
    assert!(!neighbours.is_empty(), "1000 numbers over 64 stripes");

    redis.go_silent();
    let start = Instant::now();
    // Requests built first and sent all at once, from one instant.
    let mut calls = Vec::new();
    for i in 0..12 {
        let request = if i % 4 == 3 {
            app.request(Method::DELETE, &record_path(&target))
        } else {
            app.request(Method::PATCH, &record_path(&target))
                .json(&json!({ "weight": format!("{}.5", i + 1) }))
        };
        calls.push(request);
    }
    for number in &neighbours {
        let path = record_path(number);
        calls.push(
            app.request(Method::PATCH, &path)
                .json(&json!({ "weight": "2" })),
        );
        calls.push(app.request(Method::DELETE, &path).header("If-Match", "*"));
    }
    let calls = calls.into_iter().map(|request| async move {
        let response = request.send().await.unwrap();
        (
            response.status(),
            response.headers().clone(),
            start.elapsed(),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    for (status, headers, took) in answers {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
        assert!(
            took < Duration::from_millis(TIMEOUT_MS + MARGIN_MS),
            "answered after {took:?} (storage timeout {TIMEOUT_MS} ms)"
        );
    }

    redis.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app
            .patch_record(&target, &json!({ "weight": "9" }), None)
            .await;
        match response.status() {
            StatusCode::OK => break,
            StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            status => panic!("after the partition healed: {status}"),
        }
    }
}

/// A PATCH with `If-Match` and a DELETE whose scripts ran, and whose replies were lost to a
/// reset: the client library (or the store) sends them again, and the second run must know
/// the first.
async fn changes_whose_reply_was_lost_are_not_judged_again(redis: &Proxied) {
    let app = spawn_on_redis(redis, &[]).await;
    for round in 0..10 {
        let number = issue_batch(&app, 1).await.remove(0);
        let weight = format!("{round}.25");

        let fired = redis.fired();
        let place = bucket_of(&number);
        redis.reset_after(&["EVALSHA", &place.bucket, &place.field]);
        let tag = etag(&app, &number).await;
        let response = app
            .patch_record(&number, &json!({ "weight": weight }), Some(&tag))
            .await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(redis.fired(), fired + 1, "round {round}: no reset");
        redis.disarm();
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        let stored: Value = app.get_record(&number).await.json().await.unwrap();
        assert_eq!(
            stored["weight"].as_f64(),
            weight.parse::<f64>().ok(),
            "{stored}"
        );

        redis.reset_after(&["EVALSHA", &place.bucket, &place.field]);
        let tag = etag(&app, &number).await;
        let response = app.delete_record(&number, Some(&tag)).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(redis.fired(), fired + 2, "round {round}: no reset");
        redis.disarm();
        assert_eq!(status, StatusCode::NO_CONTENT, "round {round}: {body}");
        let gone = app.get_record(&number).await;
        assert_eq!(gone.status(), 404);
    }
}

/// Batches (and single numbers) whose record pipeline was reset after Redis stored it: sent
/// again, its own records are not collisions, and every record in Redis was answered.
async fn records_sent_again_are_their_own_not_collisions(redis: &Proxied) {
    let app = spawn_on_redis(redis, &[]).await;
    let mut answered = Vec::new();
    for round in 0..10 {
        let fired = redis.fired();
        // A bucket's records, whether the script goes by its SHA or with its body.
        redis.reset_after(&["tracknum:bucket:"]);
        if round % 2 == 0 {
            answered.extend(issue_batch(&app, 20).await);
        } else {
            let body = app.issue("origin_country_id=MY").await;
            answered.push(body["tracking_number"].as_str().unwrap().to_owned());
        }
        assert!(redis.fired() > fired, "round {round}: no reset");
        redis.disarm();
    }
    assert_eq!(collisions(&app).await, 0);
    assert_unique(&answered);
    let answered: HashSet<String> = answered.into_iter().collect();
    assert_eq!(
        redis.recorded(),
        answered,
        "records in Redis that no caller got"
    );
}

/// The lease script reset after it ran: sent again, it leases another block (the first one's
/// serials are skipped), and no number repeats.
async fn a_lease_sent_again_wastes_serials_only(redis: &Proxied) {
    let app = spawn_on_redis(redis, &["--block-size", "100", "--block-size-max", "100"]).await;
    let mut numbers = Vec::new();
    let mut resets = 0;
    for _ in 0..10 {
        let fired = redis.fired();
        redis.reset_after(&["EVALSHA", "{tracknum}:serial"]);
        // 100 numbers use up a block: the refill leases the next ones.
        for _ in 0..3 {
            numbers.extend(issue_batch(&app, 50).await);
        }
        resets += redis.fired() - fired;
        redis.disarm();
    }
    assert!(resets > 0, "no lease was reset");
    assert_unique(&numbers);
}

/// Each body on its own proxied Redis, and all in turn on one proxied cluster (flushed between
/// bodies: a cluster costs more to start than the bodies take).
macro_rules! on_each_proxied_redis {
    ($($name:ident),* $(,)?) => {
        mod single_redis {
            $(#[tokio::test] async fn $name() {
                super::$name(&super::Proxied::single()).await;
            })*
        }
        // The proxies run on the workers while the harness blocks this thread (`redis-cli`).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_body_on_one_proxied_cluster() {
            let redis = Proxied::cluster();
            $(
                if let Proxied::Cluster(cluster, _) = &redis {
                    cluster.flushall();
                }
                eprintln!("on the cluster: {}", stringify!($name));
                $name(&redis).await;
            )*
        }
    };
}

on_each_proxied_redis! {
    changes_whose_reply_was_lost_are_not_judged_again,
    records_sent_again_are_their_own_not_collisions,
    a_lease_sent_again_wastes_serials_only,
}
