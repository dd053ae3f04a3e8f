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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// The permits of client calls in flight, resizable while calls run: the
/// number follows the largest request the core accepts, so that admitted
/// calls of that size fit the client byte budget.
pub struct CallPermits {
    semaphore: Arc<Semaphore>,
    /// Permits the semaphore is meant to hold (in use or not).
    total: AtomicUsize,
    /// Permits still to be removed once calls in flight give them back.
    owed: Mutex<usize>,
}

impl CallPermits {
    pub fn new(n: usize) -> CallPermits {
        CallPermits { semaphore: Arc::new(Semaphore::new(n)), total: AtomicUsize::new(n), owed: Mutex::new(0) }
    }

    /// Takes a permit without waiting.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.settle_debt();
        self.semaphore.clone().try_acquire_owned().ok()
    }

    /// Permits meant to exist.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Sets the number of permits to `n`; permits in use are removed as their calls end.
    pub fn resize(&self, n: usize) {
        let Ok(mut owed) = self.owed.lock() else { return };
        let current = self.total.swap(n, Ordering::Relaxed);
        if n >= current {
            let grow = n - current;
            let repaid = grow.min(*owed);
            *owed -= repaid;
            self.semaphore.add_permits(grow - repaid);
        } else {
            *owed += current - n;
        }
        drop(owed);
        self.settle_debt();
    }

    /// Removes owed permits that are free now (skipped while another thread holds the account).
    fn settle_debt(&self) {
        let Ok(mut owed) = self.owed.try_lock() else { return };
        if *owed > 0 {
            *owed -= self.semaphore.forget_permits(*owed);
        }
    }
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

    #[test]
    fn calls_follow_the_byte_budget() {
        // A 96 MiB replica: 5% for client requests, largest request ~15.7 KB.
        assert_eq!(calls_for(96 * 1048576 / 100 * 5, 15_700, 4096), 320);
        assert_eq!(calls_for(1 << 30, 1024, 4096), 4096, "the configured maximum caps it");
        assert_eq!(calls_for(1000, 128 << 10, 4096), MIN_CLIENT_CALLS, "never below the floor");
        assert_eq!(calls_for(1000, 128 << 10, 2), 2, "a configured maximum below the floor wins");
    }

    #[test]
    fn permits_shrink_as_calls_end_and_grow_at_once() {
        let p = CallPermits::new(4);
        let held: Vec<_> = (0..3).filter_map(|_| p.try_acquire()).collect();
        assert_eq!(held.len(), 3);
        p.resize(2);
        assert!(p.try_acquire().is_none(), "3 in use against a new total of 2");
        drop(held);
        let now: Vec<_> = std::iter::from_fn(|| p.try_acquire()).take(10).collect();
        assert_eq!(now.len(), 2, "the debt was paid by the returned permits");
        drop(now);
        p.resize(5);
        let grown: Vec<_> = std::iter::from_fn(|| p.try_acquire()).take(10).collect();
        assert_eq!(grown.len(), 5);
        assert_eq!(p.total(), 5);
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

    struct OnePermit(CallPermits);

    impl Gate for OnePermit {
        fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
            self.0.try_acquire().ok_or_else(|| Status::resource_exhausted("busy"))
        }
    }

    #[tokio::test]
    async fn a_refused_call_never_reaches_the_service() {
        let inner = Counting::default();
        let gate = Arc::new(OnePermit(CallPermits::new(1)));
        let mut svc = Admitted::new(inner.clone(), gate.clone());
        let held = gate.0.try_acquire();
        let refused = svc.call(http::Request::new(Body::default())).await.unwrap();
        assert_eq!(inner.0.load(Ordering::Relaxed), 0, "the body of a refused call is never read");
        assert_eq!(refused.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"8"[..]));
        drop(held);
        let served = svc.call(http::Request::new(Body::default())).await.unwrap();
        assert_eq!(inner.0.load(Ordering::Relaxed), 1);
        assert!(served.headers().get("grpc-status").is_none());
        assert!(gate.0.try_acquire().is_some(), "the permit came back when the call ended");
    }

    #[test]
    fn growing_first_repays_the_debt() {
        let p = CallPermits::new(4);
        let held: Vec<_> = (0..4).filter_map(|_| p.try_acquire()).collect();
        p.resize(1); // owes 3
        p.resize(3); // owes 1
        drop(held);
        let now: Vec<_> = std::iter::from_fn(|| p.try_acquire()).take(10).collect();
        assert_eq!(now.len(), 3);
    }
}
