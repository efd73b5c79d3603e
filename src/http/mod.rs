//! The HTTP front (axum): thin handlers that validate, call the engine, and map its errors to
//! problem+json. Every route but the probes needs a token of the right role (when tokens are
//! configured). A concurrency limit sheds load with 503 + Retry-After instead of queueing.

pub mod answer;
pub mod connections;
pub mod error;
pub mod extract;
pub mod products;
pub mod reservations;
pub mod sales;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use tokio::sync::Semaphore;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthError, Role, Tokens};
use crate::engine::Engine;
use crate::metrics::Route;
use error::{ApiError, Problem};

/// Everything a handler needs, behind one `Arc` (each middleware and handler clones it).
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

pub struct AppShared {
    pub engine: Engine,
    in_flight: Arc<Semaphore>,
    tokens: Tokens,
    request_timeout: Duration,
    /// The OpenAPI document, set once the routes that describe it are built.
    openapi_json: std::sync::OnceLock<String>,
}

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// Limits of the HTTP front.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
}

/// The OpenAPI document's frame; every operation in it comes from a handler's
/// `#[utoipa::path]`, registered together with its route, so the two cannot drift apart.
#[derive(OpenApi)]
#[openapi(
    info(title = "stockd", description = "Stock server for flash-sale checkout: timed holds, sales, an audited, durable log."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(responses(Problem), schemas(Problem)),
    tags((name = "products"), (name = "reservations"), (name = "sales"), (name = "operations"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme =
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", scheme);
    }
}

pub fn router(engine: Engine, limits: HttpLimits, tokens: Tokens) -> Router {
    let state = AppState(Arc::new(AppShared {
        engine,
        in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        tokens,
        request_timeout: limits.request_timeout,
        openapi_json: std::sync::OnceLock::new(),
    }));
    // Split for the OpenAPI document's security; the token itself is checked in `front`,
    // which lets through without one only the routes in PUBLIC_ROUTES.
    let protected = OpenApiRouter::new()
        .routes(routes!(products::list))
        .routes(routes!(products::get, products::put))
        .routes(routes!(products::restock))
        .routes(routes!(products::adjust))
        .routes(routes!(products::returns))
        .routes(routes!(products::history))
        .routes(routes!(sales::availability))
        .routes(routes!(reservations::create))
        .routes(routes!(reservations::get))
        .routes(routes!(reservations::complete))
        .routes(routes!(reservations::cancel))
        .routes(routes!(reservations::extend))
        .routes(routes!(sales::create))
        .routes(routes!(sales::get))
        .routes(routes!(metrics));
    let public = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json));
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(public)
        .split_for_parts();
    // In the state, not an `Extension` layer: that layer put it into every request.
    let _ = state
        .openapi_json
        .set(openapi.to_json().unwrap_or_default());
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        state.openapi_json.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

/// The one middleware, in front of every route: at most `max_concurrent_requests` in
/// progress (the rest are refused at once), then [`authorize`], then the handler; reads must
/// answer within the request timeout. Counts and times every answer. One layer, not one per
/// concern: each `from_fn` layer costs every request a boxed future and its moves.
async fn front(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Route::UNMATCHED, |p| Route::of(p.as_str()));
    let response = match state.in_flight.clone().try_acquire_owned() {
        Err(_) => ApiError::overloaded().into_response(),
        Ok(_permit) => match authorize(&state, &method, route.label(), &mut request) {
            Err(refusal) => refusal.into_response(),
            Ok(()) if method == Method::GET || route.label() == "/v1/availability" => {
                tokio::time::timeout(state.request_timeout, next.run(request))
                    .await
                    .unwrap_or_else(|_| ApiError::overloaded().into_response())
            }
            Ok(()) => next.run(request).await,
        },
    };
    state.engine.counters().observe_request(
        &method,
        route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 401, response = Problem), (status = 403, response = Problem), (status = 503, response = Problem)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.engine.metrics().encode();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
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

/// Routes anyone may call: the probes and the API's description. Every other route, including
/// one added later and not yet named in the metrics' route list ("other"), needs a token.
/// A path no route has is answered 404 without one: there is nothing there to protect.
const PUBLIC_ROUTES: [&str; 4] = ["/healthz", "/readyz", "/openapi.json", "unmatched"];

/// Authenticates the bearer token and checks its role before the request body is even read;
/// the caller (token name) is handed to the handler for the audit trail.
fn authorize(
    state: &AppState,
    method: &Method,
    route: &'static str,
    request: &mut Request,
) -> Result<(), ApiError> {
    if PUBLIC_ROUTES.contains(&route) {
        return Ok(());
    }
    let required = required_role(method, route);
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match state.tokens.authorize(header, required) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            Ok(())
        }
        Err(AuthError::Unauthorized) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "send a valid token as Authorization: Bearer <token>",
        )),
        Err(AuthError::Forbidden { name }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!("token {name} may not do this: it needs the {required:?} role"),
        )),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> impl IntoResponse {
    answer::json(StatusCode::OK, &Health { status: "ok" })
}

/// The log is replayed and writable.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Health), (status = 503, response = Problem)))]
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
        answer::json(StatusCode::OK, &Health { status: "ready" })
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
