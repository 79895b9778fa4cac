//! `rediss://`: tracknum on a Redis (and a Redis Cluster) that speaks only TLS, trusting the
//! server's CA through `SSL_CERT_FILE` (the system's roots otherwise), and refusing a server it
//! cannot verify.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tempfile::TempDir;

use crate::helpers::{SECRET, free_port, spawn_redis, wait_healthy};

/// A private redis-server with TLS only (no plain port), its certificate signed by a fresh CA
/// whose PEM is at `ca`.
struct TlsRedis {
    port: u16,
    child: Child,
    dir: TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = TempDir::new().unwrap();
        write_certificates(dir.path());
        let port = free_port();
        let child = spawn_redis(&mut tls_server(dir.path(), port, dir.path()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child, dir }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh CA (`ca.pem`) and a server certificate it signed for `localhost` and 127.0.0.1
/// (`server.pem`, `server.key`), in `dir`.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tracknum test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// redis-server serving TLS only on `port`, with the certificates in `certs`, data in `dir`,
/// no persistence.
fn tls_server(certs: &Path, port: u16, dir: &Path) -> Command {
    let mut server = Command::new("redis-server");
    server
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .args(["--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(certs.join("server.pem"))
        .arg("--tls-key-file")
        .arg(certs.join("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(certs.join("ca.pem"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir);
    server
}

/// A Redis Cluster of three masters that speaks only TLS, clients and cluster bus alike.
struct TlsCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: TempDir,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let dir = TempDir::new().unwrap();
        write_certificates(dir.path());
        let ports: Vec<u16> = (0..3).map(|_| free_cluster_port()).collect();
        let children = ports
            .iter()
            .map(|port| {
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir(&node_dir).unwrap();
                let mut server = tls_server(dir.path(), *port, &node_dir);
                server
                    .args(["--tls-cluster", "yes", "--cluster-enabled", "yes"])
                    .args(["--cluster-node-timeout", "1000"]);
                spawn_redis(&mut server)
            })
            .collect();
        let cluster = TlsCluster {
            ports,
            children,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server (TLS) did not come up"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = cluster
            .cli()
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create (TLS) failed");
        for &port in &cluster.ports {
            loop {
                let info = cluster
                    .cli()
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline + Duration::from_secs(20),
                    "TLS cluster not ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// redis-cli, over TLS, trusting the cluster's CA.
    fn cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        cli.arg("--tls")
            .arg("--cacert")
            .arg(self.dir.path().join("ca.pem"));
        cli
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn seeds(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.ports[0])
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// The binary, killed when dropped (a failed assertion included).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary on `redis_url`, with `SSL_CERT_FILE` when a CA file is given.
fn tracknum(redis_url: &str, ca: Option<&Path>, port: u16) -> Running {
    tracknum_with("--redis-url", redis_url, ca, port)
}

/// The binary on Redis given by `flag` (`--redis-url`, `--redis-cluster-urls`) and `value`.
fn tracknum_with(flag: &str, value: &str, ca: Option<&Path>, port: u16) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tracknum"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([flag, value, "--secret", SECRET])
        .env("RUST_LOG", "warn")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    Running(command.spawn().expect("tracknum starts"))
}

/// One number from the instance on `port`, which must answer 200.
async fn issue(client: &reqwest::Client, port: u16) -> String {
    let reply = client
        .get(format!("http://127.0.0.1:{port}/next-tracking-number"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let body: serde_json::Value = reply.json().await.unwrap();
    body["tracking_number"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn numbers_are_issued_over_tls_to_a_redis_whose_ca_is_trusted() {
    let redis = TlsRedis::start();
    let port = free_port();
    let _tracknum = tracknum(&redis.url(), Some(&redis.ca()), port);
    let client = reqwest::Client::new();
    wait_healthy(&client, &format!("http://127.0.0.1:{port}/readyz")).await;

    let mut numbers = Vec::new();
    for _ in 0..3 {
        numbers.push(issue(&client, port).await);
    }
    numbers.dedup();
    assert_eq!(numbers.len(), 3);
}

#[tokio::test]
async fn a_redis_whose_certificate_cannot_be_verified_is_never_used() {
    let redis = TlsRedis::start();
    let port = free_port();
    // The system's roots do not hold the test CA.
    let _tracknum = tracknum(&redis.url(), None, port);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Ok(reply) = client.get(url("/readyz")).send().await {
            assert_eq!(reply.status(), 503, "ready on a Redis it cannot verify");
            let body: serde_json::Value = reply.json().await.unwrap();
            break body["reason"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("certificate"), "{reason}");
    let issue = client
        .get(url("/next-tracking-number"))
        .send()
        .await
        .unwrap();
    assert_eq!(issue.status(), 503);
    assert!(issue.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn numbers_are_issued_over_tls_to_a_redis_cluster() {
    let cluster = TlsCluster::start();
    let port = free_port();
    let _tracknum = tracknum_with(
        "--redis-cluster-urls",
        &cluster.seeds(),
        Some(&cluster.ca()),
        port,
    );
    let client = reqwest::Client::new();
    wait_healthy(&client, &format!("http://127.0.0.1:{port}/readyz")).await;
    let mut numbers = std::collections::HashSet::new();
    for _ in 0..50 {
        let number = issue(&client, port).await;
        // Records land on every master; each reads back.
        let stored = client
            .get(format!(
                "http://127.0.0.1:{port}/v1/tracking-numbers/{number}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), 200);
        numbers.insert(number);
    }
    assert_eq!(numbers.len(), 50);
}
