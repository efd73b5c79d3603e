//! The HTTP front (axum): thin handlers that validate, call the engine, and map its errors to
//! problem+json. Every route but the probes needs a token of the right role (when tokens are
//! configured). A concurrency limit sheds load with 503 + Retry-After instead of queueing.

pub mod error;
pub mod extract;
pub mod products;
pub mod reservations;
pub mod sales;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::auth::{AuthError, Role, Tokens};
use crate::engine::Engine;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    in_flight: Arc<Semaphore>,
    tokens: Arc<Tokens>,
}

pub fn router(engine: Engine, max_concurrent_requests: usize, tokens: Tokens) -> Router {
    let state = AppState {
        engine,
        in_flight: Arc::new(Semaphore::new(max_concurrent_requests)),
        tokens: Arc::new(tokens),
    };
    Router::new()
        .route("/v1/products", get(products::list))
        .route("/v1/products/{sku}", get(products::get).put(products::put))
        .route("/v1/products/{sku}/restock", post(products::restock))
        .route("/v1/products/{sku}/adjust", post(products::adjust))
        .route("/v1/products/{sku}/returns", post(products::returns))
        .route("/v1/products/{sku}/history", get(products::history))
        .route("/v1/availability", post(sales::availability))
        .route("/v1/reservations", post(reservations::create))
        .route("/v1/reservations/{id}", get(reservations::get))
        .route(
            "/v1/reservations/{id}/complete",
            post(reservations::complete),
        )
        .route("/v1/reservations/{id}/cancel", post(reservations::cancel))
        .route("/v1/reservations/{id}/extend", post(reservations::extend))
        .route("/v1/sales", post(sales::create))
        .route("/v1/sales/{id}", get(sales::get))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), shed_load))
        .with_state(state)
}

/// At most `max_concurrent_requests` in progress; the rest are refused at once.
async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::overloaded().into_response(),
    }
}

/// The role a route needs: reads need `read`; product definitions and stock corrections need
/// `admin`; everything a checkout does (availability, reservations, sales, returns) `checkout`.
fn required_role(method: &Method, route: &str) -> Role {
    if method == Method::GET {
        return Role::Read;
    }
    match route {
        "/v1/products/{sku}" | "/v1/products/{sku}/restock" | "/v1/products/{sku}/adjust" => {
            Role::Admin
        }
        _ => Role::Checkout,
    }
}

/// Authenticates the bearer token and checks its role before the request body is even read;
/// the caller (token name) is handed to the handler for the audit trail.
async fn authorize(
    State(state): State<AppState>,
    route: MatchedPath,
    mut request: Request,
    next: Next,
) -> Response {
    let required = required_role(request.method(), route.as_str());
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match state.tokens.authorize(header, required) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(AuthError::Unauthorized) => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "send a valid token as Authorization: Bearer <token>",
            )
            .into_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Err(AuthError::Forbidden { name }) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!("token {name} may not do this: it needs the {required:?} role"),
        )
        .into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.engine.log_failed() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Unavailable",
            "the log cannot be written",
        )
        .into_response()
    } else {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        "this route does not accept that method",
    )
}
