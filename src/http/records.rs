//! `GET /v1/tracking-numbers/{tracking_number}`: the stored record of an issued number.

use warp::Filter;
use warp::reply::Response;

use super::{Problem, SharedState, json_reply, with_state};
use crate::domain::FieldError;

pub fn route(
    state: SharedState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "tracking-numbers" / String)
        .and(warp::get())
        .and(with_state(state))
        .then(get_record)
}

async fn get_record(number: String, state: SharedState) -> Response {
    // Numbers are upper case; accept what a person types.
    let number = number.to_ascii_uppercase();
    if number.is_empty() || number.len() > 16 || !number.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Problem::invalid(vec![FieldError::new(
            "tracking_number",
            "must be 1 to 16 characters of A-Z and 0-9",
        )])
        .into_response();
    }
    match state.store.get(&number).await {
        Ok(Some(json)) => json_reply(json),
        Ok(None) => {
            Problem::not_found(format!("no record for tracking number {number}")).into_response()
        }
        Err(err) => Problem::unavailable(err.to_string()).into_response(),
    }
}
