//! The HTTP server: the warp routes served through hyper's connection builder directly, so
//! that the connection limits are ours to set — how long a client may take to send its
//! request head (`http.header_read_timeout_ms`, against slow-header attacks), how large that
//! head may be (`http.max_header_bytes`, 431 beyond), and a deadline for producing each
//! response (`http.request_timeout_ms`, 503 `deadline_exceeded`). Websocket upgrades pass
//! through; on stop the listener closes and open connections finish their requests (bounded
//! by the caller).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_service::Service;

use super::problem::{self, ApiError};
use crate::config::HttpConfig;

/// The TCP peer of a request (the server puts it into every request's extensions; the rate
/// limits read it).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `routes` on `listener` until `stop` fires, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
    config: &HttpConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_buf_size(config.max_header_bytes.max(8_192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let deadline = Duration::from_millis(config.request_timeout_ms);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let routes = routes.clone();
        let handler = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(PeerAddr(peer));
            let mut service = warp::service(routes.clone());
            async move {
                match tokio::time::timeout(deadline, service.call(request)).await {
                    Ok(Ok(response)) => Ok::<_, Infallible>(response),
                    Ok(Err(never)) => match never {},
                    Err(_) => Ok(problem::reply(&ApiError::DeadlineExceeded)),
                }
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), handler)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
