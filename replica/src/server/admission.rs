//! Admission of client calls before their body is read.
//!
//! tonic reads and decodes a unary request in full before the handler runs,
//! so a handler that refuses work has already paid for the request's bytes:
//! under a flood of thousands of large writes the decoded requests alone
//! could pass the memory limit before any of them is refused. [`Admitted`]
//! wraps the client service and asks its [`Gate`] when the HTTP/2 stream
//! opens: a refused call is answered at once (RESOURCE_EXHAUSTED with a retry
//! hint) and its body is never read; an admitted call holds its permit until
//! its reply is ready.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::OwnedSemaphorePermit;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

/// Fewest client calls a replica serves at once, whatever its memory.
pub const MIN_CLIENT_CALLS: usize = 8;

/// Decides whether a client call may start.
pub trait Gate: Send + Sync + 'static {
    /// A permit held while the call runs, or the status to answer at once.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status>;
}

/// Calls to allow at once: as many requests of the largest size as the client
/// byte budget holds, within [`MIN_CLIENT_CALLS`] and the configured maximum.
pub fn calls_for(client_bytes_cap: usize, max_request_bytes: usize, configured_max: usize) -> usize {
    (client_bytes_cap / max_request_bytes.max(1)).clamp(MIN_CLIENT_CALLS.min(configured_max), configured_max)
}

/// A gRPC service whose calls pass a [`Gate`] before their body is read.
pub struct Admitted<S> {
    inner: S,
    gate: Arc<dyn Gate>,
}

impl<S> Admitted<S> {
    pub fn new(inner: S, gate: Arc<dyn Gate>) -> Admitted<S> {
        Admitted { inner, gate }
    }
}

impl<S: Clone> Clone for Admitted<S> {
    fn clone(&self) -> Self {
        Admitted { inner: self.inner.clone(), gate: self.gate.clone() }
    }
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Admitted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.gate.admit() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let reply = call.await;
                    drop(permit);
                    reply
                })
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    #[test]
    fn calls_follow_the_byte_budget() {
        // A 96 MiB replica: 5% for client requests, largest request ~15.7 KB.
        assert_eq!(calls_for(96 * 1048576 / 100 * 5, 15_700, 4096), 320);
        assert_eq!(calls_for(1 << 30, 1024, 4096), 4096, "the configured maximum caps it");
        assert_eq!(calls_for(1000, 128 << 10, 4096), MIN_CLIENT_CALLS, "never below the floor");
        assert_eq!(calls_for(1000, 128 << 10, 2), 2, "a configured maximum below the floor wins");
    }

    /// An inner service that counts its calls and answers OK.
    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>);

    impl Service<http::Request<Body>> for Counting {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(http::Response::new(Body::default())))
        }
    }

    struct OnePermit(Arc<Semaphore>);

    impl Gate for OnePermit {
        fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
            self.0.clone().try_acquire_owned().map_err(|_| Status::resource_exhausted("busy"))
        }
    }

    #[tokio::test]
    async fn a_refused_call_never_reaches_the_service() {
        let inner = Counting::default();
        let gate = Arc::new(OnePermit(Arc::new(Semaphore::new(1))));
        let mut svc = Admitted::new(inner.clone(), gate.clone());
        let held = gate.0.clone().try_acquire_owned();
        let refused = svc.call(http::Request::new(Body::default())).await.unwrap();
        assert_eq!(inner.0.load(Ordering::Relaxed), 0, "the body of a refused call is never read");
        assert_eq!(refused.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"8"[..]));
        drop(held);
        let served = svc.call(http::Request::new(Body::default())).await.unwrap();
        assert_eq!(inner.0.load(Ordering::Relaxed), 1);
        assert!(served.headers().get("grpc-status").is_none());
        assert!(gate.0.clone().try_acquire_owned().is_ok(), "the permit came back when the call ended");
    }
}
