//! /v1/sales: direct sales from available stock, and /v1/availability (a read).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::Serialize;
use utoipa::ToSchema;

use super::answer::json;
use super::error::{ApiError, Problem};
use super::extract::{parse_uuid, Json, Path};
use super::AppState;
use crate::auth::Caller;
use crate::engine::requests;
use crate::ledger::{ItemReport, SaleView};

/// Sell from available stock without a hold first: all items or none.
#[utoipa::path(post, path = "/v1/sales", tag = "sales", request_body = requests::Sale,
    responses((status = 201, body = SaleView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 409, response = Problem), (status = 408, response = Problem), (status = 413, response = Problem),
              (status = 415, response = Problem), (status = 503, response = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<requests::Sale>,
) -> Result<Response, ApiError> {
    let sale = state.engine.sell(&caller.name, body).await?;
    Ok(json(StatusCode::CREATED, &sale))
}

/// A sale.
#[utoipa::path(get, path = "/v1/sales/{id}", tag = "sales", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = SaleView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 404, response = Problem), (status = 503, response = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id)?;
    let sale = state
        .engine
        .sale(&id)
        .ok_or_else(|| ApiError::not_found(format!("no sale {id}")))?;
    Ok(json(StatusCode::OK, &sale))
}

#[derive(Serialize, ToSchema)]
pub struct AvailabilityAnswer {
    /// Every item is available in the quantity asked.
    ok: bool,
    items: Vec<ItemReport>,
}

/// Would these items fit now? Changes nothing.
#[utoipa::path(post, path = "/v1/availability", tag = "sales", request_body = requests::Availability,
    responses((status = 200, body = AvailabilityAnswer), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem),
              (status = 503, response = Problem)))]
pub async fn availability(
    State(state): State<AppState>,
    Json(body): Json<requests::Availability>,
) -> Result<Response, ApiError> {
    let (ok, items) = state.engine.availability(&body)?;
    Ok(json(StatusCode::OK, &AvailabilityAnswer { ok, items }))
}
