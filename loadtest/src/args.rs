//! The command line, and the one request it turns into: method, URL, headers and body.

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use hyper::Method;
use hyper::header::{
    AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};
use url::Url;

/// Largest batch tracknum issues in one call.
const MAX_BATCH: u32 = 1000;

/// Load-test a tracknum deployment and check every number it hands out.
///
/// Every reply is checked: its status, each tracking number's layout and check character, and
/// that no number comes back twice in the whole run. Exits 1 on any duplicate or invalid
/// number, or when errors pass --max-error-rate; 2 on a bad command line.
#[derive(Parser, Debug)]
#[command(name = "loadtest", version)]
pub struct Args {
    /// Base URL of the deployment: http://localhost:8080, https://my-app.fly.dev, ...
    pub url: String,

    /// Connections kept open (keep-alive); in closed loop, also the requests in flight.
    #[arg(short, long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// How long to run (`30s`, `2m`); the default is 10s unless --requests is given.
    #[arg(short, long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many requests (with --duration, whichever comes first).
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Open loop: send this many requests per second on schedule, and measure each latency
    /// from when it should have been sent, so a stall is not hidden. Without it, closed loop:
    /// each connection sends its next request when the last one is answered.
    #[arg(short, long)]
    pub rate: Option<f64>,

    /// Path to call: `/next-tracking-number` (the default), or `/v1/tracking-numbers` to
    /// issue batches of --batch-size with POST.
    #[arg(long)]
    pub path: Option<String>,

    /// An order input to send with each request (repeatable): `origin_country_id=MY`. Query
    /// parameters for single numbers, JSON members for batches.
    #[arg(short, long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,

    /// Numbers per batch when --path is the batch endpoint (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub batch_size: u32,

    /// API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "TRACKNUM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Extra request header (repeatable): `X-Tenant: a`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Longest wait for one reply; then it counts as a timeout error.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Largest share of requests that may fail (non-2xx or no reply) before the run fails:
    /// 0.01 is 1%. Duplicates and invalid numbers always fail the run.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,

    /// Print the summary as one JSON object (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// No progress display.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Which of tracknum's issuing endpoints is called: it decides the method and the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /next-tracking-number`: one number per reply.
    One,
    /// `POST /v1/tracking-numbers`: a batch per reply.
    Batch,
}

/// The request every connection sends, again and again.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub endpoint: Endpoint,
    pub method: Method,
    /// Path and query, as sent on the request line.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    /// Numbers each successful reply must carry.
    pub fn numbers_per_reply(&self, batch_size: u32) -> usize {
        match self.endpoint {
            Endpoint::One => 1,
            Endpoint::Batch => batch_size as usize,
        }
    }
}

impl Args {
    /// The mode settings, checked together.
    pub fn check(&self) -> Result<(), String> {
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("--rate must be a positive number, not {rate}"));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err("--max-error-rate must be from 0 to 1 (0.01 is 1%)".into());
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(format!("--batch-size must be from 1 to {MAX_BATCH}"));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be longer than 0".into());
        }
        Ok(())
    }

    /// How long the run may last: --duration, else 10 s unless --requests bounds it.
    pub fn run_for(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        }
    }

    pub fn target(&self) -> Result<Target, String> {
        self.check()?;
        let mut url = Url::parse(&self.url).map_err(|e| format!("bad URL {:?}: {e}", self.url))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("URL scheme must be http or https, not {other}")),
        };
        let host = url
            .host_str()
            .ok_or_else(|| format!("URL {:?} has no host", self.url))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                return Err(format!("--path must start with /, not {path:?}"));
            }
            url.set_path(path);
        } else if url.path() == "/" {
            url.set_path("/next-tracking-number");
        }
        let endpoint = if url
            .path()
            .trim_end_matches('/')
            .ends_with("/tracking-numbers")
        {
            Endpoint::Batch
        } else {
            Endpoint::One
        };
        let params = self
            .params
            .iter()
            .map(|p| match p.split_once('=') {
                Some((name, value)) if !name.is_empty() => Ok((name, value)),
                _ => Err(format!("--param must be NAME=VALUE, not {p:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut headers = HeaderMap::new();
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        headers.insert(HOST, header_value("Host", &authority)?);
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tracknum-loadtest/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(key) = &self.api_key {
            headers.insert(
                AUTHORIZATION,
                header_value("--api-key", &format!("Bearer {key}"))?,
            );
        }
        for line in &self.headers {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("--header must be NAME: VALUE, not {line:?}"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("bad header name in {line:?}"))?;
            headers.append(name, header_value(line, value.trim())?);
        }

        let (method, body) = match endpoint {
            Endpoint::One => {
                if !params.is_empty() {
                    url.query_pairs_mut().extend_pairs(&params);
                }
                (Method::GET, Bytes::new())
            }
            Endpoint::Batch => {
                let mut body = serde_json::Map::new();
                body.insert("count".into(), self.batch_size.into());
                for (name, value) in &params {
                    body.insert((*name).to_owned(), (*value).into());
                }
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
                (Method::POST, Bytes::from(body))
            }
        };
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Target {
            url,
            endpoint,
            method,
            path_and_query,
            headers,
            body,
            host,
            port,
            tls,
        })
    }
}

fn header_value(what: &str, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("{what}: not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("loadtest").chain(line.iter().copied())).unwrap()
    }

    fn target(line: &[&str]) -> Target {
        args(line).target().unwrap()
    }

    #[test]
    fn a_bare_url_calls_next_tracking_number() {
        let t = target(&["http://localhost:8080"]);
        assert_eq!((t.method, t.endpoint), (Method::GET, Endpoint::One));
        assert_eq!(t.path_and_query, "/next-tracking-number");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("localhost", 8080, false));
        assert_eq!(t.headers[HOST], "localhost:8080");
        assert!(t.body.is_empty());
    }

    #[test]
    fn https_defaults_to_443_and_keeps_the_host_header_bare() {
        let t = target(&["https://my-app.fly.dev"]);
        assert_eq!((t.port, t.tls), (443, true));
        assert_eq!(t.headers[HOST], "my-app.fly.dev");
    }

    #[test]
    fn params_join_the_urls_own_query_encoded() {
        let t = target(&[
            "http://h/v1/next-tracking-number?origin_country_id=MY",
            "--param",
            "customer_name=Red Box & Co",
            "-p",
            "created_at=2018-11-20T19:29:32+08:00",
        ]);
        assert_eq!(
            t.path_and_query,
            "/v1/next-tracking-number?origin_country_id=MY&customer_name=Red+Box+%26+Co&created_at=2018-11-20T19%3A29%3A32%2B08%3A00"
        );
    }

    #[test]
    fn the_batch_path_posts_a_count_with_the_params_as_members() {
        let t = target(&[
            "http://h:1",
            "--path",
            "/v1/tracking-numbers",
            "--batch-size",
            "250",
            "-p",
            "origin_country_id=MY",
        ]);
        assert_eq!((t.method, t.endpoint), (Method::POST, Endpoint::Batch));
        assert_eq!(t.path_and_query, "/v1/tracking-numbers");
        assert_eq!(t.headers[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"count": 250, "origin_country_id": "MY"})
        );
    }

    #[test]
    fn api_key_and_headers_are_sent() {
        let t = target(&["http://h", "--api-key", "s3cret", "-H", "X-Tenant: a"]);
        assert_eq!(t.headers[AUTHORIZATION], "Bearer s3cret");
        assert_eq!(t.headers["x-tenant"], "a");
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["ftp://h"], "scheme"),
            (&["not a url"], "bad URL"),
            (&["http://h", "--rate", "0"], "--rate"),
            (&["http://h", "--rate", "NaN"], "--rate"),
            (&["http://h", "--max-error-rate", "2"], "--max-error-rate"),
            (&["http://h", "--batch-size", "1001"], "--batch-size"),
            (&["http://h", "--param", "novalue"], "--param"),
            (&["http://h", "--path", "v1/x"], "--path"),
            (&["http://h", "--header", "nocolon"], "--header"),
            (&["http://h", "--duration", "0s"], "--duration"),
        ];
        for (line, named) in cases {
            let err = args(line).target().unwrap_err();
            assert!(err.contains(named), "{line:?}: {err}");
        }
    }

    #[test]
    fn the_run_lasts_ten_seconds_unless_bounded() {
        assert_eq!(args(&["http://h"]).run_for(), Some(Duration::from_secs(10)));
        assert_eq!(args(&["http://h", "-n", "5"]).run_for(), None);
        assert_eq!(
            args(&["http://h", "-n", "5", "-d", "2s"]).run_for(),
            Some(Duration::from_secs(2))
        );
    }
}
