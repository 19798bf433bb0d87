//! The agent's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`), bounded so that clients
//! cannot stop the agent: the DaemonSet serves it on every pod address. At most
//! [`MAX_CONNECTIONS`] are served at once (one more is closed as soon as it is accepted, so the
//! agent's descriptors stay bounded and the backlog keeps moving), a request's header must
//! arrive within [`HEADER_TIMEOUT`], a
//! connection lives at most [`CONNECTION_LIFETIME`], and a failing `accept` (EMFILE) backs off
//! instead of spinning. Reconciliation never waits for any of it.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use hyper::{Request, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::metrics::{SharedHealth, respond};

pub const MAX_CONNECTIONS: usize = 64;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed `accept`, doubling up to a second while it keeps failing.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Binds `addr` (an error here stops the agent before it changes anything) and serves in the
/// background.
pub async fn serve(addr: SocketAddr, health: SharedHealth) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("listening for metrics on {addr} (is another agent running? pick another --metrics-addr)")
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, health));
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, health: SharedHealth) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut pause = ACCEPT_BACKOFF.0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                pause = ACCEPT_BACKOFF.0;
                stream
            }
            Err(e) => {
                log::warn!("metrics endpoint: accept failed: {e}; pausing {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        // At capacity the new connection is closed at once: the backlog keeps moving, so a
        // probe behind a flood of idle connections is answered on its next try.
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&health, req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}
