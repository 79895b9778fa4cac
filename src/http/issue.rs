//! `GET /next-tracking-number` (and `/v1/next-tracking-number`): validate, issue, reply.

use warp::Filter;
use warp::reply::Response;

use super::{Problem, SharedState, json_reply, query, with_state};
use crate::issuer::IssueError;

pub fn route(
    state: SharedState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let path = warp::path!("next-tracking-number")
        .or(warp::path!("v1" / "next-tracking-number"))
        .unify();
    // The query is optional: no query string means an order with nothing given.
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    path.and(warp::get())
        .and(raw_query)
        .and(with_state(state))
        .then(next_tracking_number)
}

async fn next_tracking_number(raw_query: String, state: SharedState) -> Response {
    let order = match query::parse_order(&raw_query) {
        Ok(order) => order,
        Err(errors) => return Problem::invalid(errors).into_response(),
    };
    match state.issuer.issue(order).await {
        Ok(json) => json_reply(json),
        Err(err) => issue_failed(err).into_response(),
    }
}

fn issue_failed(err: IssueError) -> Problem {
    tracing::warn!(error = %err, "could not issue a number");
    Problem::unavailable(err.to_string())
}
