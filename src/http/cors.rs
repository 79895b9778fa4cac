//! CORS: which browser origins may call the API (none unless configured), answering preflight
//! requests and marking replies to allowed origins.

use super::Response;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};

/// Request headers a browser may send beyond the CORS-safelisted ones.
const ALLOW_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "if-match",
    "x-request-id",
];
/// Response headers a browser script may read beyond the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "ETag, Location, Retry-After, Idempotent-Replayed, X-Request-Id, \
                              RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset";
const MAX_AGE_SECS: &str = "600";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// No cross-origin access: no CORS headers, preflights are not answered.
    #[default]
    Off,
    /// Any origin.
    Any,
    /// These origins, exactly as browsers send them (`https://app.example.com`).
    Origins(Vec<HeaderValue>),
}

impl Cors {
    /// From the configured list: empty for none, `*` for any, else origins like
    /// `https://app.example.com`.
    pub fn from_list(list: &[String]) -> Result<Cors, String> {
        let list: Vec<&str> = list
            .iter()
            .map(|o| o.trim().trim_end_matches('/'))
            .filter(|o| !o.is_empty())
            .collect();
        if list.is_empty() {
            return Ok(Cors::Off);
        }
        if list.contains(&"*") {
            return Ok(Cors::Any);
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
            let value = HeaderValue::from_str(&origin.to_ascii_lowercase())
                .map_err(|_| format!("{origin:?} is not a valid origin"))?;
            origins.push(value);
        }
        Ok(Cors::Origins(origins))
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, Cors::Off)
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Cors::Off => false,
            Cors::Any => true,
            Cors::Origins(list) => list
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes())),
        }
    }

    /// A preflight request: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.is_on()
            && method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight for a path that takes `methods` (`GET, HEAD, …`): 204 with what is
    /// allowed, or a 403 problem naming what is not.
    pub fn preflight(
        &self,
        headers: &HeaderMap,
        methods: &str,
    ) -> Result<Response, (&'static str, String)> {
        let origin = headers
            .get(header::ORIGIN)
            .filter(|origin| self.allows(origin))
            .ok_or(("Origin", "this origin may not call the API".to_owned()))?;
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        if !methods.split(", ").any(|allowed| allowed == method) {
            return Err((
                "Access-Control-Request-Method",
                format!("must be one of {methods}"),
            ));
        }
        let asked = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let refused: Vec<&str> = asked
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty() && !is_allowed_header(h))
            .collect();
        if !refused.is_empty() {
            return Err((
                "Access-Control-Request-Headers",
                format!("not allowed: {}", refused.join(", ")),
            ));
        }
        let mut response = Response::new(super::full(bytes::Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Ok(methods) = HeaderValue::from_str(methods) {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        if let Ok(asked) = HeaderValue::from_str(asked)
            && !asked.is_empty()
        {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        Ok(response)
    }

    /// Marks every reply as depending on `Origin` (once, whatever `Vary` it has already), and a
    /// reply to an allowed origin so that the browser lets the page read it.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.is_on() {
            return;
        }
        let varies = headers.get_all(header::VARY).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|name| name.trim_ascii().eq_ignore_ascii_case(b"origin"))
        });
        if !varies {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}

fn is_allowed_header(name: &str) -> bool {
    // CORS-safelisted request headers need no permission.
    const SAFELISTED: [&str; 4] = ["accept", "accept-language", "content-language", "range"];
    ALLOW_HEADERS
        .iter()
        .chain(SAFELISTED.iter())
        .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: &str = "GET, HEAD, PATCH, DELETE, PUT";

    fn preflight_headers(origin: &str, method: &str, asked: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_str(method).unwrap(),
        );
        if !asked.is_empty() {
            headers.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_str(asked).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn parses_the_configured_list() {
        assert_eq!(Cors::from_list(&[]).unwrap(), Cors::Off);
        assert_eq!(Cors::from_list(&[" ".into()]).unwrap(), Cors::Off);
        assert_eq!(
            Cors::from_list(&["https://a.example".into(), "*".into()]).unwrap(),
            Cors::Any
        );
        let list = Cors::from_list(&["https://App.example/".into()]).unwrap();
        assert_eq!(
            list,
            Cors::Origins(vec![HeaderValue::from_static("https://app.example")])
        );
        for bad in ["app.example", "ftp://x", "https://x/path", "https://"] {
            assert!(Cors::from_list(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_an_allowed_preflight() {
        let cors = Cors::from_list(&["https://app.example".into()]).unwrap();
        let headers = preflight_headers(
            "https://app.example",
            "PATCH",
            "Authorization, Content-Type, If-Match",
        );
        assert!(cors.is_preflight(&Method::OPTIONS, &headers));
        let response = cors.preflight(&headers, METHODS).unwrap();
        assert_eq!(response.status(), 204);
        let out = response.headers();
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert!(
            out[header::ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .unwrap()
                .contains("PATCH")
        );
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "Authorization, Content-Type, If-Match"
        );
    }

    #[test]
    fn refuses_other_origins_methods_and_headers() {
        let cors = Cors::from_list(&["https://app.example".into()]).unwrap();
        let other = preflight_headers("https://evil.example", "GET", "");
        assert_eq!(cors.preflight(&other, METHODS).unwrap_err().0, "Origin");
        let method = preflight_headers("https://app.example", "POST", "");
        assert_eq!(
            cors.preflight(&method, METHODS).unwrap_err().0,
            "Access-Control-Request-Method"
        );
        let asked = preflight_headers("https://app.example", "GET", "X-Secret-Thing");
        assert_eq!(
            cors.preflight(&asked, METHODS).unwrap_err().0,
            "Access-Control-Request-Headers"
        );
    }

    #[test]
    fn off_means_no_headers_and_no_preflight() {
        let cors = Cors::Off;
        let headers = preflight_headers("https://app.example", "GET", "");
        assert!(!cors.is_preflight(&Method::OPTIONS, &headers));
        let mut out = HeaderMap::new();
        cors.decorate(headers.get(header::ORIGIN), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn decorates_replies_to_allowed_origins_only() {
        let cors = Cors::from_list(&["https://app.example".into()]).unwrap();
        let mut out = HeaderMap::new();
        cors.decorate(
            Some(&HeaderValue::from_static("https://app.example")),
            &mut out,
        );
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert!(out.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));
        let mut out = HeaderMap::new();
        cors.decorate(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut out,
        );
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(out[header::VARY], "Origin");
    }

    #[test]
    fn names_origin_in_vary_once() {
        let cors = Cors::Any;
        let origin = HeaderValue::from_static("https://app.example");
        let mut out = cors
            .preflight(
                &preflight_headers("https://app.example", "GET", ""),
                METHODS,
            )
            .unwrap()
            .into_parts()
            .0
            .headers;
        cors.decorate(Some(&origin), &mut out);
        cors.decorate(Some(&origin), &mut out);
        let vary: Vec<_> = out.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin"]);
        let mut out = HeaderMap::new();
        out.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, origin"),
        );
        cors.decorate(Some(&origin), &mut out);
        assert_eq!(out.get_all(header::VARY).iter().count(), 1);
    }
}
