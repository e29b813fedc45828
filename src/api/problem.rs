//! One error → HTTP map: every API error has a stable code, a status and a documentation link,
//! rendered as RFC 9457 `application/problem+json`. Each error is logged once, here.

use serde::Serialize;
use warp::http::StatusCode;
use warp::reject::Reject;
use warp::{Rejection, Reply};

use crate::domain::order::OrderValidationError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    MissingField(String),
    #[error("{0}")]
    InvalidFieldType(String),
    #[error(transparent)]
    Validation(#[from] OrderValidationError),
    #[error("requests with a body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("a Content-Length header is required")]
    LengthRequired,
    #[error("{0:?} is not a valid order id (a UUID)")]
    InvalidOrderId(String),
    #[error("no order with id {0}")]
    OrderNotFound(String),
    #[error("the cursor is not one this API returned")]
    InvalidCursor,
    #[error("{0}")]
    InvalidQuery(String),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("this route is a websocket: send an Upgrade: websocket request")]
    UpgradeRequired,
    #[error("this cross-origin request is not allowed (http.cors_allowed_origins)")]
    CorsForbidden,
    #[error(
        "the request took longer than the server's deadline; nothing is known to have failed, retry with the same Idempotency-Key"
    )]
    DeadlineExceeded,
    #[error("no problem type {0:?}")]
    UnknownProblem(String),
    #[error("{0}")]
    InvalidProduct(String),
    #[error("a product with sku {0} exists")]
    ProductExists(String),
    #[error("no product with sku {0}")]
    ProductNotFound(String),
    #[error("{0}")]
    StockBelowReserved(String),
    #[error("order {0} has no payment yet")]
    PaymentNotFound(String),
    #[error("order {0} has no invoice yet")]
    InvoiceNotFound(String),
    #[error("order {0} has no receipt yet")]
    ReceiptNotFound(String),
    #[error("an Authorization: Bearer <token> header is required")]
    MissingToken,
    #[error("the bearer token is invalid: {0}")]
    InvalidToken(&'static str),
    #[error("the token lacks the scope {0}")]
    InsufficientScope(&'static str),
    #[error("{0}")]
    CustomerMismatch(String),
    #[error("the Idempotency-Key header must be 1-255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    #[error("the first request with this Idempotency-Key is still running; retry shortly")]
    IdempotencyKeyInUse,
    /// Refused by a limit of `burst` requests per `window_secs`; one more fits after
    /// `retry_after`.
    #[error("too many requests; retry after {} ms", retry_after.as_millis())]
    RateLimited {
        retry_after: std::time::Duration,
        burst: u32,
        window_secs: u64,
    },
    #[error("{0}")]
    UnsupportedFileType(String),
    #[error("name must be 1-255 characters without slashes or control characters")]
    InvalidFileName,
    #[error("{0:?} is not a file id (a UUID)")]
    InvalidFileId(String),
    #[error("no file {0}")]
    FileNotFound(String),
    #[error("{0}")]
    OrderNotCancellable(String),
    /// The intake is at its bound of open orders (`http.max_open_orders`).
    #[error("{0} orders are still in progress, the most this server takes at once; retry shortly")]
    Overloaded(usize),
    /// A dependency failed; the detail is logged, never shown.
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
}

impl Reject for ApiError {}

impl ApiError {
    /// The stable machine-readable code (also the last segment of the `type` URI).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::UnknownField(_) => "unknown_field",
            ApiError::MissingField(_) => "missing_field",
            ApiError::InvalidFieldType(_) => "invalid_field_type",
            ApiError::Validation(v) => match v {
                OrderValidationError::InvalidCustomerId => "invalid_customer_id",
                OrderValidationError::UnknownCurrency(_) => "unknown_currency",
                OrderValidationError::NoLines => "no_order_lines",
                OrderValidationError::TooManyLines(_) => "too_many_order_lines",
                OrderValidationError::InvalidSku { .. } => "invalid_sku",
                OrderValidationError::InvalidQuantity { .. } => "invalid_quantity",
                OrderValidationError::DuplicateSku { .. } => "duplicate_sku",
                OrderValidationError::InvalidCardToken => "invalid_card_token",
                OrderValidationError::InvalidEmail => "invalid_email",
            },
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::LengthRequired => "length_required",
            ApiError::InvalidOrderId(_) => "invalid_order_id",
            ApiError::OrderNotFound(_) => "order_not_found",
            ApiError::InvalidCursor => "invalid_cursor",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UpgradeRequired => "websocket_upgrade_required",
            ApiError::CorsForbidden => "cors_forbidden",
            ApiError::DeadlineExceeded => "deadline_exceeded",
            ApiError::UnknownProblem(_) => "unknown_problem_type",
            ApiError::InvalidProduct(_) => "invalid_product",
            ApiError::ProductExists(_) => "product_exists",
            ApiError::ProductNotFound(_) => "product_not_found",
            ApiError::StockBelowReserved(_) => "stock_below_reserved",
            ApiError::PaymentNotFound(_) => "payment_not_found",
            ApiError::InvoiceNotFound(_) => "invoice_not_found",
            ApiError::ReceiptNotFound(_) => "receipt_not_found",
            ApiError::MissingToken => "missing_token",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::InsufficientScope(_) => "insufficient_scope",
            ApiError::CustomerMismatch(_) => "customer_mismatch",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::InvalidIdempotencyKey => "invalid_idempotency_key",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInUse => "idempotency_key_in_use",
            ApiError::UnsupportedFileType(_) => "unsupported_file_type",
            ApiError::InvalidFileName => "invalid_file_name",
            ApiError::InvalidFileId(_) => "invalid_file_id",
            ApiError::FileNotFound(_) => "file_not_found",
            ApiError::OrderNotCancellable(_) => "order_not_cancellable",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable(_) => "service_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::UnknownField(_)
            | ApiError::MissingField(_)
            | ApiError::InvalidFieldType(_)
            | ApiError::InvalidOrderId(_)
            | ApiError::InvalidCursor
            | ApiError::InvalidFileId(_)
            | ApiError::InvalidIdempotencyKey
            | ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdempotencyKeyInUse => StatusCode::CONFLICT,
            ApiError::Validation(_) | ApiError::InvalidProduct(_) | ApiError::InvalidFileName => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::ProductExists(_)
            | ApiError::StockBelowReserved(_)
            | ApiError::OrderNotCancellable(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedFileType(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ApiError::OrderNotFound(_)
            | ApiError::ProductNotFound(_)
            | ApiError::PaymentNotFound(_)
            | ApiError::InvoiceNotFound(_)
            | ApiError::ReceiptNotFound(_)
            | ApiError::FileNotFound(_)
            | ApiError::RouteNotFound
            | ApiError::UnknownProblem(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::CorsForbidden => StatusCode::FORBIDDEN,
            ApiError::DeadlineExceeded | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MissingToken | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientScope(_) | ApiError::CustomerMismatch(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn title(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::UNPROCESSABLE_ENTITY => "Invalid request",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
            s => s.canonical_reason().unwrap_or("Error"),
        }
    }

    /// Classifies a serde_json error from a request body.
    pub fn from_json(e: &serde_json::Error) -> Self {
        let msg = e.to_string();
        match e.classify() {
            serde_json::error::Category::Data if msg.starts_with("unknown field") => {
                ApiError::UnknownField(msg)
            }
            serde_json::error::Category::Data if msg.starts_with("missing field") => {
                ApiError::MissingField(msg)
            }
            serde_json::error::Category::Data => ApiError::InvalidFieldType(msg),
            _ => ApiError::MalformedJson(msg),
        }
    }
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"type": "/problems/invalid_quantity", "title": "Invalid request",
    "status": 422, "detail": "line 0: quantity must be a whole number from 1 to 1000",
    "code": "invalid_quantity"}))]
pub struct Problem {
    /// `/problems/{code}`, which describes the code.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable and machine-readable; every code is listed in `x-problem-codes` of this document.
    pub code: &'static str,
}

impl Problem {
    pub fn from_error(e: &ApiError) -> Self {
        Self {
            kind: format!("/problems/{}", e.code()),
            title: e.title(),
            status: e.status().as_u16(),
            detail: e.to_string(),
            code: e.code(),
        }
    }
}

pub fn reply(e: &ApiError) -> warp::reply::Response {
    let body = Problem::from_error(e);
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = warp::reply::Response::new(json.into());
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// Turns every rejection into a problem+json response, logging it once.
pub async fn recover(
    rejection: Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::RouteNotFound
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::BodyTooLarge(0)
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidQuery(e.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection
        .find::<warp::filters::cors::CorsForbidden>()
        .is_some()
    {
        ApiError::CorsForbidden
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::InvalidQuery(e.to_string())
    } else {
        ApiError::Unavailable(format!("unhandled rejection: {rejection:?}"))
    };
    match &error {
        ApiError::Unavailable(internal) => {
            tracing::error!(code = error.code(), %internal, "request failed")
        }
        _ => tracing::info!(code = error.code(), detail = %error, "request rejected"),
    }
    if let ApiError::Validation(_)
    | ApiError::MalformedJson(_)
    | ApiError::UnknownField(_)
    | ApiError::Overloaded(_) = &error
    {
        metrics::counter!(crate::metrics::ORDERS_REJECTED, "code" => error.code()).increment(1);
    }
    let mut resp = reply(&error);
    if let ApiError::RateLimited {
        retry_after,
        burst,
        window_secs,
    } = &error
    {
        rate_limit_headers(resp.headers_mut(), *retry_after, *burst, *window_secs);
    }
    if let ApiError::UpgradeRequired = &error {
        resp.headers_mut().insert(
            warp::http::header::UPGRADE,
            warp::http::HeaderValue::from_static("websocket"),
        );
    }
    if let ApiError::IdempotencyKeyInUse | ApiError::Overloaded(_) = &error {
        resp.headers_mut().insert(
            warp::http::header::RETRY_AFTER,
            warp::http::HeaderValue::from_static("1"),
        );
    }
    if let Some(challenge) = challenge(&error) {
        // RFC 6750 §3: how to authenticate, and why the token was refused.
        if let Ok(value) = warp::http::HeaderValue::from_str(&challenge) {
            resp.headers_mut()
                .insert(warp::http::header::WWW_AUTHENTICATE, value);
        }
    }
    if let ApiError::BodyTooLarge(_) | ApiError::LengthRequired = &error {
        // The body was refused unread, so the connection cannot carry another request: say
        // so, or a client may reuse it and see its next request fail.
        resp.headers_mut().insert(
            warp::http::header::CONNECTION,
            warp::http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

/// `Retry-After` (whole seconds, rounded up, RFC 9110) and the RateLimit header fields
/// (draft-ietf-httpapi-ratelimit-headers): the limit's burst, nothing remaining, seconds until
/// one more request fits, and the policy (`burst` per window).
fn rate_limit_headers(
    headers: &mut warp::http::HeaderMap,
    retry_after: std::time::Duration,
    burst: u32,
    window_secs: u64,
) {
    let secs = retry_after.as_millis().div_ceil(1_000).max(1);
    for (name, value) in [
        ("retry-after", secs.to_string()),
        ("ratelimit-limit", burst.to_string()),
        ("ratelimit-remaining", "0".to_owned()),
        ("ratelimit-reset", secs.to_string()),
        ("ratelimit-policy", format!("{burst};w={window_secs}")),
    ] {
        if let Ok(v) = warp::http::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// The `WWW-Authenticate` challenge of an authentication or scope error.
fn challenge(error: &ApiError) -> Option<String> {
    match error {
        ApiError::MissingToken => Some(r#"Bearer realm="orderflow""#.into()),
        ApiError::InvalidToken(reason) => Some(format!(
            r#"Bearer realm="orderflow", error="invalid_token", error_description="{reason}""#
        )),
        ApiError::InsufficientScope(scope) => Some(format!(
            r#"Bearer realm="orderflow", error="insufficient_scope", scope="{scope}""#
        )),
        _ => None,
    }
}

/// `GET /problems/{code}`: the documentation behind each problem `type`.
pub fn describe(code: &str) -> Result<impl Reply + use<>, Rejection> {
    let text = crate::api::errors_doc::lookup(code)
        .ok_or_else(|| warp::reject::custom(ApiError::UnknownProblem(code.to_owned())))?;
    Ok(warp::reply::json(
        &serde_json::json!({ "code": code, "description": text }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_classified() {
        let unknown = serde_json::from_str::<crate::domain::order::PlaceOrder>(
            r#"{"customer_id":"c","currency":"EUR","lines":[],"x":1}"#,
        );
        let e = unknown.err().map(|e| ApiError::from_json(&e));
        assert_eq!(e.map(|e| e.code()), Some("unknown_field"));
        let bad = serde_json::from_str::<crate::domain::order::PlaceOrder>("{");
        assert_eq!(
            bad.err().map(|e| ApiError::from_json(&e).code()),
            Some("malformed_json")
        );
        let missing =
            serde_json::from_str::<crate::domain::order::PlaceOrder>(r#"{"currency":"EUR"}"#);
        assert_eq!(
            missing.err().map(|e| ApiError::from_json(&e).code()),
            Some("missing_field")
        );
    }

    #[test]
    fn unavailable_hides_its_detail() {
        let p = Problem::from_error(&ApiError::Unavailable("password=hunter2".into()));
        assert!(!p.detail.contains("hunter2"));
        assert_eq!(p.status, 503);
    }

    #[test]
    fn every_code_is_documented() {
        let samples = [
            ApiError::MalformedJson(String::new()),
            ApiError::UnknownField(String::new()),
            ApiError::MissingField(String::new()),
            ApiError::InvalidFieldType(String::new()),
            ApiError::Validation(OrderValidationError::NoLines),
            ApiError::Validation(OrderValidationError::InvalidCardToken),
            ApiError::Validation(OrderValidationError::InvalidEmail),
            ApiError::Validation(OrderValidationError::InvalidCustomerId),
            ApiError::Validation(OrderValidationError::UnknownCurrency(String::new())),
            ApiError::Validation(OrderValidationError::TooManyLines(0)),
            ApiError::Validation(OrderValidationError::InvalidSku { line: 0 }),
            ApiError::Validation(OrderValidationError::InvalidQuantity { line: 0 }),
            ApiError::Validation(OrderValidationError::DuplicateSku {
                line: 0,
                sku: String::new(),
            }),
            ApiError::UnsupportedMediaType,
            ApiError::BodyTooLarge(0),
            ApiError::LengthRequired,
            ApiError::InvalidOrderId(String::new()),
            ApiError::OrderNotFound(String::new()),
            ApiError::InvalidCursor,
            ApiError::InvalidQuery(String::new()),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::UpgradeRequired,
            ApiError::CorsForbidden,
            ApiError::DeadlineExceeded,
            ApiError::UnknownProblem(String::new()),
            ApiError::Unavailable(String::new()),
            ApiError::InvalidProduct(String::new()),
            ApiError::ProductExists(String::new()),
            ApiError::ProductNotFound(String::new()),
            ApiError::StockBelowReserved(String::new()),
            ApiError::PaymentNotFound(String::new()),
            ApiError::InvoiceNotFound(String::new()),
            ApiError::ReceiptNotFound(String::new()),
            ApiError::MissingToken,
            ApiError::InvalidToken(""),
            ApiError::InsufficientScope(""),
            ApiError::CustomerMismatch(String::new()),
            ApiError::InvalidIdempotencyKey,
            ApiError::IdempotencyKeyReused,
            ApiError::IdempotencyKeyInUse,
            ApiError::RateLimited {
                retry_after: std::time::Duration::ZERO,
                burst: 1,
                window_secs: 1,
            },
            ApiError::UnsupportedFileType(String::new()),
            ApiError::InvalidFileName,
            ApiError::InvalidFileId(String::new()),
            ApiError::FileNotFound(String::new()),
            ApiError::OrderNotCancellable(String::new()),
            ApiError::Overloaded(0),
        ];
        for e in samples {
            assert!(
                crate::api::errors_doc::lookup(e.code()).is_some(),
                "{} undocumented",
                e.code()
            );
            assert!(
                crate::api::errors_doc::CODES.contains(&e.code()),
                "{} missing from CODES",
                e.code()
            );
        }
        for code in crate::api::errors_doc::CODES {
            assert!(crate::api::errors_doc::lookup(code).is_some(), "{code}");
        }
    }
}
