//! The OpenAPI 3.1 description of the API, generated from the route handlers' annotations and
//! the request and response types (utoipa), served at `GET /openapi.json`.
//!
//! What every `/v1` route shares is added here rather than repeated on each handler: the
//! bearer-token security scheme, and the 401, 403, 429 and 503 answers of the API edge
//! (`guard::require`). The `code` of a problem is an enum of every code the API answers with.

use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder, ServerBuilder,
    security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa::{Modify, OpenApi};
use warp::{Filter, Reply};

use super::documents::DocumentKind;
use super::notifications::NotificationList;
use super::orders::{CancelAccepted, DocumentLink, OrderPage, OrderView};
use super::problem::Problem;
use super::products::{CreateProduct, ProductBody, ProductPage};
use super::uploads::FileList;
use crate::domain::order::{OrderStatus, PlaceOrder, PlaceOrderLine};
use crate::infra::db::files::UserFile;
use crate::infra::db::inventory::Product;
use crate::infra::db::notifications::LogEntry;
use crate::infra::db::orders::{LineRecord, OrderRecord};
use crate::infra::db::payment::PaymentRecord;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow",
        description = "An e-commerce order pipeline: orders run as sagas over Kafka through inventory, payment, file and notification services. Every /v1 route needs a bearer JWT (RS256 or ES256) with the route's scope; errors are RFC 9457 problem+json with a stable code.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        super::orders::place_order,
        super::orders::list_orders,
        super::orders::get_order,
        super::orders::cancel_order,
        super::payments::get_payment,
        super::documents::get_document,
        super::notifications::list,
        super::events::upgrade,
        super::products::create,
        super::products::list,
        super::products::get,
        super::products::replace,
        super::uploads::upload,
        super::uploads::list,
        super::uploads::download,
        super::uploads::remove,
    ),
    components(schemas(
        PlaceOrder, PlaceOrderLine, OrderRecord, LineRecord, OrderStatus, OrderView, DocumentLink,
        OrderPage, CancelAccepted, PaymentRecord, DocumentKind, NotificationList, LogEntry,
        CreateProduct, ProductBody, Product, ProductPage, UserFile, FileList, Problem,
    )),
    tags(
        (name = "orders", description = "Place, read, cancel and follow orders"),
        (name = "documents", description = "Invoices and receipts (PDF in S3)"),
        (name = "catalogue", description = "Products and their stock"),
        (name = "files", description = "Customers' own files (in S3)"),
        (name = "operations", description = "Health, metrics and documentation (no token)"),
    ),
    modifiers(&EdgeResponses),
)]
struct ApiDoc;

/// The bearer scheme and the answers every guarded route can give.
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT signed with RS256 or ES256 by the configured issuer, with iss, aud, sub and exp; the scopes in `scope` (space-separated) or `scp`. Locally: `orderflow token --sub <customer> [--scope ...]`.",
                    ))
                    .build(),
            ),
        );
        let edge = [
            ("401", "missing_token, invalid_token (see WWW-Authenticate)"),
            ("403", "insufficient_scope"),
            (
                "429",
                "rate_limited: see Retry-After and the RateLimit headers",
            ),
            (
                "503",
                "service_unavailable: a dependency failed; nothing was stored",
            ),
        ];
        for item in doc.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
            ];
            for op in operations.into_iter().flatten() {
                if op.security.is_none() {
                    continue;
                }
                for (status, description) in edge {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem_response(description));
                }
            }
        }
        add_open_routes(doc);
        doc.servers = Some(vec![
            ServerBuilder::new()
                .url("/")
                .description(Some("This deployment"))
                .build(),
        ]);
    }
}

/// The routes outside `/v1` (health, metrics, problem documentation, the issuer's keys and
/// this document), which are plain closures in their modules and need no token.
fn add_open_routes(doc: &mut Document) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
    let json = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(utoipa::openapi::schema::Object::new()))
                        .build(),
                )
                .build(),
        )
    };
    let op = |id: &str, summary: &str| {
        OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .tag("operations")
    };
    let routes = [
        (
            "/health/live",
            op("live", "Liveness: 200 while the process runs")
                .response("200", json("{\"status\": \"live\"}")),
        ),
        (
            "/health/ready",
            op(
                "ready",
                "Readiness: PostgreSQL, Kafka, Redis and S3 answer; the circuit states",
            )
            .response("200", json("Ready; each check with its latency"))
            .response("503", json("Not ready; the failing checks")),
        ),
        (
            "/metrics",
            op("metrics", "Prometheus metrics").response(
                "200",
                RefOr::T(
                    ResponseBuilder::new()
                        .description("Prometheus text format 0.0.4")
                        .content("text/plain", ContentBuilder::new().build())
                        .build(),
                ),
            ),
        ),
        (
            "/problems/{code}",
            op("problem", "What a problem code means")
                .parameter(
                    ParameterBuilder::new()
                        .name("code")
                        .parameter_in(ParameterIn::Path)
                        .required(utoipa::openapi::Required::True)
                        .schema(Some(utoipa::openapi::schema::Object::with_type(
                            utoipa::openapi::schema::Type::String,
                        ))),
                )
                .response("200", json("The code and its description"))
                .response("404", problem_response("unknown_problem_type")),
        ),
        (
            "/.well-known/jwks.json",
            op(
                "jwks",
                "The development issuer's public keys (auth.mode = \"dev\")",
            )
            .response("200", json("A JWK set"))
            .response(
                "404",
                problem_response("route_not_found (auth.mode = \"oidc\")"),
            ),
        ),
        (
            "/openapi.json",
            op("openapi", "This document").response("200", json("OpenAPI 3.1")),
        ),
        (
            "/docs",
            op("docs", "This document as a browsable page (Swagger UI)").response(
                "200",
                RefOr::T(
                    ResponseBuilder::new()
                        .description("HTML")
                        .content("text/html", ContentBuilder::new().build())
                        .build(),
                ),
            ),
        ),
    ];
    for (path, operation) in routes {
        doc.paths
            .add_path_operation(path, vec![HttpMethod::Get], operation.build());
    }
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

/// The document as JSON, with every problem code as the enum of `Problem.code`.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(code) = doc.pointer_mut("/components/schemas/Problem/properties/code") {
        code["enum"] = super::errors_doc::CODES.to_vec().into();
    }
    // The currencies the shop accepts (an unknown one is a 422 `unknown_currency`).
    let currencies: Vec<&str> = crate::domain::money::Currency::codes().collect();
    for schema in ["PlaceOrder", "CreateProduct", "ProductBody"] {
        let pointer = format!("/components/schemas/{schema}/properties/currency");
        if let Some(currency) = doc.pointer_mut(&pointer) {
            currency["enum"] = currencies.clone().into();
        }
    }
    doc
}

/// `GET /openapi.json`, open like the health routes (clients and tools read it before they
/// have a token), and the browsable docs page `GET /docs` with its two assets.
pub fn route(docs_dir: &str) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let doc = std::sync::Arc::new(document());
    let spec = warp::path!("openapi.json")
        .and(warp::get())
        .map(move || warp::reply::json(&*doc).into_response());
    let page = warp::path!("docs").and(warp::get()).map(|| {
        warp::reply::with_header(
            include_str!("docs.html"),
            "content-type",
            "text/html; charset=utf-8",
        )
        .into_response()
    });
    let dir = std::path::PathBuf::from(docs_dir);
    let asset = warp::path!("docs" / String)
        .and(warp::get())
        .and_then(move |name: String| {
            let dir = dir.clone();
            async move { docs_asset(&dir, &name).await }
        });
    spec.or(page).unify().or(asset).unify().boxed()
}

/// One of the docs page's assets, read from `dir`; only these two names exist.
async fn docs_asset(
    dir: &std::path::Path,
    name: &str,
) -> Result<warp::reply::Response, warp::Rejection> {
    let content_type = match name {
        "swagger-ui-bundle.js" => "text/javascript; charset=utf-8",
        "swagger-ui.css" => "text/css; charset=utf-8",
        _ => {
            return Err(warp::reject::custom(
                super::problem::ApiError::RouteNotFound,
            ));
        }
    };
    let bytes = tokio::fs::read(dir.join(name)).await.map_err(|e| {
        warp::reject::custom(super::problem::ApiError::Unavailable(format!(
            "docs asset {name} in {} (run scripts/docs-assets): {e}",
            dir.display()
        )))
    })?;
    Ok(warp::reply::with_header(bytes, "content-type", content_type).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_v1_route_is_documented_with_its_scope_and_edge_answers() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let expected = [
            ("/v1/orders", "post"),
            ("/v1/orders", "get"),
            ("/v1/orders/{order_id}", "get"),
            ("/v1/orders/{order_id}/cancel", "post"),
            ("/v1/orders/{order_id}/payment", "get"),
            ("/v1/orders/{order_id}/{kind}", "get"),
            ("/v1/orders/{order_id}/notifications", "get"),
            ("/v1/orders/{order_id}/events", "get"),
            ("/v1/products", "post"),
            ("/v1/products", "get"),
            ("/v1/products/{sku}", "get"),
            ("/v1/products/{sku}", "put"),
            ("/v1/files", "post"),
            ("/v1/files", "get"),
            ("/v1/files/{id}", "get"),
            ("/v1/files/{id}", "delete"),
        ];
        for (path, method) in expected {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} undocumented");
            assert!(op["security"][0]["bearer"].is_array(), "{method} {path}");
            for status in ["401", "403", "429", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} lacks {status}"
                );
            }
        }
        let codes = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
            .as_array()
            .map(Vec::len);
        assert_eq!(codes, Some(super::super::errors_doc::CODES.len()));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
