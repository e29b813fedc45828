//! `/v1/products`: the inventory service's catalogue — create, replace, read and list
//! products with their stock (`on_hand`, `reserved`, `available`).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::guard::allow;
use super::problem::{ApiError, Problem};
use super::{ApiContext, cached_json, json_bytes, with_ctx};
use crate::auth::scopes;
use crate::domain::ids::Sku;
use crate::domain::money::Currency;
use crate::infra::cache;
use crate::infra::db::inventory::{self as repo, CatalogError, Product, ProductFields};

const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
const MAX_ON_HAND: i64 = 1_000_000_000;

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let limit = ctx.config.http.body_limit_bytes;
    let body = warp::header::optional::<String>("content-type")
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes());
    let create = warp::path!("v1" / "products")
        .and(warp::post())
        .and(allow(&ctx, scopes::CATALOG_ADMIN))
        .and(with_ctx(ctx.clone()))
        .and(body)
        .and_then(create);
    let replace = warp::path!("v1" / "products" / String)
        .and(warp::put())
        .and(allow(&ctx, scopes::CATALOG_ADMIN))
        .and(with_ctx(ctx.clone()))
        .and(body)
        .and_then(replace);
    let get = warp::path!("v1" / "products" / String)
        .and(warp::get())
        .and(allow(&ctx, scopes::CATALOG_READ))
        .and(with_ctx(ctx.clone()))
        .and_then(get);
    let list = warp::path!("v1" / "products")
        .and(warp::get())
        .and(allow(&ctx, scopes::CATALOG_READ))
        .and(with_ctx(ctx))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(list);
    create
        .or(replace)
        .unify()
        .or(get)
        .unify()
        .or(list)
        .unify()
        .boxed()
}

/// The body of `POST /v1/products`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"sku": "BOOK-RUST", "name": "The Book", "unit_price_minor": 3990,
    "currency": "EUR", "on_hand": 10}))]
pub struct CreateProduct {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    sku: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
    /// The price in minor units of the currency (cents).
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    unit_price_minor: i64,
    currency: String,
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    on_hand: i64,
}

impl CreateProduct {
    fn into_parts(self) -> (String, ProductBody) {
        let body = ProductBody {
            name: self.name,
            unit_price_minor: self.unit_price_minor,
            currency: self.currency,
            on_hand: self.on_hand,
        };
        (self.sku, body)
    }
}

/// A whole number ([`crate::domain::whole_number`]).
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    crate::domain::whole_number(&n)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number")))
}

/// A product's writable fields (the body of `PUT /v1/products/{sku}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    name: String,
    /// The price in minor units of the currency (cents).
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    unit_price_minor: i64,
    currency: String,
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    on_hand: i64,
}

fn reject(e: ApiError) -> Rejection {
    warp::reject::custom(e)
}

fn parse_body<T: serde::de::DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, Rejection> {
    let is_json = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(reject(ApiError::UnsupportedMediaType));
    }
    serde_json::from_slice(body).map_err(|e| reject(ApiError::from_json(&e)))
}

fn parse_sku(sku: &str) -> Result<Sku, Rejection> {
    Sku::parse(sku).ok_or_else(|| {
        reject(ApiError::InvalidProduct(format!(
            "sku {sku:?} must be 1-{} characters of letters, digits and ._-",
            Sku::MAX_LEN
        )))
    })
}

/// Validated fields, borrowed from the request.
fn validate(body: &ProductBody) -> Result<ProductFields<'_>, Rejection> {
    let bad = |m: String| reject(ApiError::InvalidProduct(m));
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(bad(
            "name must be 1-200 characters without control characters".into(),
        ));
    }
    if !(0..=MAX_PRICE_MINOR).contains(&body.unit_price_minor) {
        return Err(bad(format!(
            "unit_price_minor must be from 0 to {MAX_PRICE_MINOR}"
        )));
    }
    // Parsing accepts exact codes only, so the request's string is the canonical code.
    Currency::parse(&body.currency).ok_or_else(|| {
        bad(format!(
            "currency {:?} is not an accepted ISO 4217 code",
            body.currency
        ))
    })?;
    if !(0..=MAX_ON_HAND).contains(&body.on_hand) {
        return Err(bad(format!("on_hand must be from 0 to {MAX_ON_HAND}")));
    }
    Ok(ProductFields {
        name,
        unit_price_minor: body.unit_price_minor,
        currency: &body.currency,
        on_hand: i32::try_from(body.on_hand).unwrap_or(i32::MAX),
    })
}

fn catalog_error(e: CatalogError) -> Rejection {
    match e {
        CatalogError::Exists(sku) => reject(ApiError::ProductExists(sku)),
        e @ CatalogError::BelowReserved { .. } => {
            reject(ApiError::StockBelowReserved(e.to_string()))
        }
        CatalogError::Db(e) => reject(ApiError::Unavailable(e.to_string())),
    }
}

/// Add a product to the catalogue.
#[utoipa::path(post, path = "/v1/products", tag = "catalogue", request_body = CreateProduct,
    responses(
        (status = 201, description = "Created", body = Product, headers(("Location" = String, description = "/v1/products/{sku}"))),
        (status = 400, description = "malformed_json, unknown_field, missing_field, invalid_field_type", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "product_exists", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_media_type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_product", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["catalog:admin"])))]
pub(crate) async fn create(
    ctx: ApiContext,
    content_type: Option<String>,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    let request: CreateProduct = parse_body(content_type.as_deref(), &body)?;
    let (sku, body) = request.into_parts();
    let sku = parse_sku(&sku)?;
    let fields = validate(&body)?;
    let product = repo::create_product(&ctx.pool, sku.as_str(), &fields)
        .await
        .map_err(catalog_error)?;
    invalidate_product(&ctx, &product.sku).await;
    tracing::info!(sku = %product.sku, on_hand = product.on_hand, "product created");
    let reply = warp::reply::with_status(warp::reply::json(&product), StatusCode::CREATED);
    Ok(
        warp::reply::with_header(reply, "location", format!("/v1/products/{}", product.sku))
            .into_response(),
    )
}

/// Replace a product's name, price and stock on hand.
#[utoipa::path(put, path = "/v1/products/{sku}", tag = "catalogue", request_body = ProductBody,
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The product's sku")),
    responses(
        (status = 200, description = "Updated", body = Product),
        (status = 400, description = "malformed_json, unknown_field, missing_field, invalid_field_type", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "product_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "stock_below_reserved", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "unsupported_media_type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_product", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["catalog:admin"])))]
pub(crate) async fn replace(
    sku: String,
    ctx: ApiContext,
    content_type: Option<String>,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    let sku = parse_sku(&sku)?;
    let request: ProductBody = parse_body(content_type.as_deref(), &body)?;
    let fields = validate(&request)?;
    let updated = repo::update_product(&ctx.pool, sku.as_str(), &fields)
        .await
        .map_err(catalog_error)?;
    // Before answering, so that the caller's next read (on any instance) sees the change;
    // the trigger's notification invalidates it again a moment later.
    invalidate_product(&ctx, sku.as_str()).await;
    match updated {
        Some(product) => {
            tracing::info!(sku = %product.sku, on_hand = product.on_hand, "product updated");
            Ok(warp::reply::json(&product).into_response())
        }
        None => Err(reject(ApiError::ProductNotFound(sku.to_string()))),
    }
}

/// Drops the product's cache entry and the listing pages (a failure is logged: the trigger's
/// notification retries it).
async fn invalidate_product(ctx: &ApiContext, sku: &str) {
    if let Some(cache) = &ctx.cache {
        let hashes = [cache::product_key(sku), cache::PRODUCT_PAGES.to_owned()];
        if let Err(e) = cache.invalidate(&hashes).await {
            tracing::warn!(error = %e, sku, "cache invalidation failed");
        }
    }
}

/// One product with its stock (from the read cache when present).
#[utoipa::path(get, path = "/v1/products/{sku}", tag = "catalogue",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The product's sku")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "product_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_product (a malformed sku)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["catalog:read"])))]
pub(crate) async fn get(sku: String, ctx: ApiContext) -> Result<warp::reply::Response, Rejection> {
    let sku = parse_sku(&sku)?;
    let body = cached_json(
        &ctx,
        "product",
        &cache::product_key(sku.as_str()),
        "json",
        || async {
            let product = repo::get_product(&ctx.pool, sku.as_str())
                .await
                .map_err(|e| reject(ApiError::Unavailable(e.to_string())))?;
            product
                .map(|p| {
                    serde_json::to_vec(&p).map_err(|e| reject(ApiError::Unavailable(e.to_string())))
                })
                .transpose()
        },
    )
    .await?;
    match body {
        Some(body) => Ok(json_bytes(body)),
        None => Err(reject(ApiError::ProductNotFound(sku.to_string()))),
    }
}

/// A page of the catalogue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    items: Vec<Product>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Cursors: a version tag and the hex of the last sku of the page.
fn encode_cursor(sku: &str) -> String {
    let mut s = String::from("p1");
    for b in sku.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let hex = cursor.strip_prefix("p1").ok_or(ApiError::InvalidCursor)?;
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * Sku::MAX_LEN {
        return Err(ApiError::InvalidCursor);
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| ApiError::InvalidCursor)?;
    let sku = String::from_utf8(bytes).map_err(|_| ApiError::InvalidCursor)?;
    Sku::parse(&sku)
        .map(|s| s.to_string())
        .ok_or(ApiError::InvalidCursor)
}

/// The catalogue in sku order.
#[utoipa::path(get, path = "/v1/products", tag = "catalogue",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, at most http.max_page_size (500 by default)"),
        ("cursor" = Option<String>, Query, pattern = "^p1(2[de]|3[0-9]|4[1-9a-f]|5[0-9af]|6[1-9a-f]|7[0-9a]){1,64}$", description = "next_cursor of the previous page (an sku, hex-encoded)"),
    ),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "invalid_query, invalid_cursor", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["catalog:read"])))]
pub(crate) async fn list(
    ctx: ApiContext,
    query: HashMap<String, String>,
) -> Result<warp::reply::Response, Rejection> {
    let http = &ctx.config.http;
    let mut limit = http.default_page_size;
    let mut after = None;
    for (key, value) in &query {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=http.max_page_size).contains(l))
                    .ok_or_else(|| {
                        reject(ApiError::InvalidQuery(format!(
                            "limit must be a number from 1 to {}",
                            http.max_page_size
                        )))
                    })?;
            }
            "cursor" => after = Some(decode_cursor(value).map_err(reject)?),
            other => {
                return Err(reject(ApiError::InvalidQuery(format!(
                    "unknown query parameter {other:?}; expected limit, cursor"
                ))));
            }
        }
    }
    let page = format!(
        "limit={limit}&after={}",
        after.as_deref().map(encode_cursor).unwrap_or_default()
    );
    let body = cached_json(&ctx, "products", cache::PRODUCT_PAGES, &page, || async {
        let items = repo::list_products(&ctx.pool, after.as_deref(), limit)
            .await
            .map_err(|e| reject(ApiError::Unavailable(e.to_string())))?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| items.last().map(|p| encode_cursor(&p.sku)))
            .flatten();
        serde_json::to_vec(&ProductPage { items, next_cursor })
            .map(Some)
            .map_err(|e| reject(ApiError::Unavailable(e.to_string())))
    })
    .await?
    .unwrap_or_default();
    Ok(json_bytes(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_cursors_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_cursor(&encode_cursor("SKU-9.a_b")),
            Ok("SKU-9.a_b".to_owned())
        );
        for bad in ["", "p1", "p1zz", "p1414", "x1414243", "p12720"] {
            assert_eq!(decode_cursor(bad), Err(ApiError::InvalidCursor), "{bad}");
        }
    }
}
