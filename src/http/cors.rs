//! CORS: which browser origins may call the API (none unless configured). tower-http's layer
//! answers preflights and marks replies (`Cors::layer`); what stays here is the check of a
//! preflight against the path's own methods, so that a refused one gets a problem naming its
//! field (tower-http answers it as if allowed, and leaves the browser to refuse it silently).

use std::time::Duration;

use hyper::Method;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// Request headers a browser may send beyond the CORS-safelisted ones.
const ALLOW_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "if-match",
    "x-request-id",
];
/// Response headers a browser script may read beyond the CORS-safelisted ones.
const EXPOSE_HEADERS: [&str; 8] = [
    "etag",
    "location",
    "retry-after",
    "idempotent-replayed",
    "x-request-id",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
];
/// How long a browser may keep a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

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

    /// Checks a preflight for a path that takes `methods` (`GET, HEAD, …`): `Err` names the
    /// field that is not allowed, and why.
    pub fn check_preflight(
        &self,
        headers: &HeaderMap,
        methods: &str,
    ) -> Result<(), (&'static str, String)> {
        headers
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
        Ok(())
    }

    /// tower-http's CORS layer for these origins (None when CORS is off): it answers preflights
    /// that passed [`Cors::check_preflight`], and marks every reply as varying by `Origin` and
    /// a reply to an allowed origin as readable by its page.
    pub fn layer(&self) -> Option<CorsLayer> {
        let origins = match self {
            Cors::Off => return None,
            // The origin is echoed rather than `*`, as for a listed one.
            Cors::Any => AllowOrigin::mirror_request(),
            Cors::Origins(list) => AllowOrigin::list(list.iter().cloned()),
        };
        let expose = EXPOSE_HEADERS
            .iter()
            .map(|name| HeaderName::from_static(name));
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                // Both checked before: the method against the path's, the headers against
                // ALLOW_HEADERS. The methods are then set to the path's own.
                .allow_methods(AllowMethods::mirror_request())
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers(expose.collect::<Vec<_>>())
                .max_age(MAX_AGE)
                .vary([header::ORIGIN]),
        )
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
    fn allows_a_preflight_for_a_listed_origin_method_and_headers() {
        let cors = Cors::from_list(&["https://app.example".into()]).unwrap();
        let headers = preflight_headers(
            "https://app.example",
            "PATCH",
            "Authorization, Content-Type, If-Match",
        );
        assert!(cors.is_preflight(&Method::OPTIONS, &headers));
        assert_eq!(cors.check_preflight(&headers, METHODS), Ok(()));
        assert!(cors.layer().is_some());
    }

    #[test]
    fn refuses_other_origins_methods_and_headers() {
        let cors = Cors::from_list(&["https://app.example".into()]).unwrap();
        let other = preflight_headers("https://evil.example", "GET", "");
        assert_eq!(
            cors.check_preflight(&other, METHODS).unwrap_err().0,
            "Origin"
        );
        let method = preflight_headers("https://app.example", "POST", "");
        assert_eq!(
            cors.check_preflight(&method, METHODS).unwrap_err().0,
            "Access-Control-Request-Method"
        );
        let asked = preflight_headers("https://app.example", "GET", "X-Secret-Thing");
        assert_eq!(
            cors.check_preflight(&asked, METHODS).unwrap_err().0,
            "Access-Control-Request-Headers"
        );
    }

    #[test]
    fn off_means_no_layer_and_no_preflight() {
        let cors = Cors::Off;
        let headers = preflight_headers("https://app.example", "GET", "");
        assert!(!cors.is_preflight(&Method::OPTIONS, &headers));
        assert!(cors.layer().is_none());
    }
}
