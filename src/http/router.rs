//! The route table as warp filters. Each route's path template becomes warp's path filters, a
//! literal segment `warp::path(segment)` and a `{name}` segment `warp::path::param`, ended by
//! `warp::path::end`; the routes are tried in the table's order, and a path none takes falls
//! through to the gateway with no route (a 404, after the same checks and key as any other).
//! Once a route's path matches, the gateway has the request: nothing after the path rejects,
//! so warp never picks among rejections.

use std::sync::Arc;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use hyper::Method;
use hyper::header::HeaderMap;
use percent_encoding::percent_decode_str;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::filters::path::FullPath;

use super::gateway::{Arrival, Gateway, Head, Parts};
use super::routes::{ROUTES, Route};
use super::{RequestBody, Response, SharedState};

/// Every route of the table, then the fall-through, as one filter. Built from the last route
/// back, so that the first route (the hot one) is tried first at the top, and a request that
/// matches it never reaches the others' filters.
pub fn filter(gateway: Arc<Gateway>, state: SharedState) -> BoxedFilter<(Response,)> {
    let parts = parts();
    let unmatched = warp::any().map(String::new).boxed();
    let mut routes = serve(None, unmatched, parts.clone(), &gateway, &state);
    for route in ROUTES.iter().rev() {
        let served = serve(Some(route), path(route), parts.clone(), &gateway, &state);
        routes = served.or(routes).unify().boxed();
    }
    routes
}

/// The route's path filter, extracting the raw segment its `{name}` stands for (empty if none).
fn path(route: &'static Route) -> BoxedFilter<(String,)> {
    let mut filter = warp::any().map(String::new).boxed();
    for segment in route.path.split('/').filter(|s| !s.is_empty()) {
        filter = if segment.starts_with('{') {
            let param = warp::path::param::<String>();
            filter.and(param).map(|_: String, raw: String| raw).boxed()
        } else {
            filter.and(warp::path(segment)).boxed()
        };
    }
    filter.and(warp::path::end()).and(exact()).boxed()
}

/// warp's `path::end` also takes a path that ends in `/` (`/healthz/`); the API's paths are
/// exact, so such a path is no route's.
fn exact() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and_then(|path: FullPath| async move {
            let path = path.as_str();
            if path.len() > 1 && path.ends_with('/') {
                Err(warp::reject::not_found())
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

/// Hands a request whose path `matched` to the gateway, for `route` (None: the fall-through).
fn serve(
    route: Option<&'static Route>,
    matched: BoxedFilter<(String,)>,
    parts: BoxedFilter<(Parts,)>,
    gateway: &Arc<Gateway>,
    state: &SharedState,
) -> BoxedFilter<(Response,)> {
    let (gateway, state) = (gateway.clone(), state.clone());
    matched
        .and(parts)
        .then(move |raw: String, parts: Parts| {
            let (gateway, state) = (gateway.clone(), state.clone());
            async move {
                let param = percent_decode_str(&raw).decode_utf8_lossy().into_owned();
                gateway.serve(state, route, param, parts).await
            }
        })
        .boxed()
}

/// What the gateway and the handlers read of a request.
fn parts() -> BoxedFilter<(Parts,)> {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::ext::get::<Arrival>())
        .and(warp::body::stream())
        .map(
            |method: Method, headers: HeaderMap, query: String, arrival: Arrival, body| Parts {
                head: Head {
                    method,
                    headers,
                    query,
                    arrival,
                },
                body: pieces(body),
            },
        )
        .boxed()
}

/// A request body as a stream of `Bytes`.
fn pieces<B: Buf>(
    body: impl Stream<Item = Result<B, warp::Error>> + Send + 'static,
) -> RequestBody {
    Box::pin(body.map(|piece| {
        piece
            .map(|mut buf| buf.copy_to_bytes(buf.remaining()))
            .map_err(Into::into)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_route_takes_its_own_paths_only() {
        for route in ROUTES {
            let filter = path(route);
            let sample = route.path.replace("{tn}", "AB%2012").replace("{id}", "x1");
            let raw = warp::test::request().path(&sample).filter(&filter).await;
            assert!(raw.is_ok(), "{} takes {sample}", route.path);
            for other in [
                format!("{sample}/x"),
                format!("/x{sample}"),
                format!("{sample}/"),
            ] {
                let refused = warp::test::request().path(&other).filter(&filter).await;
                assert!(refused.is_err(), "{} refuses {other}", route.path);
            }
        }
        let record = path(&ROUTES[3]);
        let raw = warp::test::request()
            .path("/v1/tracking-numbers/AB%2012")
            .filter(&record)
            .await;
        assert_eq!(raw.ok().as_deref(), Some("AB%2012"));
        let empty = warp::test::request()
            .path("/v1/tracking-numbers/")
            .filter(&record)
            .await;
        assert!(empty.is_err(), "an empty segment names no record");
    }
}
