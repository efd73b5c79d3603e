//! /v1/products: create/update, read, list, restock, adjust, returns, history.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::answer::json;
use super::error::{ApiError, Problem};
use super::extract::{if_match, Json, Path, Query};
use super::AppState;
use crate::auth::Caller;
use crate::domain::limits::{
    HISTORY_PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PRODUCTS_PAGE_LIMIT_DEFAULT,
};
use crate::domain::StockStatus;
use crate::engine::requests;
use crate::ledger::{Action, HistoryView, ProductView};

/// A product with its `ETag`.
pub fn product_response(status: StatusCode, product: &ProductView) -> Response {
    let mut response = json(status, product);
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", product.version)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// Create a product, or update it (an audited `set` when `on_hand` is given).
#[utoipa::path(put, path = "/v1/products/{sku}", tag = "products",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "1-64 of A-Z a-z 0-9 . _ -"),
           ("If-Match" = Option<String>, Header, description = "ETag of the version you read")),
    request_body = requests::PutProduct,
    responses(
        (status = 201, description = "created", body = ProductView),
        (status = 200, description = "updated", body = ProductView),
        (status = 400, response = Problem), (status = 401, response = Problem), (status = 403, response = Problem),
        (status = 409, response = Problem), (status = 412, response = Problem), (status = 408, response = Problem), (status = 413, response = Problem),
        (status = 415, response = Problem), (status = 503, response = Problem)))]
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

/// A product's counts, as durably recorded.
#[utoipa::path(get, path = "/v1/products/{sku}", tag = "products",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, body = ProductView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 404, response = Problem), (status = 503, response = Problem)))]
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `in_stock`, `low_stock` or `out_of_stock`.
    status: Option<String>,
    /// 1..=1000, default 100.
    limit: Option<usize>,
    /// Start after this SKU (the previous page's `next`).
    after: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductPage {
    products: Vec<ProductView>,
    /// Pass as `after` for the next page; null on the last page.
    next: Option<String>,
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

/// Products in SKU order, optionally by status.
#[utoipa::path(get, path = "/v1/products", tag = "products", params(ListParams),
    responses((status = 200, body = ProductPage), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 503, response = Problem)))]
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
    Ok(json(StatusCode::OK, &ProductPage { products, next }))
}

/// Add received stock.
#[utoipa::path(post, path = "/v1/products/{sku}/restock", tag = "products",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"), ("If-Match" = Option<String>, Header)),
    request_body = requests::QuantityChange,
    responses((status = 200, body = ProductView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 404, response = Problem), (status = 409, response = Problem),
              (status = 412, response = Problem), (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem),
              (status = 503, response = Problem)))]
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

/// Correct on_hand by a signed delta, with a reason.
#[utoipa::path(post, path = "/v1/products/{sku}/adjust", tag = "products",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"), ("If-Match" = Option<String>, Header)),
    request_body = requests::Adjust,
    responses((status = 200, body = ProductView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 404, response = Problem), (status = 409, response = Problem),
              (status = 412, response = Problem), (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem),
              (status = 503, response = Problem)))]
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

/// Put returned units back on hand.
#[utoipa::path(post, path = "/v1/products/{sku}/returns", tag = "products",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = requests::QuantityChange,
    responses((status = 200, body = ProductView), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 403, response = Problem), (status = 404, response = Problem), (status = 409, response = Problem),
              (status = 408, response = Problem), (status = 413, response = Problem), (status = 415, response = Problem), (status = 503, response = Problem)))]
pub async fn returns(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(sku): Path<String>,
    Json(body): Json<requests::QuantityChange>,
) -> Result<Response, ApiError> {
    let product = state.engine.record_return(&caller.name, &sku, body).await?;
    Ok(product_response(StatusCode::OK, &product))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// 1..=1000, default 50.
    limit: Option<usize>,
    /// Only entries with a smaller `seq` (the previous page's `next`).
    before: Option<u64>,
    /// Only this action (create, set, restock, adjust, return, sale, reserve, complete, release).
    action: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    entries: Vec<HistoryView>,
    /// Pass as `before` for the next page; null on the last page. With `action`, a page
    /// stops after looking at 65,536 entries, so it can hold fewer than `limit` (or none)
    /// and still have a `next`.
    next: Option<u64>,
}

/// The product's audit trail, newest first.
#[utoipa::path(get, path = "/v1/products/{sku}/history", tag = "products",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"), HistoryParams),
    responses((status = 200, body = HistoryPage), (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 404, response = Problem), (status = 503, response = Problem)))]
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
    Ok(json(StatusCode::OK, &HistoryPage { entries, next }))
}
