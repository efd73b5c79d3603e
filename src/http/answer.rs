//! JSON answers. axum's `Json` serializes into a 128-byte buffer that a reservation's answer
//! (about 250 bytes) outgrows twice, through a `BytesMut` writer; an answer here is written
//! into one buffer sized for the usual answer.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use crate::ledger::ReservationView;

/// Room for a reservation, a product or a sale without growing; pages grow as they need.
const ANSWER_BYTES: usize = 512;

/// `value` as `application/json` with `status`.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let mut body = Vec::with_capacity(ANSWER_BYTES);
    let written = serde_json::to_writer(&mut body, value);
    answer(status, body, written)
}

/// A reservation as `application/json` with `status`: [`json`], by the view's own writer
/// ([`ReservationView::write_json`] says why).
pub fn reservation(status: StatusCode, view: &ReservationView) -> Response {
    let mut body = Vec::with_capacity(ANSWER_BYTES);
    let written = view.write_json(&mut body);
    answer(status, body, written)
}

fn answer(status: StatusCode, body: Vec<u8>, written: serde_json::Result<()>) -> Response {
    match written {
        Ok(()) => (
            status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        // Only a view that cannot be JSON fails here (a map with non-string keys, say):
        // a bug, answered as one.
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("the answer could not be written as JSON: {e}"),
        )
        .into_response(),
    }
}
