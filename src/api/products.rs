//! `/v1/products`: the inventory service's catalogue — create, replace, read and list
//! products with their stock (`on_hand`, `reserved`, `available`).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::guard::allow;
use super::problem::ApiError;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProduct {
    sku: String,
    #[serde(flatten)]
    fields: ProductBody,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    name: String,
    unit_price_minor: i64,
    currency: String,
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
    if name.is_empty() || name.chars().count() > 200 {
        return Err(bad("name must be 1-200 characters".into()));
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

async fn create(
    ctx: ApiContext,
    content_type: Option<String>,
    body: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    let request: CreateProduct = parse_body(content_type.as_deref(), &body)?;
    let sku = parse_sku(&request.sku)?;
    let fields = validate(&request.fields)?;
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

async fn replace(
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

async fn get(sku: String, ctx: ApiContext) -> Result<warp::reply::Response, Rejection> {
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

#[derive(Debug, Serialize)]
struct ProductPage {
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

async fn list(
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
