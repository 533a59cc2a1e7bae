//! Every error the service answers, in one shape:
//! `{"Status": "Error", "ExceptionType": "<kind>", "ExceptionMessage": "<why>"}`
//! (the shape of the seed's per-item errors), with the HTTP code of its
//! kind.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use grantwheel::requests::ApprovalError;
use grantwheel::{QueryError, RuleError};
use serde::Serialize;

/// The longest `ExceptionMessage`, in characters.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP code.
    pub status: StatusCode,
    /// `ExceptionType`: a stable word a client can branch on.
    pub kind: &'static str,
    /// `ExceptionMessage`: what was wrong, for people.
    pub message: String,
    /// Seconds to wait, for 429.
    pub retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// Always `Error`.
    #[serde(rename = "Status")]
    pub status: &'a str,
    /// The kind.
    #[serde(rename = "ExceptionType")]
    pub exception_type: &'a str,
    /// Why.
    #[serde(rename = "ExceptionMessage")]
    pub exception_message: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        // Messages quote the caller's text in part (`quoted`); this bounds
        // any that a lower layer (a parser's) let through whole.
        if let Some((end, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(end);
            message.push('…');
        }
        ApiError {
            status,
            kind,
            message,
            retry_after: None,
        }
    }

    /// 400: the body or a parameter is not as the API specifies.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidInput", message)
    }

    /// 401, the same answer for every credential problem.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the API call was made with invalid access credentials: check accessKey and secretKey",
        )
    }

    /// 404 for a path no endpoint serves.
    pub fn no_api() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "API could not be found: check the API signature",
        )
    }

    /// 404 for something the endpoint looked for and did not find.
    pub fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }

    /// 403: the caller may not do this (an approver deciding on their
    /// own share).
    pub fn forbidden(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, kind, message)
    }

    /// 409: the request is not in a state that allows this (decided
    /// already, or timed out).
    pub fn conflict(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, message)
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this API does not take that method: check the API signature",
        )
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the body is over the limit of {limit} bytes"),
        )
    }

    /// 429, with the seed's message (`what`: "API calls", or the batch
    /// calls limited apart).
    pub fn too_many(
        what: &str,
        max: usize,
        window_secs: u64,
        retry_after: std::time::Duration,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!("{what} exceeded the limit of {max} in {window_secs} second(s)"),
        );
        // Whole seconds, rounded up: a client that waits that long is admitted.
        let ms = retry_after.as_millis();
        e.retry_after = Some(u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1));
        e
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Failed", message)
    }

    /// 503: the store cannot be read or written now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: "Error",
            exception_type: self.kind,
            exception_message: &self.message,
        };
        let mut resp = (self.status, crate::json(&body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Store(e) => ApiError::unavailable(format!("the store cannot be read: {e}")),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Store(e) => {
                ApiError::unavailable(format!("the rule could not be written: {e}"))
            }
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::NotFound(id) => {
                ApiError::not_found("RequestNotFound", format!("`id`: no request `{id}`"))
            }
            ApprovalError::OwnShare { .. } => ApiError::forbidden("OwnShare", e.to_string()),
            ApprovalError::NotAwaiting { .. } => {
                ApiError::conflict("NotAwaitingApproval", e.to_string())
            }
            ApprovalError::TimedOut { .. } => ApiError::conflict("ApprovalTimedOut", e.to_string()),
            ApprovalError::Store(_) => ApiError::unavailable(e.to_string()),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}
