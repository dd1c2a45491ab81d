//! Serving connections: what `axum::serve` does, plus the limits it cannot set. A client must
//! send a request's headers within the header timeout (hyper closes the connection otherwise,
//! also one idle between two requests), and its body within the body timeout (counted from
//! the end of its headers: [`super::body::DeadlineBody`]; reading it then answers 408). A client
//! that opens connections and sends nothing, or a byte now and then, holds nothing for long.
//!
//! Handlers see the peer's address as `ConnectInfo<SocketAddr>` (`auto` key mode serves
//! keyless clients only on loopback). On shutdown the listener closes, connections finish
//! the request they are serving, and idle ones close.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::body::DeadlineBody;

/// How long a client may take to send a request (zero: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTimeouts {
    /// From the connection's start, or the end of its previous response, to the end of the
    /// request's headers.
    pub headers: Duration,
    /// From the end of the headers to the end of the body.
    pub body: Duration,
}

impl Default for ReadTimeouts {
    fn default() -> Self {
        Self {
            headers: Duration::from_secs(30),
            body: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for the
/// connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ReadTimeouts,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    http.header_read_timeout((!timeouts.headers.is_zero()).then_some(timeouts.headers));
    let connections = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the listener itself is fine; pause so a full table can drain.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let body_timeout = timeouts.body;
        let service = router
            .clone()
            .map_request(move |request: Request<hyper::body::Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                if body_timeout.is_zero() {
                    request
                } else {
                    request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)))
                }
            });
        let connection = connections
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}
