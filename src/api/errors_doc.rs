//! The text behind each problem `type` (`/problems/{code}`); docs/api/errors.md lists the same.

/// Every problem code the API answers with.
pub const CODES: &[&str] = &[
    "malformed_json",
    "unknown_field",
    "missing_field",
    "invalid_field_type",
    "invalid_customer_id",
    "unknown_currency",
    "no_order_lines",
    "too_many_order_lines",
    "invalid_sku",
    "invalid_quantity",
    "duplicate_sku",
    "invalid_card_token",
    "unsupported_media_type",
    "body_too_large",
    "length_required",
    "invalid_order_id",
    "order_not_found",
    "invalid_cursor",
    "invalid_query",
    "route_not_found",
    "method_not_allowed",
    "websocket_upgrade_required",
    "cors_forbidden",
    "deadline_exceeded",
    "unknown_problem_type",
    "invalid_product",
    "product_exists",
    "product_not_found",
    "stock_below_reserved",
    "invoice_not_found",
    "receipt_not_found",
    "invalid_email",
    "missing_token",
    "invalid_token",
    "insufficient_scope",
    "invalid_idempotency_key",
    "idempotency_key_reused",
    "idempotency_key_in_use",
    "rate_limited",
    "overloaded",
    "customer_mismatch",
    "unsupported_file_type",
    "invalid_file_name",
    "invalid_file_id",
    "file_not_found",
    "payment_not_found",
    "order_not_cancellable",
    "service_unavailable",
];

pub fn lookup(code: &str) -> Option<&'static str> {
    Some(match code {
        "malformed_json" => "The request body is not syntactically valid JSON.",
        "unknown_field" => "The body has a field the API does not define; fields are strict.",
        "missing_field" => "A required field is absent from the body.",
        "invalid_field_type" => {
            "A field has the wrong JSON type (for example a string where a list is expected)."
        }
        "invalid_customer_id" => {
            "customer_id must be 1-64 characters of letters, digits and ._:@-."
        }
        "unknown_currency" => "currency must be an accepted ISO 4217 code such as EUR or USD.",
        "no_order_lines" => "An order needs at least one line.",
        "too_many_order_lines" => "An order has at most 100 lines.",
        "invalid_sku" => "A line's sku must be 1-64 characters of letters, digits and ._-.",
        "invalid_quantity" => "A line's quantity must be a whole number from 1 to 1000.",
        "duplicate_sku" => "Each sku may appear on one line only; add the quantities instead.",
        "invalid_card_token" => {
            "card_token must be 1-64 characters of lowercase letters, digits and _ (test tokens: tok_visa, tok_decline, tok_insufficient_funds, tok_slow)."
        }
        "unsupported_media_type" => "Send request bodies with Content-Type: application/json.",
        "body_too_large" => "The body is larger than the configured limit (http.body_limit_bytes).",
        "length_required" => "Requests with a body must carry a Content-Length header.",
        "invalid_order_id" => "Order ids are UUIDs as returned by POST /v1/orders.",
        "order_not_found" => "No order has this id.",
        "invalid_cursor" => "Pass back the next_cursor value of a previous page unchanged.",
        "invalid_query" => "A query parameter is unknown or has an invalid value.",
        "route_not_found" => "No route matches this path.",
        "method_not_allowed" => {
            "The route exists but not with this HTTP method; the Allow header lists the methods it takes."
        }
        "overloaded" => {
            "This server has http.max_open_orders orders in progress (accepted, not yet confirmed or cancelled) and takes no more until some finish. Nothing was stored: retry after Retry-After seconds."
        }
        "deadline_exceeded" => {
            "The response did not start within http.request_timeout_ms. The request may still take effect: retry with the same Idempotency-Key."
        }
        "cors_forbidden" => {
            "A browser's cross-origin request from an origin, or with a method or header, that http.cors_allowed_origins does not allow."
        }
        "websocket_upgrade_required" => {
            "GET /v1/orders/{id}/events is a websocket: send the request with Connection: Upgrade and Upgrade: websocket."
        }
        "unknown_problem_type" => "There is no problem type with this code.",
        "invalid_product" => {
            "A product field is out of range: name 1-200 characters, unit_price_minor 0 to 10^12, an accepted currency, on_hand 0 to 10^9."
        }
        "product_exists" => {
            "A product with this sku exists; use PUT /v1/products/{sku} to change it."
        }
        "product_not_found" => "No product has this sku.",
        "stock_below_reserved" => "on_hand cannot go below the units currently reserved by orders.",
        "invoice_not_found" => {
            "The order has no invoice yet: the file service stores it shortly after the order is CONFIRMED; a cancelled order never gets one."
        }
        "receipt_not_found" => {
            "The order has no receipt yet: the file service stores one shortly after its card payment is authorized; a declined payment gets none."
        }
        "invalid_email" => {
            "email must look like name@example.com: printable ASCII, one @, a dotted domain, at most 254 characters."
        }
        "missing_token" => {
            "Every /v1 route needs an Authorization: Bearer <token> header with a JWT from the configured issuer (locally: orderflow token)."
        }
        "invalid_token" => {
            "The bearer token was refused: expired, not yet valid, from another issuer or audience, signed by an unknown key, badly signed, or not RS256/ES256. The detail and the WWW-Authenticate header say which."
        }
        "insufficient_scope" => {
            "The token is valid but lacks the scope this route needs (orders:read, orders:write, orders:admin, catalog:read, catalog:admin, files:read, files:write)."
        }
        "invalid_idempotency_key" => {
            "Idempotency-Key must be 1-255 visible ASCII characters (a UUID is a good choice)."
        }
        "idempotency_key_reused" => {
            "This Idempotency-Key was first used with a different request (body, or file name, type and bytes); use a new key for a new request."
        }
        "idempotency_key_in_use" => {
            "The first request with this Idempotency-Key has not finished; retry after Retry-After and get its response."
        }
        "rate_limited" => {
            "Too many requests from this client IP or token subject: wait Retry-After seconds. Limits are per IP over all routes and per subject and route (rate_limit in the configuration), shared by every instance through Redis."
        }
        "customer_mismatch" => {
            "An order is placed for the token's subject: customer_id must equal the token's sub unless the token has orders:admin."
        }
        "unsupported_file_type" => {
            "Uploads must be PDF, PNG, JPEG or plain text, declared in Content-Type and confirmed by the bytes themselves."
        }
        "invalid_file_name" => {
            "name must be 1-255 characters without slashes or control characters."
        }
        "invalid_file_id" => "A file id is a UUID.",
        "file_not_found" => "No file with this id belongs to the caller.",
        "payment_not_found" => {
            "The order has no payment yet: it is authorized after its stock is reserved."
        }
        "order_not_cancellable" => {
            "The order is already CONFIRMED or CANCELLED; only pending orders can be cancelled."
        }
        "service_unavailable" => "A dependency is unavailable; retry later. Nothing was stored.",
        _ => return None,
    })
}
