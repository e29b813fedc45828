//! `GET /v1/orders/{id}/invoice` and `/receipt`: the file service's documents of an order — a
//! redirect (303) to a short-lived presigned S3 link, or the PDF itself with `?inline`.

use std::time::Duration;

use serde::Deserialize;
use warp::http::{StatusCode, header};
use warp::{Filter, Rejection};

use super::guard::{owned_order, require};
use super::problem::{ApiError, Problem};
use super::{ApiContext, with_ctx};
use crate::actors::files::handler::{INVOICE, RECEIPT};
use crate::auth::{Principal, scopes};
use crate::infra::db::files as repo;
use crate::infra::s3;

/// The documents an order can have (the `{kind}` of the document routes).
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum DocumentKind {
    Invoice,
    Receipt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DocumentQuery {
    /// Present (any value, or none): answer with the bytes instead of a redirect.
    inline: Option<String>,
}

pub fn routes(ctx: ApiContext) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let invoice = warp::path!("v1" / "orders" / String / "invoice").map(|id| (id, INVOICE));
    let receipt = warp::path!("v1" / "orders" / String / "receipt").map(|id| (id, RECEIPT));
    invoice
        .or(receipt)
        .unify()
        .and(warp::get())
        .and(require(&ctx, scopes::ORDERS_READ))
        .and(warp::query::<DocumentQuery>().or_else(|_| async {
            Err(warp::reject::custom(ApiError::InvalidQuery(
                "only `inline` is accepted".into(),
            )))
        }))
        .and(with_ctx(ctx))
        .and_then(get_document)
        .boxed()
}

/// The order's invoice (after CONFIRMED) or receipt (after the card payment): a redirect to a
/// short-lived presigned S3 link, or the PDF itself with `?inline`.
#[utoipa::path(get, path = "/v1/orders/{order_id}/{kind}", tag = "documents",
    params(
        ("order_id" = Uuid, Path, description = "The order id"),
        ("kind" = DocumentKind, Path, description = "invoice or receipt"),
        ("inline" = Option<String>, Query, description = "Present: answer with the PDF bytes"),
    ),
    responses(
        (status = 303, description = "Redirect to a presigned link", headers(("Location" = String, description = "The presigned S3 URL"))),
        (status = 200, description = "The PDF (with ?inline)", content_type = "application/pdf", body = Vec<u8>),
        (status = 400, description = "invalid_order_id, invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "order_not_found, invoice_not_found, receipt_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn get_document(
    (id, kind): (String, &'static str),
    principal: Principal,
    query: DocumentQuery,
    ctx: ApiContext,
) -> Result<warp::reply::Response, Rejection> {
    let uuid = owned_order(&ctx, &principal, &id).await?;
    let unavailable =
        |e: &dyn std::fmt::Display| warp::reject::custom(ApiError::Unavailable(e.to_string()));
    let doc = repo::document(&ctx.pool, uuid, kind)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| {
            warp::reject::custom(if kind == RECEIPT {
                ApiError::ReceiptNotFound(uuid.to_string())
            } else {
                ApiError::InvoiceNotFound(uuid.to_string())
            })
        })?;
    if query.inline.is_some() {
        let bytes = ctx
            .s3_breaker
            .call(s3::get_bytes(&ctx.s3, &doc.bucket, &doc.object_key))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut resp = warp::reply::Response::new(bytes.into());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/pdf"),
        );
        if let Ok(v) =
            header::HeaderValue::from_str(&format!("inline; filename=\"{kind}-{uuid}.pdf\""))
        {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
        if let Ok(v) = header::HeaderValue::from_str(&doc.sha256) {
            headers.insert("x-checksum-sha256", v);
        }
        return Ok(resp);
    }
    presigned_redirect(&ctx, &doc.bucket, &doc.object_key).await
}

/// `303 See Other` to a presigned download of the object, valid `files.presign_ttl_secs`.
pub(super) async fn presigned_redirect(
    ctx: &ApiContext,
    bucket: &str,
    key: &str,
) -> Result<warp::reply::Response, Rejection> {
    let unavailable =
        |e: &dyn std::fmt::Display| warp::reject::custom(ApiError::Unavailable(e.to_string()));
    let ttl = Duration::from_secs(ctx.config.files.presign_ttl_secs);
    let url = s3::presigned_get(&ctx.s3, bucket, key, ttl)
        .await
        .map_err(|e| unavailable(&e))?;
    let location = header::HeaderValue::from_str(&url).map_err(|e| unavailable(&e))?;
    let mut resp = warp::reply::Response::new(Vec::<u8>::new().into());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}
