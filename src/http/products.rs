//! /v1/products: create/update, read, list, restock, adjust, returns, history.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{if_match, Json, Path, Query};
use super::AppState;
use crate::auth::Caller;
use crate::domain::limits::{
    HISTORY_PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PRODUCTS_PAGE_LIMIT_DEFAULT,
};
use crate::domain::StockStatus;
use crate::engine::requests;
use crate::ledger::{Action, ProductView};

/// A product with its `ETag`.
pub fn product_response(status: StatusCode, product: &ProductView) -> Response {
    let mut response = (status, axum::Json(product)).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", product.version)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    Json(body): Json<requests::PutProduct>,
) -> Result<Response, ApiError> {
    let if_match = if_match(&headers)?;
    let answer = state
        .engine
        .put_product(&caller.name, &sku, body, if_match)
        .await?;
    let status = if answer.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(product_response(status, &answer.product))
}

pub async fn get(
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    requests::parse_sku(&sku)?;
    let product = state
        .engine
        .product(&sku)
        .ok_or_else(|| ApiError::not_found(format!("no product {sku}")))?;
    Ok(product_response(StatusCode::OK, &product))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(format!(
            "limit must be between 1 and {PAGE_LIMIT_MAX}"
        ))),
    }
}

pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(StockStatus::parse(s).ok_or_else(|| {
            ApiError::invalid("status must be in_stock, low_stock or out_of_stock")
        })?),
    };
    let limit = page_limit(params.limit, PRODUCTS_PAGE_LIMIT_DEFAULT)?;
    if let Some(after) = &params.after {
        requests::parse_sku(after)?;
    }
    let (products, next) = state
        .engine
        .list_products(status, params.after.as_deref(), limit);
    Ok(axum::Json(serde_json::json!({ "products": products, "next": next })).into_response())
}

pub async fn restock(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    Json(body): Json<requests::QuantityChange>,
) -> Result<Response, ApiError> {
    let if_match = if_match(&headers)?;
    let product = state
        .engine
        .restock(&caller.name, &sku, body, if_match)
        .await?;
    Ok(product_response(StatusCode::OK, &product))
}

pub async fn adjust(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    Json(body): Json<requests::Adjust>,
) -> Result<Response, ApiError> {
    let if_match = if_match(&headers)?;
    let product = state
        .engine
        .adjust(&caller.name, &sku, body, if_match)
        .await?;
    Ok(product_response(StatusCode::OK, &product))
}

pub async fn returns(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sku): Path<String>,
    Json(body): Json<requests::QuantityChange>,
) -> Result<Response, ApiError> {
    let product = state.engine.record_return(&caller.name, &sku, body).await?;
    Ok(product_response(StatusCode::OK, &product))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    limit: Option<usize>,
    before: Option<u64>,
    action: Option<String>,
}

pub async fn history(
    State(state): State<AppState>,
    Path(sku): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    requests::parse_sku(&sku)?;
    let limit = page_limit(params.limit, HISTORY_PAGE_LIMIT_DEFAULT)?;
    let action = match params.action.as_deref() {
        None => None,
        Some(a) => Some(Action::parse(a).ok_or_else(|| {
            ApiError::invalid("action must be one of create, set, restock, adjust, return, sale, reserve, complete, release")
        })?),
    };
    let (entries, next) = state
        .engine
        .history(&sku, params.before, action, limit)
        .ok_or_else(|| ApiError::not_found(format!("no product {sku}")))?;
    Ok(axum::Json(serde_json::json!({ "entries": entries, "next": next })).into_response())
}
