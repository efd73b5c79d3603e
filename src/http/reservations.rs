//! /v1/reservations: timed holds and their end (complete, cancel, expire), and extension.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;

use super::answer::reservation as answer;
use super::error::{ApiError, Problem};
use super::extract::{parse_uuid, Json, OptionalJson, Path};
use super::AppState;
use crate::auth::Caller;
use crate::engine::requests;
use crate::ledger::ReservationView;
use uuid::Uuid;

const LOCATION_PREFIX: &str = "/v1/reservations/";
const LOCATION_BYTES: usize = LOCATION_PREFIX.len() + uuid::fmt::Hyphenated::LENGTH;

/// Hold stock for a while: all items or none.
#[utoipa::path(post, path = "/v1/reservations", tag = "reservations", request_body = requests::Reserve,
    responses((status = 201, body = ReservationView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 409, response = Problem), (status = 408, response = Problem), (status = 413, response = Problem),
              (status = 415, response = Problem), (status = 503, response = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<requests::Reserve>,
) -> Result<Response, ApiError> {
    let reservation = state.engine.reserve(&caller.name, body).await?;
    let mut response = answer(StatusCode::CREATED, &reservation);
    let mut location = String::with_capacity(LOCATION_BYTES);
    location.push_str(LOCATION_PREFIX);
    location.push_str(
        reservation
            .id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer()),
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A reservation and its status.
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = ReservationView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 404, response = Problem), (status = 503, response = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state
        .engine
        .reservation(&id)
        .ok_or_else(|| ApiError::not_found(format!("no reservation {id}")))?;
    Ok(answer(StatusCode::OK, &reservation))
}

/// Turn the hold into a sale (all of it, or the listed quantities).
#[utoipa::path(post, path = "/v1/reservations/{id}/complete", tag = "reservations",
    params(("id" = String, Path, format = Uuid)), request_body(content = Option<requests::Complete>),
    responses((status = 200, body = ReservationView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 404, response = Problem), (status = 409, response = Problem),
              (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem), (status = 503, response = Problem)))]
pub async fn complete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<requests::Complete>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state.engine.complete(&caller.name, id, body).await?;
    Ok(answer(StatusCode::OK, &reservation))
}

/// Release the hold.
#[utoipa::path(post, path = "/v1/reservations/{id}/cancel", tag = "reservations",
    params(("id" = String, Path, format = Uuid)), request_body(content = Option<requests::Cancel>),
    responses((status = 200, body = ReservationView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 404, response = Problem), (status = 409, response = Problem),
              (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem), (status = 503, response = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<requests::Cancel>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state.engine.cancel(&caller.name, id, body).await?;
    Ok(answer(StatusCode::OK, &reservation))
}

/// Move the expiry to now + ttl_seconds (while active).
#[utoipa::path(post, path = "/v1/reservations/{id}/extend", tag = "reservations",
    params(("id" = String, Path, format = Uuid)), request_body = requests::Extend,
    responses((status = 200, body = ReservationView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 404, response = Problem), (status = 409, response = Problem),
              (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem), (status = 503, response = Problem)))]
pub async fn extend(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<requests::Extend>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state.engine.extend(&caller.name, id, body).await?;
    Ok(answer(StatusCode::OK, &reservation))
}
