//! The route table: every endpoint declared once, with its path template (also its metric
//! label), whether it needs a key, and per method its handler and its OpenAPI operation. The
//! router, the metric label, the auth decision, the 405 with `Allow`, the CORS preflight and the
//! API description all read this table; a new endpoint is one entry here and one handler.
//!
//! `HEAD` is taken wherever `GET` is (RFC 9110 §9.3.2), by the `GET` operation: the gateway sends
//! its head without the body. A route lists a `HEAD` of its own only when its `GET` is not safe
//! to run for a `HEAD`: issuing, whose `GET` makes a number.

use std::future::Future;
use std::pin::Pin;

use hyper::Method;

use super::{Call, Response, health, imports, issue, page, records};

/// A handler's future: boxed, so that every handler fits one table.
pub type Reply = Pin<Box<dyn Future<Output = Response> + Send>>;

pub struct Route {
    /// The path, with `{name}` for a segment that varies; also the route's metric label.
    pub path: &'static str,
    /// Whether a caller needs an API key (when keys are on) and is rate limited.
    pub guarded: bool,
    /// Whether the route takes uploads: bodies up to `--import-max-bytes`, streamed, rather
    /// than the small bodies the others take.
    pub uploads: bool,
    /// The group the API description lists the route under.
    pub tag: &'static str,
    pub operations: &'static [Operation],
}

pub struct Operation {
    pub method: Method,
    /// The operation's id in the API description.
    pub id: &'static str,
    pub handler: fn(Call) -> Reply,
    /// The operation's description, from the `#[utoipa::path]` on its handler (its path, method
    /// and id come from this table; see `openapi`).
    pub doc: fn() -> utoipa::openapi::path::Operation,
}

/// The metric label of a request no route takes.
pub const UNMATCHED: &str = "unmatched";

/// Every route, the hot one first (routes are tried in order).
pub static ROUTES: &[Route] = &[
    Route {
        path: "/next-tracking-number",
        guarded: true,
        uploads: false,
        tag: "issuing",
        operations: &[
            Operation {
                method: Method::GET,
                id: "issueNumber",
                handler: |call| Box::pin(issue::one(call)),
                doc: <issue::__path_one as utoipa::Path>::operation,
            },
            Operation {
                method: Method::HEAD,
                id: "issueNumberHead",
                handler: |call| Box::pin(issue::check(call)),
                doc: <issue::__path_check as utoipa::Path>::operation,
            },
        ],
    },
    Route {
        path: "/v1/next-tracking-number",
        guarded: true,
        uploads: false,
        tag: "issuing",
        operations: &[
            Operation {
                method: Method::GET,
                id: "issueNumberV1",
                handler: |call| Box::pin(issue::one(call)),
                doc: <issue::__path_one as utoipa::Path>::operation,
            },
            Operation {
                method: Method::HEAD,
                id: "issueNumberV1Head",
                handler: |call| Box::pin(issue::check(call)),
                doc: <issue::__path_check as utoipa::Path>::operation,
            },
        ],
    },
    Route {
        path: "/v1/tracking-numbers",
        guarded: true,
        uploads: false,
        tag: "issuing",
        operations: &[Operation {
            method: Method::POST,
            id: "issueBatch",
            handler: |call| Box::pin(issue::batch(call)),
            doc: <issue::__path_batch as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/v1/tracking-numbers/{tn}",
        guarded: true,
        uploads: false,
        tag: "records",
        operations: &[
            Operation {
                method: Method::GET,
                id: "getRecord",
                handler: |call| Box::pin(records::get(call)),
                doc: <records::__path_get as utoipa::Path>::operation,
            },
            Operation {
                method: Method::PATCH,
                id: "updateRecord",
                handler: |call| Box::pin(records::update(call)),
                doc: <records::__path_update as utoipa::Path>::operation,
            },
            Operation {
                method: Method::DELETE,
                id: "deleteRecord",
                handler: |call| Box::pin(records::delete(call)),
                doc: <records::__path_delete as utoipa::Path>::operation,
            },
            Operation {
                method: Method::PUT,
                id: "registerNumber",
                handler: |call| Box::pin(records::register(call)),
                doc: <records::__path_register as utoipa::Path>::operation,
            },
        ],
    },
    Route {
        path: "/v1/tracking-numbers/{tn}/check",
        guarded: true,
        uploads: false,
        tag: "records",
        operations: &[Operation {
            method: Method::GET,
            id: "checkNumber",
            handler: |call| Box::pin(records::check(call)),
            doc: <records::__path_check as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/v1/imports",
        guarded: true,
        uploads: true,
        tag: "imports",
        operations: &[
            Operation {
                method: Method::POST,
                id: "createImport",
                handler: |call| Box::pin(imports::create(call)),
                doc: <imports::__path_create as utoipa::Path>::operation,
            },
            Operation {
                method: Method::GET,
                id: "listImports",
                handler: |call| Box::pin(imports::list(call)),
                doc: <imports::__path_list as utoipa::Path>::operation,
            },
        ],
    },
    Route {
        path: "/v1/imports/{id}",
        guarded: true,
        uploads: false,
        tag: "imports",
        operations: &[
            Operation {
                method: Method::GET,
                id: "getImport",
                handler: |call| Box::pin(imports::get(call)),
                doc: <imports::__path_get as utoipa::Path>::operation,
            },
            Operation {
                method: Method::DELETE,
                id: "cancelImport",
                handler: |call| Box::pin(imports::cancel(call)),
                doc: <imports::__path_cancel as utoipa::Path>::operation,
            },
        ],
    },
    Route {
        path: "/v1/imports/{id}/results",
        guarded: true,
        uploads: false,
        tag: "imports",
        operations: &[Operation {
            method: Method::GET,
            id: "getImportResults",
            handler: |call| Box::pin(imports::results(call)),
            doc: <imports::__path_results as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/healthz",
        guarded: false,
        uploads: false,
        tag: "operations",
        operations: &[Operation {
            method: Method::GET,
            id: "healthz",
            handler: |call| Box::pin(health::healthz(call)),
            doc: <health::__path_healthz as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/readyz",
        guarded: false,
        uploads: false,
        tag: "operations",
        operations: &[Operation {
            method: Method::GET,
            id: "readyz",
            handler: |call| Box::pin(health::readyz(call)),
            doc: <health::__path_readyz as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/metrics",
        guarded: false,
        uploads: false,
        tag: "operations",
        operations: &[Operation {
            method: Method::GET,
            id: "metrics",
            handler: |call| Box::pin(health::metrics(call)),
            doc: <health::__path_metrics as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/openapi.json",
        guarded: false,
        uploads: false,
        tag: "operations",
        operations: &[Operation {
            method: Method::GET,
            id: "openapi",
            handler: |call| Box::pin(health::openapi(call)),
            doc: <health::__path_openapi as utoipa::Path>::operation,
        }],
    },
    Route {
        path: "/",
        guarded: false,
        uploads: false,
        tag: "operations",
        operations: &[Operation {
            method: Method::GET,
            id: "page",
            handler: |call| Box::pin(page::serve(call)),
            doc: <page::__path_serve as utoipa::Path>::operation,
        }],
    },
];

impl Route {
    /// The operation for `method`, if the route takes it: for `HEAD`, its own or else `GET`'s.
    pub fn operation(&self, method: &Method) -> Option<&'static Operation> {
        let listed = |method: &Method| self.operations.iter().find(|op| op.method == *method);
        listed(method).or_else(|| match *method {
            Method::HEAD => listed(&Method::GET),
            _ => None,
        })
    }

    /// The route's `GET` operation that also answers its `HEAD`, if it has one.
    pub fn head_from_get(&self) -> Option<&'static Operation> {
        let get = self.operations.iter().find(|op| op.method == Method::GET)?;
        let own_head = self.operations.iter().any(|op| op.method == Method::HEAD);
        (!own_head).then_some(get)
    }

    /// The methods the route takes, `HEAD` right after `GET` when it comes from `GET`.
    pub fn methods(&self) -> Vec<&'static str> {
        let mut methods = Vec::with_capacity(self.operations.len() + 1);
        for op in self.operations {
            methods.push(op.method.as_str());
            if op.method == Method::GET && self.head_from_get().is_some() {
                methods.push(Method::HEAD.as_str());
            }
        }
        methods
    }

    /// The `Allow` header of a 405, and the methods a CORS preflight allows: the route's.
    pub fn allow(&self) -> String {
        self.methods().join(", ")
    }

    /// The varying segment of `path` (this route's own), if the template has one.
    pub fn param<'p>(&self, path: &'p str) -> Option<&'p str> {
        let template = self.path.split('/');
        template
            .zip(path.split('/'))
            .find(|(t, _)| t.starts_with('{'))
            .map(|(_, segment)| segment)
    }

    fn matches(&self, path: &str) -> bool {
        let (mut template, mut given) = (self.path.split('/'), path.split('/'));
        loop {
            match (template.next(), given.next()) {
                (None, None) => return true,
                (Some(t), Some(g)) if t.starts_with('{') && !g.is_empty() => {}
                (Some(t), Some(g)) if t == g => {}
                _ => return false,
            }
        }
    }
}

/// The route that takes `path`, from `table`.
pub fn find_in(table: &'static [Route], path: &str) -> Option<&'static Route> {
    table.iter().find(|route| route.matches(path))
}

/// The route that takes `path`.
pub fn find(path: &str) -> Option<&'static Route> {
    find_in(ROUTES, path)
}

/// Every method some route takes, for a preflight of a path no route takes.
pub fn all_methods() -> String {
    let mut methods: Vec<&str> = Vec::new();
    for method in ROUTES.iter().flat_map(Route::methods) {
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    methods.join(", ")
}

/// A route's metric label: its template, or [`UNMATCHED`].
pub fn label(route: Option<&Route>) -> &'static str {
    match route {
        Some(route) => route.path,
        None => UNMATCHED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_of(path: &str) -> &'static str {
        label(find(path))
    }

    #[test]
    fn paths_map_to_a_fixed_set_of_labels() {
        for (path, route) in [
            ("/next-tracking-number", "/next-tracking-number"),
            ("/v1/next-tracking-number", "/v1/next-tracking-number"),
            ("/v1/tracking-numbers", "/v1/tracking-numbers"),
            ("/v1/tracking-numbers/MY00ABC", "/v1/tracking-numbers/{tn}"),
            (
                "/v1/tracking-numbers/MY00ABC/check",
                "/v1/tracking-numbers/{tn}/check",
            ),
            ("/v1/tracking-numbers/MY00ABC/check/x", UNMATCHED),
            ("/v1/tracking-numbers/a/b", UNMATCHED),
            ("/v1/tracking-numbers/", UNMATCHED),
            ("/v1/imports", "/v1/imports"),
            ("/v1/imports/abc", "/v1/imports/{id}"),
            ("/v1/imports/abc/results", "/v1/imports/{id}/results"),
            ("/v1/imports/abc/x", UNMATCHED),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/metrics", "/metrics"),
            ("/openapi.json", "/openapi.json"),
            ("/", "/"),
            ("//", UNMATCHED),
            ("/index.html", UNMATCHED),
            ("/wp-admin/login.php", UNMATCHED),
            ("/healthz/x", UNMATCHED),
        ] {
            assert_eq!(label_of(path), route, "{path}");
        }
    }

    #[test]
    fn a_route_missing_from_the_table_cannot_be_served() {
        static ONLY_PROBES: &[Route] = &[Route {
            path: "/healthz",
            guarded: false,
            uploads: false,
            tag: "operations",
            operations: &[],
        }];
        assert!(find_in(ONLY_PROBES, "/healthz").is_some());
        assert!(find_in(ONLY_PROBES, "/next-tracking-number").is_none());
        assert!(find_in(ONLY_PROBES, "/readyz").is_none());
    }

    #[test]
    fn the_varying_segment_is_the_one_the_template_names() {
        let record = find("/v1/tracking-numbers/AB12/check").unwrap();
        assert_eq!(
            record.param("/v1/tracking-numbers/AB12/check"),
            Some("AB12")
        );
        assert_eq!(find("/healthz").unwrap().param("/healthz"), None);
    }

    #[test]
    fn only_probes_metrics_the_description_and_the_page_are_open() {
        let open: Vec<&str> = ROUTES
            .iter()
            .filter(|r| !r.guarded)
            .map(|r| r.path)
            .collect();
        assert_eq!(
            open,
            ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"]
        );
    }

    #[test]
    fn allow_lists_the_routes_methods_with_head_wherever_get_is() {
        let record = find("/v1/tracking-numbers/X").unwrap();
        assert_eq!(record.allow(), "GET, HEAD, PATCH, DELETE, PUT");
        for path in [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/",
            "/next-tracking-number",
        ] {
            assert_eq!(find(path).unwrap().allow(), "GET, HEAD", "{path}");
        }
        assert_eq!(find("/v1/tracking-numbers").unwrap().allow(), "POST");
        assert_eq!(all_methods(), "GET, HEAD, POST, PATCH, DELETE, PUT");
    }

    #[test]
    fn head_runs_get_unless_the_route_lists_its_own() {
        let record = find("/v1/tracking-numbers/X").unwrap();
        assert_eq!(record.operation(&Method::HEAD).unwrap().id, "getRecord");
        assert_eq!(record.head_from_get().unwrap().id, "getRecord");
        for path in ["/next-tracking-number", "/v1/next-tracking-number"] {
            let issue = find(path).unwrap();
            let head = issue.operation(&Method::HEAD).unwrap();
            assert!(
                head.id.ends_with("Head"),
                "issuing has a HEAD that issues nothing"
            );
            assert!(issue.head_from_get().is_none());
        }
        let batch = find("/v1/tracking-numbers").unwrap();
        assert!(batch.operation(&Method::HEAD).is_none(), "no GET, no HEAD");
    }

    #[test]
    fn paths_and_operation_ids_are_unique() {
        let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
        let mut ids: Vec<&str> = ROUTES
            .iter()
            .flat_map(|r| r.operations.iter().map(|op| op.id))
            .collect();
        let (p, i) = (paths.len(), ids.len());
        paths.sort();
        paths.dedup();
        ids.sort();
        ids.dedup();
        assert_eq!((paths.len(), ids.len()), (p, i));
    }
}
