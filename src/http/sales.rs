//! /v1/sales: direct sales from available stock, and /v1/availability (a read).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::extract::{parse_uuid, Json, Path};
use super::AppState;
use crate::auth::Caller;
use crate::engine::requests;

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<requests::Sale>,
) -> Result<Response, ApiError> {
    let sale = state.engine.sell(&caller.name, body).await?;
    Ok((StatusCode::CREATED, axum::Json(sale)).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let sale = state
        .engine
        .sale(&id)
        .ok_or_else(|| ApiError::not_found(format!("no sale {id}")))?;
    Ok(axum::Json(sale).into_response())
}

pub async fn availability(
    State(state): State<AppState>,
    Json(body): Json<requests::Availability>,
) -> Result<Response, ApiError> {
    let (ok, items) = state.engine.availability(&body)?;
    Ok(axum::Json(serde_json::json!({ "ok": ok, "items": items })).into_response())
}
