//! /v1/reservations: timed holds and their end (complete, cancel, expire), and extension.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::extract::{parse_uuid, Json, OptionalJson, Path};
use super::AppState;
use crate::auth::Caller;
use crate::engine::requests;

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<requests::Reserve>,
) -> Result<Response, ApiError> {
    let reservation = state.engine.reserve(&caller.name, body).await?;
    let mut response = (StatusCode::CREATED, axum::Json(&reservation)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/reservations/{}", reservation.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state
        .engine
        .reservation(&id)
        .ok_or_else(|| ApiError::not_found(format!("no reservation {id}")))?;
    Ok(axum::Json(reservation).into_response())
}

pub async fn complete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<requests::Complete>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state.engine.complete(&caller.name, id, body).await?;
    Ok(axum::Json(reservation).into_response())
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<requests::Cancel>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state.engine.cancel(&caller.name, id, body).await?;
    Ok(axum::Json(reservation).into_response())
}

pub async fn extend(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<requests::Extend>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let reservation = state.engine.extend(&caller.name, id, body).await?;
    Ok(axum::Json(reservation).into_response())
}
