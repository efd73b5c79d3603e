//! Extractors that refuse bad input with problem+json instead of axum's plain-text rejections:
//! 415 for a body that is not JSON, 413 above the body limit, 400 for anything unparsable.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::domain::limits::REQUEST_BODY_MAX_BYTES;

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "Payload too large",
        format!("request bodies are limited to {REQUEST_BODY_MAX_BYTES} bytes"),
    )
}

/// `timeout`: how long the body may take to arrive (the server's request timeout).
async fn read_body(
    req: Request,
    timeout: std::time::Duration,
) -> Result<(bool, bytes::Bytes), ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > REQUEST_BODY_MAX_BYTES as u64) {
        return Err(too_large());
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(is_json_media_type);
    let bytes = tokio::time::timeout(
        timeout,
        axum::body::to_bytes(req.into_body(), REQUEST_BODY_MAX_BYTES),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request timeout",
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )
    })?
    .map_err(|_| too_large())?;
    if !bytes.is_empty() && is_json != Some(true) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send the body as Content-Type: application/json",
        ));
    }
    Ok((!bytes.is_empty(), bytes))
}

/// `application/json` or `application/<anything>+json`, in any case, with any parameters.
/// Compared in place: lower-casing a copy was an allocation per request.
fn is_json_media_type(value: &str) -> bool {
    let mime = value.split(';').next().unwrap_or("").trim().as_bytes();
    let starts_with = |prefix: &[u8]| {
        mime.len() >= prefix.len() && mime[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let ends_with = |suffix: &[u8]| {
        mime.len() >= suffix.len() && mime[mime.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    mime.eq_ignore_ascii_case(b"application/json")
        || (starts_with(b"application/") && ends_with(b"+json"))
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// A required JSON body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (present, bytes) = read_body(req, state.request_timeout).await?;
        if !present {
            return Err(ApiError::invalid("a JSON body is required"));
        }
        parse(&bytes).map(Json)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (present, bytes) = read_body(req, state.request_timeout).await?;
        if !present {
            return Ok(OptionalJson(T::default()));
        }
        parse(&bytes).map(OptionalJson)
    }
}

/// Query string parameters, refusing unknown or malformed ones with 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
    }
}

/// Path parameters as text, so the handler can validate them with a clear message.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))
    }
}

pub fn parse_uuid(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::invalid(format!("{text:?} is not a UUID")))
}

/// `If-Match: "7"` → Some(7). `*` means "any current version" → None.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid("If-Match is not text"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text);
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("If-Match must be an ETag such as \"3\""))
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn json_media_types_in_any_case_with_parameters() {
        for yes in [
            "application/json",
            "Application/JSON",
            " application/json ; charset=utf-8",
            "application/merge-patch+json",
            "APPLICATION/VND.STOCKD+JSON; q=1",
        ] {
            assert!(is_json_media_type(yes), "{yes:?} is JSON");
        }
        for no in [
            "",
            "text/plain",
            "application/jsonx",
            "text/json",
            "application/xml",
            "json",
            "application/json-seq",
        ] {
            assert!(!is_json_media_type(no), "{no:?} is not JSON");
        }
    }
}
