//! RFC 9457 problem details with a stable `code`, and the mapping from engine errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::EngineError;
use crate::ledger::ItemReport;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub items: Option<Vec<ItemReport>>,
}

/// RFC 9457 problem details, with a stable machine-readable `code`.
#[derive(Serialize, utoipa::ToSchema, utoipa::ToResponse)]
#[response(
    description = "Problem details (application/problem+json)",
    content_type = "application/problem+json"
)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "urn:stockd:problem:insufficient_stock")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// invalid_request, unauthorized, forbidden, not_found, method_not_allowed, conflict,
    /// insufficient_stock, reservation_expired, invalid_transition, id_reused,
    /// precondition_failed, request_timeout, payload_too_large, unsupported_media_type,
    /// overloaded, unavailable.
    pub code: String,
    /// For stock refusals: one entry per requested item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemReport>>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            title,
            detail: detail.into(),
            items: None,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }

    /// Sent on a connection accepted past `--max-connections`, which is then closed.
    pub fn too_many_connections() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "the server holds as many connections as it allows; retry after the indicated delay, \
             preferably on a connection kept alive",
        )
    }

    pub fn overloaded() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "the server is at capacity; retry after the indicated delay",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let detail = e.to_string();
        match e {
            EngineError::Invalid(_) => ApiError::invalid(detail),
            EngineError::NotFound(_) => ApiError::not_found(detail),
            EngineError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            EngineError::InsufficientStock(items) => ApiError {
                items: Some(items),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "insufficient_stock",
                    "Insufficient stock",
                    detail,
                )
            },
            EngineError::ReservationExpired(_) => ApiError::new(
                StatusCode::CONFLICT,
                "reservation_expired",
                "Reservation expired",
                detail,
            ),
            EngineError::InvalidTransition(_) => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_transition",
                "Invalid transition",
                detail,
            ),
            EngineError::IdReused => ApiError::new(
                StatusCode::CONFLICT,
                "id_reused",
                "Operation id reused",
                detail,
            ),
            EngineError::PreconditionFailed(_) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "Precondition failed",
                detail,
            ),
            EngineError::Overloaded => ApiError::overloaded(),
            EngineError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Unavailable",
                detail,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("urn:stockd:problem:{}", self.code),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_string(),
            items: self.items,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // A 401 says how to authenticate (RFC 9110 section 11.6.1).
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The body was not (fully) read: the connection cannot carry another request, so say
        // so rather than let a client reuse it and fail.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE
            || self.status == StatusCode::REQUEST_TIMEOUT
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
