//! Every setting, as a command-line flag that can also come from an environment variable.
//! A bad value stops the start with one line naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "tracknum",
    version,
    about = "Issues unique parcel tracking numbers over HTTP",
    long_about = None
)]
pub struct Config {
    /// Address and port to listen on.
    #[arg(long, env = "TRACKNUM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis URL (redis://[user:pass@]host:port[/db], rediss:// for TLS). When absent, the
    /// embedded store in --data-dir is used.
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes, comma-separated (redis://[user:pass@]host:port, rediss:// for
    /// TLS); the rest of the cluster is discovered. Cannot be combined with --redis-url.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',', value_parser = parse_cluster_url)]
    pub redis_cluster_urls: Vec<String>,

    /// Replicas that must hold each batch of new records before it is answered (Redis WAIT),
    /// so a failover loses fewer of them; fewer in time is a 503. 0: the master's word is enough.
    #[arg(long, env = "TRACKNUM_REDIS_WAIT_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_wait_replicas: u32,

    /// Directory of the embedded store (counter, secret, records). Unused with Redis.
    #[arg(long, env = "TRACKNUM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Embedded store: this instance's node id, 0 to 31, kept in --data-dir the first time (0
    /// when absent). Each node issues from its own part of the serial space (130 years of it),
    /// so several embedded instances with distinct node ids never issue the same number,
    /// whatever their secrets. Several instances with one node id DO. For one counter shared by
    /// every instance, use Redis instead.
    #[arg(long, env = "TRACKNUM_NODE_ID",
          value_parser = clap::value_parser!(u8).range(0..crate::domain::codec::NODE_COUNT as i64))]
    pub node_id: Option<u8>,

    /// Refuse to start without --redis-url or --redis-cluster-urls. Deployment recipes that
    /// run several instances set it: without a shared Redis, each instance would run its own
    /// embedded store, and instances with one node id issue the same numbers.
    #[arg(long, env = "TRACKNUM_REQUIRE_REDIS")]
    pub require_redis: bool,

    /// Serials leased from the shared counter at a time, at least: a busy instance leases
    /// bigger blocks, up to --block-size-max, so that a block lasts a few seconds.
    #[arg(long, env = "TRACKNUM_BLOCK_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub block_size: u64,

    /// The largest block a busy instance leases at a time.
    #[arg(long, env = "TRACKNUM_BLOCK_SIZE_MAX", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub block_size_max: u64,

    /// Key of the permutation that makes numbers unguessable. Required with --redis-url (every
    /// instance must share it); embedded, one is generated and kept in --data-dir when absent.
    #[arg(long, env = "TRACKNUM_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// How long a record is kept after its number is issued (e.g. 30d, 12h, 90s).
    #[arg(long, env = "TRACKNUM_RECORD_TTL", default_value = "30d", value_parser = parse_ttl)]
    pub record_ttl: Duration,

    /// When the embedded store fsyncs records: `always` before answering (group commits), or
    /// `everysec`: buffered in memory and fsynced every 200 ms. Leased serial blocks are always
    /// fsynced before use.
    #[arg(long, env = "TRACKNUM_FSYNC", value_enum, default_value_t = FsyncPolicy::Everysec)]
    pub fsync: FsyncPolicy,

    /// Embedded store: the page cache of the data file, in bytes (`64MiB`, `1GiB`, …). With the
    /// records waiting to be written (under 2 × 60 MB), it bounds the process' memory.
    #[arg(long, env = "TRACKNUM_CACHE_SIZE", default_value = "64MiB", value_parser = parse_bytes)]
    pub cache_size: u64,

    /// Embedded store: below this much free space on the data dir's disk, new records are
    /// refused (503) and /readyz is not ready, so the records already answered find room.
    #[arg(long, env = "TRACKNUM_MIN_FREE_DISK", default_value = "64MiB", value_parser = parse_bytes)]
    pub min_free_disk: u64,

    /// Longest wait for storage before a request gets a 503.
    #[arg(long, env = "TRACKNUM_STORAGE_TIMEOUT", default_value = "500ms", value_parser = parse_timeout)]
    pub storage_timeout: Duration,

    /// Longest wait for in-flight requests at shutdown.
    #[arg(long, env = "TRACKNUM_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub drain_timeout: Duration,

    /// How long the reply to a request with an Idempotency-Key is kept for replays.
    #[arg(long, env = "TRACKNUM_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_ttl)]
    pub idempotency_ttl: Duration,

    /// How long a retry waits for the first request with its Idempotency-Key to finish before
    /// it gets a 409.
    #[arg(long, env = "TRACKNUM_IDEMPOTENCY_WAIT", default_value = "5s", value_parser = parse_timeout)]
    pub idempotency_wait: Duration,

    /// How long an import's uploaded file, results and status are kept (e.g. 7d, 12h).
    #[arg(long, env = "TRACKNUM_IMPORT_TTL", default_value = "7d", value_parser = parse_ttl)]
    pub import_ttl: Duration,

    /// The largest import file `POST /v1/imports` takes, in bytes (`50MB`, `1GiB`, …); a
    /// bigger one is a 413.
    #[arg(long, env = "TRACKNUM_IMPORT_MAX_BYTES", default_value = "50MB", value_parser = parse_bytes)]
    pub import_max_bytes: u64,

    /// How long an instance running an import may go silent (killed, say) before another
    /// instance takes the job over and finishes it.
    #[arg(long, env = "TRACKNUM_IMPORT_STALE_AFTER", default_value = "30s", value_parser = parse_timeout)]
    pub import_stale_after: Duration,

    /// Log format: `human` (one readable line per event) or `json` (one object per line). The
    /// level comes from RUST_LOG (default `info`; `tracknum::access=off` drops access lines).
    #[arg(long, env = "TRACKNUM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// File of API keys, one `name:sha256:<hex of the key's SHA-256>` per line. When set, every
    /// endpoint but /healthz, /readyz, /metrics and /openapi.json needs `Authorization: Bearer
    /// <key>`. Reloaded on SIGHUP and when the file changes. Unset: the API is open.
    #[arg(long, env = "TRACKNUM_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Requests per second allowed per API key (per client IP when the API is open); 0 turns
    /// rate limiting off.
    #[arg(long, env = "TRACKNUM_RATE_LIMIT", default_value_t = 0.0, value_parser = parse_rate,
          allow_negative_numbers = true)]
    pub rate_limit: f64,

    /// Requests a caller may make at once above the rate (the bucket size). Default: one
    /// second's worth of the rate.
    #[arg(long, env = "TRACKNUM_RATE_BURST",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: Option<u32>,

    /// Enforce one rate limit per caller across every instance sharing the Redis (needs
    /// --redis-url), instead of one per instance.
    #[arg(long, env = "TRACKNUM_RATE_LIMIT_GLOBAL")]
    pub rate_limit_global: bool,

    /// Header a trusted proxy in front sets to the client's address, used for per-IP rate
    /// limits and logs (e.g. X-Forwarded-For, whose last entry is taken). Unset: the peer address.
    #[arg(long, env = "TRACKNUM_CLIENT_IP_HEADER", value_parser = parse_header_name)]
    pub client_ip_header: Option<hyper::header::HeaderName>,

    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `https://app.example.com`; `*` for any. None by default.
    // Once loaded, as `cors_origins` (below) wrote them.
    #[arg(long, env = "TRACKNUM_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Client connections served at once; one more gets a 503 problem and is closed.
    #[arg(long, env = "TRACKNUM_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Longest time a request may take, body included, before it gets a 503 problem.
    #[arg(long, env = "TRACKNUM_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub request_timeout: Duration,

    /// Longest a connection may keep the server waiting on it before it is closed: for a
    /// request's head (idle keep-alive included), for the client to take more of a reply or send
    /// more of a body, and for an HTTP/2 connection to open a stream.
    #[arg(long, env = "TRACKNUM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,

    /// Largest request head (all header fields) accepted; more is a 431 problem.
    #[arg(long, env = "TRACKNUM_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=128 * 1024))]
    pub max_header_bytes: u32,

    /// Longest request target (path and query) accepted; more is a 414 problem.
    #[arg(long, env = "TRACKNUM_MAX_URI_BYTES", default_value_t = 8 * 1024,
          value_parser = clap::value_parser!(u32).range(256..=64 * 1024))]
    pub max_uri_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines, coloured on a terminal.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncPolicy {
    /// fsync each group commit before answering.
    Always,
    /// Write behind: fsync buffered records at least once a second (like Redis' appendfsync
    /// everysec); a crash can lose the last fraction of a second of records, never uniqueness.
    Everysec,
}

impl Config {
    /// Reads flags and environment. `--help` and `--version` print and exit 0; any other problem
    /// is returned as one line naming the setting.
    pub fn load() -> Result<Config, String> {
        Self::load_from(std::env::args_os())
    }

    pub fn load_from<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut config = match Config::try_parse_from(args) {
            Ok(config) => config,
            Err(err) if !err.use_stderr() => err.exit(),
            Err(err) if names_a_secret(&err) => {
                // clap quotes the bad value, and this one may hold a password: name the
                // setting and the rule only.
                let arg = err
                    .get(clap::error::ContextKind::InvalidArg)
                    .map_or_else(String::new, ToString::to_string);
                return Err(name_env(&format!(
                    "invalid value for '{arg}': {} (the value is not shown: it may hold a password)",
                    REDIS_URL_FORM
                )));
            }
            Err(err) => {
                let text = err.to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                return Err(name_env(first.trim_start_matches("error: ")));
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// The Redis to use, if any: `--redis-url` or `--redis-cluster-urls`.
    pub fn redis(&self) -> Option<RedisTarget> {
        match (&self.redis_url, self.redis_cluster_urls.as_slice()) {
            (Some(url), _) => Some(RedisTarget::Single(url.clone())),
            (None, []) => None,
            (None, urls) => Some(RedisTarget::Cluster(urls.to_vec())),
        }
    }

    /// Checks what one flag cannot check alone, and writes the CORS origins as checked.
    fn validate(&mut self) -> Result<(), String> {
        if self.redis_url.is_some() && !self.redis_cluster_urls.is_empty() {
            return Err(
                "--redis-url (REDIS_URL) and --redis-cluster-urls (REDIS_CLUSTER_URLS) cannot be \
                 combined: give one server or the cluster's seed nodes"
                    .into(),
            );
        }
        if self.block_size > self.block_size_max {
            return Err(format!(
                "--block-size ({}) must not exceed --block-size-max ({})",
                self.block_size, self.block_size_max
            ));
        }
        if self.redis_wait_replicas > 0 && self.redis().is_none() {
            return Err(
                "--redis-wait-replicas (TRACKNUM_REDIS_WAIT_REPLICAS) needs --redis-url or \
                 --redis-cluster-urls: it waits for Redis replicas"
                    .into(),
            );
        }
        if self.require_redis && self.redis().is_none() {
            return Err(
                "--require-redis (TRACKNUM_REQUIRE_REDIS) is set, but neither REDIS_URL nor \
                 REDIS_CLUSTER_URLS is: this deployment runs several instances, which must share \
                 one counter in Redis. Without it each instance would run its own embedded store \
                 and they would issue the same numbers. Set REDIS_URL (or REDIS_CLUSTER_URLS)"
                    .into(),
            );
        }
        if self.node_id.is_some() && self.redis().is_some() {
            return Err(
                "--node-id (TRACKNUM_NODE_ID) is for the embedded store: instances on Redis share \
                 one counter and need none. Leave it out with --redis-url or --redis-cluster-urls"
                    .into(),
            );
        }
        if self.rate_limit_global && self.redis().is_none() {
            return Err(
                "--rate-limit-global (TRACKNUM_RATE_LIMIT_GLOBAL) needs --redis-url or \
                 --redis-cluster-urls: the shared limit lives in Redis"
                    .into(),
            );
        }
        self.cors_origins = cors_origins(&self.cors_origins)
            .map_err(|err| format!("--cors-origins (TRACKNUM_CORS_ORIGINS): {err}"))?;
        match &self.secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => Err(format!(
                "--secret (TRACKNUM_SECRET) must be at least {MIN_SECRET_BYTES} bytes: it keys \
                 the numbers' permutation and customer tags (e.g. `openssl rand -hex 32`)"
            )),
            None if self.redis().is_some() => Err(
                "--secret (TRACKNUM_SECRET) is required with Redis: every instance sharing a \
                 Redis must use the same secret, and it must outlive Redis' data"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Where Redis is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `--redis-url`.
    Single(String),
    /// A Redis Cluster, found from these seed nodes: `--redis-cluster-urls`.
    Cluster(Vec<String>),
}

impl RedisTarget {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }
}

/// The browser origins a `--cors-origins` list allows, checked and written as browsers send
/// them (`https://app.example.com`: lowercase, no trailing slash): none for an empty list,
/// `["*"]` alone for any origin.
pub fn cors_origins(list: &[String]) -> Result<Vec<String>, String> {
    let list: Vec<&str> = list
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .collect();
    if list.contains(&"*") {
        return Ok(vec!["*".to_owned()]);
    }
    let mut origins = Vec::with_capacity(list.len());
    for origin in list {
        let (scheme, host) = origin
            .split_once("://")
            .ok_or_else(|| format!("{origin:?} is not an origin like https://example.com"))?;
        if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
            return Err(format!(
                "{origin:?} is not an origin like https://example.com"
            ));
        }
        // What a header value may not hold (control characters but the tab).
        if origin
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(format!("{origin:?} is not a valid origin"));
        }
        origins.push(origin.to_ascii_lowercase());
    }
    Ok(origins)
}

/// Adds the environment variable to a message naming a flag, since either may have set it.
fn name_env(message: &str) -> String {
    use clap::CommandFactory;
    let command = Config::command();
    let env = command.get_arguments().find_map(|arg| {
        let long = arg.get_long()?;
        let named =
            message.contains(&format!("'--{long} ")) || message.contains(&format!("'--{long}'"));
        named
            .then(|| arg.get_env())?
            .map(|env| env.to_string_lossy().into_owned())
    });
    match env {
        Some(env) => format!("{message} (flag or env {env})"),
        None => message.to_owned(),
    }
}

/// The shortest `--secret` taken: shorter ones can be guessed offline from issued numbers.
pub const MIN_SECRET_BYTES: usize = 16;

const REDIS_URL_FORM: &str = "expected redis://[user:pass@]host:port[/db] or rediss://…";

fn parse_redis_url(value: &str) -> Result<String, String> {
    redis::parse_redis_url(value)
        .filter(|url| matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
        .map(|_| value.to_owned())
        .ok_or_else(|| REDIS_URL_FORM.into())
}

/// A cluster seed: a TCP URL (no Unix sockets in a cluster).
fn parse_cluster_url(value: &str) -> Result<String, String> {
    redis::parse_redis_url(value)
        .filter(|url| matches!(url.scheme(), "redis" | "rediss") && url.host().is_some())
        .map(|_| value.to_owned())
        .ok_or_else(|| REDIS_URL_FORM.into())
}

/// Whether a clap error is about a setting whose value must never be echoed.
fn names_a_secret(err: &clap::Error) -> bool {
    err.get(clap::error::ContextKind::InvalidArg)
        .is_some_and(|arg| arg.to_string().starts_with("--redis-"))
}

/// A size in bytes: a plain number, or one with a unit (`KiB`, `MiB`, `GiB`, `TiB`, or the
/// decimal `KB`, `MB`, `GB`, `TB`), any case.
fn parse_bytes(value: &str) -> Result<u64, String> {
    const FORM: &str = "expected a size such as 64MiB, 512KiB, 2GiB or a number of bytes";
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number: u64 = digits.parse().map_err(|_| FORM.to_owned())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(FORM.into()),
    };
    number.checked_mul(scale).ok_or_else(|| FORM.into())
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && (0.0..=10_000_000.0).contains(&rate) => Ok(rate),
        _ => Err("expected requests per second, from 0 (off) to 10000000".into()),
    }
}

fn parse_header_name(value: &str) -> Result<hyper::header::HeaderName, String> {
    hyper::header::HeaderName::from_bytes(value.trim().as_bytes())
        .map_err(|_| "expected a header name such as X-Forwarded-For".into())
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let parsed = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(value).map_err(|e| e.to_string())?,
    };
    Ok(parsed)
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    let ttl = parse_duration(value)?;
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(100 * 365 * 86_400) {
        return Err("must be between 1s and 100 years".into());
    }
    Ok(ttl)
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let timeout = parse_duration(value)?;
    if timeout.is_zero() || timeout > Duration::from_secs(3600) {
        return Err("must be above 0 and at most 1h".into());
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, String> {
        Config::load_from(std::iter::once("tracknum").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_configuration_page() {
        let config = load(&[]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.block_size, 1000);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.record_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(config.fsync, FsyncPolicy::Everysec);
        assert_eq!(config.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(config.import_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(config.import_max_bytes, 50_000_000);
        assert_eq!(config.import_stale_after, Duration::from_secs(30));
        assert!(config.redis_url.is_none());
        assert_eq!(config.log_format, LogFormat::Human);
        assert!(config.api_keys_file.is_none());
        assert_eq!(config.rate_limit, 0.0);
        assert!(config.cors_origins.is_empty());
        assert_eq!(config.max_connections, 4096);
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.max_header_bytes, 16 * 1024);
        assert_eq!(config.max_uri_bytes, 8 * 1024);
    }

    #[test]
    fn bad_values_give_one_line_naming_the_setting() {
        for (args, setting) in [
            (&["--block-size", "0"][..], "--block-size"),
            (&["--block-size", "abc"][..], "--block-size"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--record-ttl", "soon"][..], "--record-ttl"),
            (&["--redis-url", "http://x"][..], "--redis-url"),
            (&["--fsync", "sometimes"][..], "--fsync"),
            (&["--record-ttl", "soon"][..], "TRACKNUM_RECORD_TTL"),
            (&["--rate-limit", "-1"][..], "--rate-limit"),
            (&["--rate-limit", "fast"][..], "TRACKNUM_RATE_LIMIT"),
            (&["--rate-burst", "0"][..], "--rate-burst"),
            (&["--rate-limit-global"][..], "--rate-limit-global"),
            (&["--cors-origins", "example.com"][..], "--cors-origins"),
            (&["--max-connections", "0"][..], "--max-connections"),
            (&["--request-timeout", "0s"][..], "--request-timeout"),
            (&["--max-header-bytes", "10"][..], "--max-header-bytes"),
            (&["--log-format", "xml"][..], "--log-format"),
            (
                &["--client-ip-header", "bad header"][..],
                "--client-ip-header",
            ),
        ] {
            let err = load(args).unwrap_err();
            assert!(err.contains(setting), "{args:?} gave {err:?}");
            assert!(!err.contains('\n'), "{err:?} is more than one line");
        }
    }

    #[test]
    fn cors_origins_are_checked_and_written_as_browsers_send_them() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cors_origins(&[]), Ok(vec![]));
        assert_eq!(cors_origins(&list(&[" ", ""])), Ok(vec![]));
        assert_eq!(
            cors_origins(&list(&[
                "https://App.Example.com/",
                " http://localhost:3000 "
            ])),
            Ok(list(&["https://app.example.com", "http://localhost:3000"]))
        );
        assert_eq!(
            cors_origins(&list(&["https://a.example", "*"])),
            Ok(list(&["*"]))
        );
        for bad in ["example.com", "ftp://example.com", "https://a.example/x"] {
            assert_eq!(
                cors_origins(&list(&[bad])),
                Err(format!("{bad:?} is not an origin like https://example.com"))
            );
        }
        assert_eq!(
            cors_origins(&list(&["https://a\u{1}b"])),
            Err("\"https://a\\u{1}b\" is not a valid origin".to_owned())
        );
        let config = load(&["--cors-origins", "https://A.example/,http://b.example"]).unwrap();
        assert_eq!(
            config.cors_origins,
            list(&["https://a.example", "http://b.example"])
        );
        let err = load(&["--cors-origins", "example.com"]).unwrap_err();
        assert_eq!(
            err,
            "--cors-origins (TRACKNUM_CORS_ORIGINS): \"example.com\" is not an origin like \
             https://example.com"
        );
    }

    #[test]
    fn redis_needs_a_secret() {
        let err = load(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap_err();
        assert!(err.contains("--secret"), "{err}");
        let ok = load(&[
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--secret",
            "s3cret-s3cret-s3cret",
        ])
        .unwrap();
        assert_eq!(ok.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    }

    #[test]
    fn a_bad_redis_url_is_never_echoed() {
        for url in [
            "http://admin:hunter2-password@redis.internal:6379",
            "redis://admin:hunter2-password@redis.internal:notaport",
        ] {
            let err = load(&["--redis-url", url, "--secret", "0123456789abcdef"]).unwrap_err();
            assert!(err.contains("--redis-url"), "{err}");
            assert!(!err.contains("hunter2"), "the password leaked: {err}");
            assert!(!err.contains("redis.internal"), "the URL leaked: {err}");
        }
    }

    #[test]
    fn a_cluster_is_given_by_its_seeds_and_never_with_a_single_url() {
        const SECRET: &str = "0123456789abcdef";
        let seeds = "redis://10.0.0.1:7000,rediss://user:pw@10.0.0.2:7000";
        let config = load(&["--redis-cluster-urls", seeds, "--secret", SECRET]).unwrap();
        assert_eq!(
            config.redis(),
            Some(RedisTarget::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "rediss://user:pw@10.0.0.2:7000".into()
            ]))
        );
        let err = load(&["--redis-cluster-urls", seeds]).unwrap_err();
        assert!(err.contains("--secret"), "{err}");
        let err = load(&[
            "--redis-cluster-urls",
            seeds,
            "--redis-url",
            "redis://10.0.0.3:6379",
            "--secret",
            SECRET,
        ])
        .unwrap_err();
        assert!(
            err.contains("--redis-url") && err.contains("--redis-cluster-urls"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        for bad in [
            "redis://a:hunter2-password@redis.internal:7000,unix:///tmp/redis.sock",
            "http://a:hunter2-password@redis.internal:7000",
        ] {
            let err = load(&["--redis-cluster-urls", bad, "--secret", SECRET]).unwrap_err();
            assert!(err.contains("--redis-cluster-urls"), "{err}");
            assert!(!err.contains("hunter2"), "the password leaked: {err}");
            assert!(!err.contains("redis.internal"), "the URL leaked: {err}");
        }
        assert!(load(&["--rate-limit-global", "--rate-limit", "5"]).is_err());
        assert!(load(&["--redis-wait-replicas", "1"]).is_err());
        assert!(
            load(&[
                "--redis-wait-replicas",
                "1",
                "--redis-cluster-urls",
                seeds,
                "--secret",
                SECRET
            ])
            .is_ok()
        );
        assert!(
            load(&[
                "--rate-limit-global",
                "--rate-limit",
                "5",
                "--redis-cluster-urls",
                seeds,
                "--secret",
                SECRET
            ])
            .is_ok()
        );
    }

    #[test]
    fn block_sizes_are_a_floor_and_a_ceiling() {
        let config = load(&[]).unwrap();
        assert_eq!(
            (config.block_size, config.block_size_max),
            (1000, 1_000_000)
        );
        let err = load(&["--block-size", "5000", "--block-size-max", "4000"]).unwrap_err();
        assert!(err.contains("--block-size-max"), "{err}");
        assert!(load(&["--block-size", "5000", "--block-size-max", "5000"]).is_ok());
        assert!(load(&["--block-size-max", "10000001"]).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = load(&["--secret", "fifteen-bytes!!"]).unwrap_err();
        assert!(err.contains("at least 16 bytes"), "{err}");
        assert!(!err.contains("fifteen"), "{err}");
        assert!(load(&["--secret", "sixteen-bytes!!!"]).is_ok());
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2 gib"), Ok(2 << 30));
        assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "MiB", "1.5GiB", "-1", "12 parsecs", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        let config = load(&["--cache-size", "8MiB", "--min-free-disk", "1GB"]).unwrap();
        assert_eq!(
            (config.cache_size, config.min_free_disk),
            (8 << 20, 1_000_000_000)
        );
        assert!(
            load(&["--cache-size", "lots"])
                .unwrap_err()
                .contains("TRACKNUM_CACHE_SIZE")
        );
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_ttl("0s").is_err());
    }
}
