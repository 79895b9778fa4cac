//! Typed requests: one method per call the tests make (`get_record`, `patch_record`, `upload`,
//! `preflight`, …), so a test says what it asks rather than how the request is built. A client
//! may carry an API key and other headers (`with_key`, `with_header`), sent with every request;
//! `request` is the escape hatch for what no method says (a raw body, another method).

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// A client of one server, with the headers it sends on every request.
#[derive(Clone)]
pub struct ApiClient {
    pub client: reqwest::Client,
    base: String,
    headers: Vec<(String, String)>,
}

impl ApiClient {
    /// A client of the server at `base` (`http://host:port`) that sends no extra headers.
    pub fn new(base: String) -> Self {
        ApiClient {
            client: reqwest::Client::new(),
            base,
            headers: Vec::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The same client, sending `Authorization: Bearer <key>` too.
    pub fn with_key(&self, key: &str) -> ApiClient {
        self.with_header("Authorization", &format!("Bearer {key}"))
    }

    /// The same client, sending `name: value` too.
    pub fn with_header(&self, name: &str, value: &str) -> ApiClient {
        let mut other = self.clone();
        other.headers.push((name.to_owned(), value.to_owned()));
        other
    }

    /// A request to `path` with this client's headers, to finish and send by hand.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.headers.iter().fold(
            self.client.request(method, self.url(path)),
            |request, (name, value)| request.header(name, value),
        )
    }

    pub async fn get(&self, path: &str) -> Response {
        send(self.request(Method::GET, path)).await
    }

    pub async fn head(&self, path: &str) -> Response {
        send(self.request(Method::HEAD, path)).await
    }

    /// Issues a number with the given query and returns the body, asserting a 200.
    pub async fn issue(&self, query: &str) -> Value {
        let response = self.issue_with(query).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET /next-tracking-number?<query>`, whatever the reply.
    pub async fn issue_with(&self, query: &str) -> Response {
        self.get(&format!("/next-tracking-number?{query}")).await
    }

    /// `POST /v1/tracking-numbers` with a JSON body (`{"count": n}` or `{"orders": […]}`).
    pub async fn batch(&self, body: &Value) -> Response {
        send(
            self.request(Method::POST, "/v1/tracking-numbers")
                .json(body),
        )
        .await
    }

    pub async fn get_record(&self, number: &str) -> Response {
        self.get(&record_path(number)).await
    }

    /// `GET /v1/tracking-numbers/<number>/check`.
    pub async fn check_record(&self, number: &str) -> Response {
        self.get(&format!("{}/check", record_path(number))).await
    }

    /// `PUT` registers a number made elsewhere; `body` holds its inputs (none: no body).
    pub async fn put_record(&self, number: &str, body: Option<&Value>) -> Response {
        let request = self.request(Method::PUT, &record_path(number));
        send(match body {
            Some(body) => request.json(body),
            None => request,
        })
        .await
    }

    /// `PATCH` with a JSON body, and an `If-Match` when given.
    pub async fn patch_record(
        &self,
        number: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Response {
        let request = self.request(Method::PATCH, &record_path(number)).json(body);
        send(with_if_match(request, if_match)).await
    }

    /// `DELETE`, with an `If-Match` when given.
    pub async fn delete_record(&self, number: &str, if_match: Option<&str>) -> Response {
        let request = self.request(Method::DELETE, &record_path(number));
        send(with_if_match(request, if_match)).await
    }

    /// `POST /v1/imports<query>` with `body` as a CSV file (`Content-Type: text/csv`).
    pub async fn upload(&self, query: &str, body: impl Into<reqwest::Body>) -> Response {
        let request = self
            .request(Method::POST, &format!("/v1/imports{query}"))
            .header("Content-Type", "text/csv")
            .body(body);
        send(request).await
    }

    /// `POST /v1/imports` with a multipart form.
    pub async fn upload_form(&self, form: reqwest::multipart::Form) -> Response {
        send(self.request(Method::POST, "/v1/imports").multipart(form)).await
    }

    /// The import job `id`.
    pub async fn import(&self, id: &str) -> Response {
        self.get(&format!("/v1/imports/{id}")).await
    }

    /// The results of the import job `id`.
    pub async fn import_results(&self, id: &str) -> Response {
        self.get(&format!("/v1/imports/{id}/results")).await
    }

    /// `DELETE /v1/imports/<id>`: cancels the job.
    pub async fn cancel_import(&self, id: &str) -> Response {
        send(self.request(Method::DELETE, &format!("/v1/imports/{id}"))).await
    }

    /// The listing of recent imports, `GET /v1/imports<query>`.
    pub async fn imports(&self, query: &str) -> Response {
        self.get(&format!("/v1/imports{query}")).await
    }

    /// A browser's CORS preflight for `method` (and `headers`) on `path`, from `origin`.
    pub async fn preflight(
        &self,
        path: &str,
        origin: &str,
        method: &str,
        headers: Option<&str>,
    ) -> Response {
        let request = self
            .request(Method::OPTIONS, path)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method);
        send(match headers {
            Some(headers) => request.header("Access-Control-Request-Headers", headers),
            None => request,
        })
        .await
    }
}

pub fn record_path(number: &str) -> String {
    format!("/v1/tracking-numbers/{number}")
}

fn with_if_match(request: RequestBuilder, if_match: Option<&str>) -> RequestBuilder {
    match if_match {
        Some(tag) => request.header("If-Match", tag),
        None => request,
    }
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("the server answers")
}
