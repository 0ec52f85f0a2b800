//! The API's error shape and the mapping from library errors to statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::model::RefusalKind;
use crate::store::StoreError;

/// `{"error": {...}}`: every error the API answers.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code, one sentence, and for bad input the fields at fault.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `read_only`, `not_found`, `stale`, `conflict`,
    /// `too_large`, `uri_too_long`, `invalid_transition`, `internal`, `unavailable`.
    pub code: String,
    pub message: String,
    /// Bad input (every 400): the field paths (`item_ids[2]`, `line 3`, or `body`, `query`,
    /// `path` for the part as a whole) and what is wrong with each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// One bad field of a request.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// An error answer: its status and body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: ErrorDetail {
                    code: code.to_string(),
                    message: message.into(),
                    details: Vec::new(),
                },
            },
        }
    }

    /// 400 with `details` naming each field at fault. Every 400 has details: with none given,
    /// the whole body is named.
    pub fn bad_request(message: impl Into<String>, mut details: Vec<FieldError>) -> ApiError {
        let message = message.into();
        if details.is_empty() {
            details.push(FieldError {
                path: "body".into(),
                message: message.clone(),
            });
        }
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
        e.body.error.details = details;
        e
    }

    /// 400 about one part of the request as a whole: `body`, `query`, `path`, or the field
    /// that is missing.
    pub fn bad_input(part: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::bad_request(
            message.clone(),
            vec![FieldError {
                path: part.to_string(),
                message,
            }],
        )
    }

    /// 414: the request line is longer than the API reads.
    pub fn uri_too_long(len: usize, limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is {len} bytes, longer than the limit of {limit} bytes"),
        )
    }

    /// A bad field: 400 naming it.
    pub fn field(path: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::bad_request(
            format!("`{path}`: {message}"),
            vec![FieldError {
                path: path.to_string(),
                message,
            }],
        )
    }

    /// A refusal of the store, by its kind (never by its words).
    pub fn refusal(kind: RefusalKind, message: impl Into<String>) -> ApiError {
        let status = match kind {
            RefusalKind::NotFound => StatusCode::NOT_FOUND,
            RefusalKind::Stale => StatusCode::CONFLICT,
            RefusalKind::InvalidTransition => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, kind.as_str(), message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Stale(_) => (StatusCode::CONFLICT, "stale"),
            StoreError::Refused(_) => (StatusCode::CONFLICT, "conflict"),
            // The store's "invalid" is an action that this object cannot take (test or pause
            // a stage that is not a webhook stage, assign into an unreachable place).
            StoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_transition"),
            StoreError::ReadOnly { .. } => (StatusCode::FORBIDDEN, "read_only"),
            StoreError::WriterGone => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreError::Database(_) | StoreError::Open { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut r = (self.status, axum::Json(self.body)).into_response();
        if unauthorized {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}
